"""The one place a study's folder under the results folder is built.

hpo's own specs restrict study names, but a study created with plain Optuna may be named
``../../x`` or ``/abs``; ``results/<name>/`` would then lie outside the results folder.
``study_folder`` refuses any name that is not one plain folder name strictly inside it.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from hpo.errors import HpoError


def study_folder(results_dir: str | Path, name: str) -> Path:
    """``<results_dir>/<name>``, for a study ``name`` that is one plain folder name.

    Raises:
        HpoError: ``name`` is empty, ``.`` or ``..``, holds a path separator or a NUL, is an
            absolute path or a drive, or otherwise names a folder not strictly inside
            ``results_dir``.
    """
    reason = _unsafe_reason(name)
    root = Path(results_dir)
    folder = root / name if reason is None else root
    if reason is None:
        resolved_root = Path(os.path.abspath(root))
        resolved = Path(os.path.abspath(folder))
        if resolved.parent != resolved_root:
            reason = "its folder would not lie directly inside the results folder"
    if reason is not None:
        raise HpoError(
            f"study name {name!r} cannot be used as a folder under {str(root)!r}: {reason}, "
            "so its files would be written outside the results folder. hpo's own study "
            "files only allow plain names; this study was made some other way (plain "
            "Optuna). Copy it under a plain name (optuna.copy_study(from_study_name=..., "
            "to_study_name='my-study', ...)), or give the file to write explicitly "
            "(hpo export --out FILE, hpo report --out FILE)"
        )
    return folder


def _unsafe_reason(name: object) -> str | None:
    if not isinstance(name, str) or not name.strip():
        return "it is empty or blank"
    if name in (".", ".."):
        return f"{name!r} names the results folder or its parent"
    if "\x00" in name:
        return "it holds a NUL character"
    if "/" in name or "\\" in name:
        return "it holds a path separator"
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or pure.anchor or pure.name != name:
            return "it is an absolute path or names a drive"
    return None
