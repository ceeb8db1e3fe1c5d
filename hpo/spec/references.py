"""User code named in a spec: ``package.module:Name`` references, whom to trust, and importing.

A spec may name a user's own ``nn.Module`` (``model:``) or loss (``criterion:``) as
``package.module:Name``. A spec lives in a database that other people may write to, and
importing a module runs its code, so a worker or ``hpo run`` imports only modules under the
prefixes it was told to trust (``--allow-module PREFIX``, ``HPO_ALLOW_MODULES=a,b``); hpo's own
modules are always trusted. ``check_trusted`` is the one place that decides, before any trial.

Imports look in the working directory too (after everything on ``sys.path``), so a package
next to the study files works as it does for ``python -m``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hpo.errors import CodeImportError, HpoError, did_you_mean

#: ``package.module:Name``: a dotted module path, a colon, an attribute name.
REFERENCE = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<name>[A-Za-z_]\w*)$")

#: The environment variable with prefixes to trust, comma-separated.
ALLOW_ENV = "HPO_ALLOW_MODULES"

#: The command-line flag that trusts a prefix; messages name it.
ALLOW_FLAG = "--allow-module"

#: hpo's own modules, always trusted.
OWN_PREFIX = "hpo"


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
    """The prefixes to trust: hpo's own, the ``--allow-module`` flags, ``HPO_ALLOW_MODULES``."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    from_env = [part.strip() for part in environ.get(ALLOW_ENV, "").split(",")]
    prefixes = [OWN_PREFIX, *flags, *from_env]
    return tuple(dict.fromkeys(prefix.strip(".") for prefix in prefixes if prefix.strip(".")))


def is_trusted(reference: Reference, prefixes: Sequence[str]) -> bool:
    """Whether ``reference``'s module is one of ``prefixes`` or inside one (``a.b`` is inside
    ``a``; ``ab`` is not)."""
    module = reference.module
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def check_trusted(references: Iterable[tuple[str, str]], prefixes: Sequence[str]) -> None:
    """Refuse, in one message, every reference outside ``prefixes``.

    Args:
        references: (spec key, ``package.module:Name``) pairs, e.g. ``("model", "a.b:Net")``.
        prefixes: what ``allowed_prefixes`` returned.

    Raises:
        HpoError: naming each untrusted module and the flag that trusts it.
    """
    refused = [
        (key, parse_reference(text))
        for key, text in references
        if not is_trusted(parse_reference(text), prefixes)
    ]
    if not refused:
        return
    modules = sorted({reference.module.split(".")[0] for _, reference in refused})
    listed = ", ".join(f"{key}: {reference}" for key, reference in refused)
    flags = " ".join(f"{ALLOW_FLAG} {module}" for module in modules)
    raise HpoError(
        f"{listed}: this module is not trusted here, so it was not imported (a spec in a shared "
        f"storage may come from anyone). If you trust it, pass {flags} (or set "
        f"{ALLOW_ENV}={','.join(modules)})"
    )


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
