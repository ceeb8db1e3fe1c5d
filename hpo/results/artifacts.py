"""A study's refit files as Optuna artifacts: what another machine and optuna-dashboard read.

``hpo refit`` writes its files (weights, ``params.json``, metrics, learning curves, confusion
matrix) to ``results/<study>/`` for people, and uploads the same files to an Optuna
``FileSystemArtifactStore`` linked to the study (``optuna.artifacts.upload_artifact``), so
anyone who shares the storage and the artifact folder (a network disk, a volume) can list them
(optuna-dashboard shows them on the study's page) and ``load_refit`` can rebuild the net.
``hpo report`` uploads its HTML page there too.

The store holds one file per artifact, named by its id, in a flat folder. Which ids are the
study's latest refit is written in the study's user_attrs (``refit_artifacts``: the folder
they were written to and the id of each file by kind), and the report's id in
``report_artifact``; an earlier refit's files stay in the store and in the dashboard.

Precedence for the artifact folder: ``--artifacts DIR`` (``artifacts=`` in Python), else
``HPO_ARTIFACTS``, else ``results``; ``resolve_artifacts_dir`` is the one place that decides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from hpo.errors import HpoError, StudyError

#: The environment variable naming the artifact folder.
ARTIFACTS_ENV = "HPO_ARTIFACTS"
#: The command-line option naming it; messages name it.
ARTIFACTS_FLAG = "--artifacts"
#: The artifact folder when neither the option nor the environment names one.
DEFAULT_ARTIFACTS = "results"
#: Study user_attr: ``{"dir": <folder refit wrote to>, "files": {kind: artifact id}}``.
REFIT_ARTIFACTS_ATTR = "refit_artifacts"
#: Study user_attr: the artifact id of the latest ``report.html``.
REPORT_ARTIFACT_ATTR = "report_artifact"


def resolve_artifacts_dir(value: str | Path | None = None) -> Path:
    """The artifact folder: ``value``, else ``$HPO_ARTIFACTS``, else ``results``."""
    return Path(value or os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS)


def open_artifact_store(directory: str | Path, *, create: bool = False) -> FileSystemArtifactStore:
    """Optuna's file-system artifact store on ``directory``.

    Args:
        directory: The artifact folder (``resolve_artifacts_dir``).
        create: Make the folder when it is missing (to write); else it must exist (to read).
            Default: False.

    Raises:
        HpoError: ``directory`` is missing (and not to be created) or is not a folder; the
            message names it and the option that sets it.
    """
    path = Path(directory)
    if create and not path.exists():
        path.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise HpoError(
            f"artifact folder {path} {what}; name the folder hpo refit wrote its artifacts to "
            f"with {ARTIFACTS_FLAG} DIR (artifacts= in Python) or {ARTIFACTS_ENV}=DIR"
        )
    return FileSystemArtifactStore(path)


def upload_refit(
    study: optuna.Study, directory: str | Path, files: Mapping[str, str | Path]
) -> dict[str, str]:
    """Upload a refit's files as artifacts of ``study`` and record their ids in its user_attrs.

    Args:
        study: The refit study.
        directory: The artifact folder; made when missing.
        files: The files by kind (``model``, ``params``, ``metrics``, ``history``,
            ``confusion_matrix``).

    Returns:
        The artifact id of each file, by kind (what ``refit_artifact_ids`` reads back).
    """
    store = open_artifact_store(directory, create=True)
    ids = {kind: _upload(study, store, path) for kind, path in files.items()}
    study.set_user_attr(
        REFIT_ARTIFACTS_ATTR, {"dir": str(Path(directory).resolve()), "files": ids}
    )
    return ids


def upload_report(study: optuna.Study, directory: str | Path, path: str | Path) -> str:
    """Upload ``report.html`` as an artifact of ``study``; its id goes to the user_attrs.

    Returns:
        The artifact id.
    """
    artifact_id = _upload(study, open_artifact_store(directory, create=True), path)
    study.set_user_attr(REPORT_ARTIFACT_ATTR, artifact_id)
    return artifact_id


def recorded_refit(study_attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``refit_artifacts`` record in a study's user_attrs, or None before any refit."""
    record = study_attrs.get(REFIT_ARTIFACTS_ATTR)
    return record if isinstance(record, dict) and record.get("files") else None


def refit_artifact_ids(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any]:
    """The study's latest refit record: ``{"dir": ..., "files": {kind: artifact id}}``.

    Raises:
        StudyError: No such study, or it has not been refit yet (run ``hpo refit NAME``).
    """
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        raise StudyError(f"no study named {name!r} in this storage") from None
    record = recorded_refit(storage.get_study_user_attrs(study_id))
    if record is None:
        raise StudyError(
            f"study {name!r} has not been refit yet, so it has no model to load; run "
            f"hpo refit {name} (with {ARTIFACTS_FLAG} DIR to choose where its files go)"
        )
    return record


def download_refit(
    record: Mapping[str, Any],
    directory: str | Path,
    dest: str | Path,
    kinds: tuple[str, ...] | None = None,
) -> dict[str, Path]:
    """Download a refit's files (all, or the ``kinds`` it has) from the artifact store.

    Args:
        record: What ``refit_artifact_ids`` returned.
        directory: The artifact folder to read from.
        dest: An existing folder to download into; each file is named by its kind.
        kinds: The kinds wanted. Default: every kind the refit recorded.

    Returns:
        The downloaded files, by kind.

    Raises:
        HpoError: The folder is missing, or does not hold the refit's files (it is another
            folder than the one refit wrote to); the message names both.
    """
    written_to = f"hpo refit wrote them to {record.get('dir', 'another folder')}"
    try:
        store = open_artifact_store(directory)
    except HpoError as error:
        raise HpoError(f"{error}; {written_to}") from None
    files: Mapping[str, str] = record["files"]
    wanted = [kind for kind in (kinds or tuple(files)) if kind in files]
    paths: dict[str, Path] = {}
    for kind in wanted:
        paths[kind] = Path(dest) / kind
        try:
            download_artifact(
                artifact_store=store, file_path=str(paths[kind]), artifact_id=files[kind]
            )
        except ArtifactNotFound:
            raise HpoError(
                f"artifact folder {directory} does not hold the refit's {kind} (artifact "
                f"{files[kind]}): {written_to}. Name that folder (or a copy of it) with "
                f"{ARTIFACTS_FLAG} DIR (artifacts= in Python) or {ARTIFACTS_ENV}=DIR"
            ) from None
    return paths


def _upload(study: optuna.Study, store: FileSystemArtifactStore, path: str | Path) -> str:
    return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)
