"""The module and loss a spec names, as classes, checked against their constructors.

``admit_user_code`` is the trust rule's one entry (``hpo.spec.references``): every path that
runs a spec calls it before anything of the spec's code is imported. It refuses references
outside the trusted prefixes, then imports the rest and holds them to the rule's last part:
``model:`` and ``criterion:`` must name ``torch.nn.Module`` subclasses (a loss is one), so no
function or other callable named in a spec is ever called with the spec's keys.

``model_class`` and ``criterion_class`` turn a spec's ``model:`` / ``criterion:`` into classes:
a built-in name, or a user's ``package.module:Name``. ``check_user_code`` holds a spec's
``module__*`` and ``criterion__*`` keys against the constructors' signatures: registration runs
it when the code is importable there, and every worker runs it again before its first trial.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from hpo.engine.models import MODELS
from hpo.errors import HpoError, SpecError, did_you_mean
from hpo.spec.names import CRITERIA
from hpo.spec.references import allowed_prefixes, check_trusted, import_reference
from hpo.spec.study_spec import StudySpec

#: Constructor arguments hpo passes from the data when a module takes them.
FROM_THE_DATA: tuple[str, ...] = ("input_shape", "n_outputs")


def model_class(model: str) -> type[nn.Module]:
    """The ``nn.Module`` class of a spec's ``model:``: built-in, or imported.

    Raises:
        HpoError: the reference cannot be imported, or is not an ``nn.Module`` subclass.
    """
    if model in MODELS:
        return MODELS[model]
    return module_subclass(model, "model", "a network")


def module_subclass(reference: str, key: str, what: str) -> type[nn.Module]:
    """Import ``reference`` and return it if it is a ``torch.nn.Module`` subclass.

    Raises:
        HpoError: it cannot be imported, or is anything else (a function, an instance, a
            class of another kind), which is then never called.
    """
    found = import_reference(reference, key)
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise HpoError(
            f"{key}: {reference} is not a torch.nn.Module subclass (got {found!r}), so it "
            f"was not used; {key} must name {what}: a class deriving from torch.nn.Module"
        )
    return found


def criterion_class(criterion: str | type | None, default: type[nn.Module] | None = None) -> Any:
    """The loss of a spec's ``criterion:``: ``default`` when None, a built-in name's
    ``torch.nn`` class, an imported ``package.module:Name``, or a class as given."""
    if criterion is None:
        return default
    if not isinstance(criterion, str):
        return criterion
    if criterion in CRITERIA:
        return getattr(nn, CRITERIA[criterion])
    return module_subclass(criterion, "criterion", "a loss (e.g. torch.nn.MSELoss)")


def data_arguments(module: type[nn.Module]) -> tuple[str, ...]:
    """Which of ``input_shape`` and ``n_outputs`` ``module``'s constructor takes by name."""
    parameters = inspect.signature(module).parameters
    return tuple(name for name in FROM_THE_DATA if name in parameters)


def admit_user_code(spec: StudySpec, allow_modules: Sequence[str], source: str) -> None:
    """The trust rule, as every path applies it before the spec's code runs: refuse code
    outside the trusted prefixes (``allow_modules``, then ``HPO_ALLOW_MODULES``; of hpo's own,
    only its model classes) without importing it, then import what is trusted, refuse
    anything but ``torch.nn.Module`` subclasses, and hold the spec's keys against their
    constructors (``check_user_code``).

    Args:
        spec: the spec to run, from a file or from the storage.
        allow_modules: the caller's trusted prefixes (``--allow-module``).
        source: where the spec came from, for messages (a file, ``study NAME``).

    Raises:
        HpoError: untrusted code (nothing imported), or code that is not a module class.
        CodeImportError: trusted code that cannot be imported here.
        SpecError: keys the constructors do not take.
    """
    check_trusted(spec.custom_code, allowed_prefixes(allow_modules))
    check_user_code(spec, source)


def check_user_code(spec: StudySpec, source: str = "<spec>") -> None:
    """Import the spec's own module and loss, and hold its keys against their constructors.

    Every problem goes into one ``SpecError``: a ``module__*`` or ``criterion__*`` key the
    constructor does not take (with did-you-mean), a required argument no key gives, a
    module that hpo's own data arguments cannot reach.

    Raises:
        SpecError: listing every problem.
        HpoError: the code cannot be imported.
    """
    keys = [*spec.fixed, *spec.space]
    problems = _argument_problems(
        "module", model_class(spec.model), keys, given_by_hpo=FROM_THE_DATA
    )
    if spec.criterion is not None:
        loss = criterion_class(spec.criterion, nn.MSELoss)
        problems += _argument_problems("criterion", loss, keys, given_by_hpo=())
    elif any(key.startswith("criterion__") for key in keys):
        # The default loss depends on the task, which the data says; both take the same
        # arguments but for a few (CrossEntropyLoss's label_smoothing, ignore_index).
        problems += _argument_problems(
            "criterion", nn.CrossEntropyLoss, keys, given_by_hpo=(), also=nn.MSELoss
        )
    if problems:
        raise SpecError(source, problems)


def _argument_problems(
    prefix: str,
    target: Any,
    keys: list[str],
    *,
    given_by_hpo: tuple[str, ...],
    also: Any = None,
) -> list[str]:
    name = getattr(target, "__qualname__", repr(target))
    try:
        parameters = dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return []  # a signature Python cannot read: the first trial will say
    if also is not None:
        parameters.update(inspect.signature(also).parameters)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    named = [
        key
        for key, p in parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and key != "self"
    ]
    problems = []
    given = {key.removeprefix(f"{prefix}__") for key in keys if key.startswith(f"{prefix}__")}
    settable = [key for key in named if key not in given_by_hpo]
    for key in sorted(given):
        if key in given_by_hpo:
            problems.append(
                f"{prefix}__{key}: hpo passes {key} from the data; remove it from the spec"
            )
        elif key not in named and not takes_any:
            problems.append(
                f"{prefix}__{key}: not an argument of {name}{did_you_mean(key, settable)} "
                f"(it takes {', '.join(settable) or 'none'})"
            )
    missing = [
        key
        for key in settable
        if parameters[key].default is inspect.Parameter.empty and key not in given
    ]
    if missing:
        problems.append(
            f"{prefix}: {name} needs {', '.join(missing)}; give "
            f"{', '.join(f'fixed.{prefix}__{key}' for key in missing)} (or search "
            "them in space)"
        )
    return problems
