"""User code named in a spec: ``package.module:Name`` references, whom to trust, and importing.

A spec may name a user's own ``nn.Module`` (``model:``) or loss (``criterion:``) as
``package.module:Name``. A spec lives in a database that other people may write to, importing a
module runs its code, and skorch calls what ``criterion:`` names with the spec's
``criterion__*`` keys, so the trust rule is:

- a reference is imported only from a module under a prefix the caller trusts
  (``--allow-module PREFIX``, ``HPO_ALLOW_MODULES=a,b``);
- hpo's own code is trusted only for the classes of its registry of models
  (``hpo.spec.names.MODEL_CLASSES``), never for any other function or class of hpo, whose
  arguments a spec could choose;
- what is imported must be a ``torch.nn.Module`` subclass, or it is never called
  (``hpo.engine.user_code``).

``check_trusted`` decides the first two, before anything is imported; every path that runs a
spec (``hpo register``, ``run``, ``worker``, ``refit``, ``hpo.run``, ``hpo.load_refit``) reaches
it through ``hpo.engine.user_code.admit_user_code``.

Imports look in the working directory too (after everything on ``sys.path``), so a package
next to the study files works as it does for ``python -m``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpo.errors import CodeImportError, HpoError, did_you_mean
from hpo.spec.names import MODEL_CLASSES

#: ``package.module:Name``: a dotted module path, a colon, an attribute name.
REFERENCE = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<name>[A-Za-z_]\w*)$")

#: The environment variable with prefixes to trust, comma-separated.
ALLOW_ENV = "HPO_ALLOW_MODULES"

#: The command-line flag that trusts a prefix; messages name it.
ALLOW_FLAG = "--allow-module"

#: hpo's own package: trusted for ``OWN_REFERENCES`` only.
OWN_PREFIX = "hpo"

#: The references into hpo a spec may name: the classes of its built-in models.
OWN_REFERENCES: frozenset[str] = frozenset(MODEL_CLASSES.values())


@dataclass(frozen=True)
class Reference:
    """A parsed ``package.module:Name``."""

    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}:{self.name}"


def is_reference(text: object) -> bool:
    """Whether ``text`` has the form ``package.module:Name``."""
    return isinstance(text, str) and REFERENCE.match(text) is not None


def parse_reference(text: str) -> Reference:
    """Split ``package.module:Name``; a ``ValueError`` says what the form is."""
    match = REFERENCE.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not of the form package.module:Name (e.g. mypkg.models:MyNet)"
        )
    return Reference(match["module"], match["name"])


def allowed_prefixes(
    flags: Iterable[str] = (), environ: dict[str, str] | None = None
) -> tuple[str, ...]:
    """The prefixes to trust: the ``--allow-module`` flags, then ``HPO_ALLOW_MODULES``."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    from_env = [part.strip() for part in env.get(ALLOW_ENV, "").split(",")]
    prefixes = [*flags, *from_env]
    return tuple(dict.fromkeys(prefix.strip(".") for prefix in prefixes if prefix.strip(".")))


def is_trusted(reference: Reference, prefixes: Sequence[str]) -> bool:
    """Whether ``reference`` is one of hpo's model classes (``OWN_REFERENCES``), or its module
    is one of ``prefixes`` or inside one (``a.b`` is inside ``a``; ``ab`` is not)."""
    if str(reference) in OWN_REFERENCES:
        return True
    module = reference.module
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _is_own(reference: Reference) -> bool:
    return reference.module == OWN_PREFIX or reference.module.startswith(OWN_PREFIX + ".")


def check_trusted(references: Iterable[tuple[str, str]], prefixes: Sequence[str]) -> None:
    """Refuse, in one message, every reference that ``is_trusted`` does not admit.

    Nothing is imported here: a refusal happens before any code of the reference runs.

    Args:
        references: (spec key, ``package.module:Name``) pairs, e.g. ``("model", "a.b:Net")``.
        prefixes: what ``allowed_prefixes`` returned.

    Raises:
        HpoError: naming each refused reference and, for a user's module, the flag that
            trusts it; for hpo's own code, the built-in names a spec may use instead.
    """
    refused = [
        (key, parse_reference(text))
        for key, text in references
        if not is_trusted(parse_reference(text), prefixes)
    ]
    if not refused:
        return
    own = [(key, reference) for key, reference in refused if _is_own(reference)]
    users = [(key, reference) for key, reference in refused if not _is_own(reference)]
    sentences = []
    if own:
        listed = ", ".join(f"{key}: {reference}" for key, reference in own)
        sentences.append(
            f"{listed}: hpo's own code may be named only for its models "
            f"({', '.join(sorted(OWN_REFERENCES))}); name a built-in model or loss by its name "
            "instead (model: mlp, criterion: mse)"
        )
    if users:
        modules = sorted({reference.module.split(".")[0] for _, reference in users})
        listed = ", ".join(f"{key}: {reference}" for key, reference in users)
        flags = " ".join(f"{ALLOW_FLAG} {module}" for module in modules)
        sentences.append(
            f"{listed}: this module is not trusted here, so it was not imported (a spec in a "
            f"shared storage may come from anyone). If you trust it, pass {flags} (or set "
            f"{ALLOW_ENV}={','.join(modules)})"
        )
    raise HpoError("; ".join(sentences))


def import_reference(text: str, key: str = "model") -> Any:
    """Import ``package.module:Name`` and return ``Name``.

    Trust is the caller's to check first (``check_trusted``).

    Raises:
        HpoError: the module cannot be imported or has no such name; the message names
            ``key`` and what to do.
    """
    reference = parse_reference(text)
    try:
        module = _import_module(reference.module)
    except ImportError as error:
        raise CodeImportError(
            f"{key}: cannot import {reference.module} ({error}); install the package on this "
            "machine, or run from the folder that holds it, or add that folder to PYTHONPATH"
        ) from None
    try:
        return getattr(module, reference.name)
    except AttributeError:
        public = [name for name in vars(module) if not name.startswith("_")]
        raise HpoError(
            f"{key}: module {reference.module} has no {reference.name!r}"
            f"{did_you_mean(reference.name, public)}"
        ) from None


def code_roots(references: Iterable[tuple[str, str]]) -> list[str]:
    """The folders the referenced modules' top-level packages were imported from here (as
    ``sys.path`` entries), so that processes started from this one import the same code."""
    roots = []
    for _, text in references:
        top = sys.modules.get(parse_reference(text).module.split(".")[0])
        for location in _locations(top):
            roots.append(os.path.dirname(os.path.abspath(location)))
    return list(dict.fromkeys(roots))


def _locations(module: Any) -> list[str]:
    if module is None:
        return []
    package_dirs = list(getattr(module, "__path__", []) or [])
    if package_dirs:
        return package_dirs
    origin = getattr(module, "__file__", None)
    return [origin] if origin else []


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        cwd = os.getcwd()
        missing = (error.name or "").split(".")[0]
        if missing != name.split(".")[0] or cwd in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(name)
