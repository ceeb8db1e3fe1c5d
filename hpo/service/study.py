"""Studies in the storage: register (idempotent), load, list, delete.

A registered study carries its validated spec as JSON in the study's system attribute
``hpo_spec`` (a study registered by an older hpo: in its user_attrs) and the hpo version that
wrote it, so a worker anywhere needs only the study name and the storage; a system attribute
keeps the long JSON out of ``optuna studies`` and optuna-dashboard's user-attribute table; its
note in optuna-dashboard shows the same spec as YAML (``hpo.service.notes``). A grid
study has every point enqueued as a WAITING trial at registration, so each point runs once;
each queued point carries ``user_attrs["hpo_queued"]`` (where it came from), which is how a
worker tells a grid point from a fresh sample. ``budget_used`` is the one count of a study's
budget that the worker, ``hpo run`` and ``hpo enqueue`` all read.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.errors import SpecError, StudyError
from hpo.service.backends import SQLiteBackend, StorageBackend
from hpo.service.notes import write_study_note
from hpo.spec.objectives import chosen_trial, directions, objective_names
from hpo.spec.pruning import make_pruner
from hpo.spec.rules import shown
from hpo.spec.sampling import make_sampler
from hpo.spec.spaces import grid_points
from hpo.spec.study_spec import StudySpec, spec_json_equal

SPEC_ATTR = "hpo_spec"
VERSION_ATTR = "hpo_version"
#: Study user attribute: the task of the study's data (classification or regression), which
#: workers write once they have loaded it, for exports that do not load the data.
TASK_ATTR = "hpo_task"
#: Trial user attribute of a point hpo queued: "grid", "spec" (its ``enqueue:`` list) or
#: "hpo enqueue". Optuna copies it to a retry of the trial.
QUEUED_ATTR = "hpo_queued"
#: Study user attribute: the budget the study's workers last ran to (``--trials``, else the
#: spec's), for ``hpo studies``.
BUDGET_ATTR = "hpo_budget"
#: The states of trials that have spent a slot of the budget for good.
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
#: ... and of those that hold one: running, or queued to run before any new sample.
PENDING_STATES = (TrialState.RUNNING, TrialState.WAITING)


def budget_used(counts: Mapping[TrialState, int], *, pending: bool = True) -> int:
    """How many of a study's budget slots are taken, given its trials counted by state.

    A COMPLETE or PRUNED trial spends a slot; a FAIL trial does not (a worker that died is
    re-queued as a WAITING trial, a bad configuration is replaced by the next sample).

    Args:
        counts: trials per state, e.g. ``StorageBackend.count_states`` or
            ``Counter(t.state for t in study.trials)``.
        pending: also count RUNNING and WAITING trials, which hold a slot: a worker claims a
            new trial only while this is under the budget, and an enqueued point runs if it is
            within it. False counts the trials finished, as progress shows them. Default: True.
    """
    states = FINISHED_STATES + PENDING_STATES if pending else FINISHED_STATES
    return sum(counts.get(state, 0) for state in states)


def is_queued_point(trial: optuna.Trial | optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` runs a point hpo queued (a grid point, a warm start), not a sample."""
    return QUEUED_ATTR in trial.user_attrs


def hpo_version() -> str:
    try:
        return version("hpo")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Registration:
    """What ``register_study`` did: created the study, or found the same one."""

    name: str
    created: bool
    enqueued: int


def register_study(
    spec: StudySpec, storage: optuna.storages.BaseStorage | StorageBackend
) -> Registration:
    """Create the study for ``spec``, or do nothing if the same spec is already registered.

    Safe under any number of concurrent registrations of the same spec (``hpo register`` and
    ``hpo run`` on several machines): the whole registration holds the study's claim lock
    (``StorageBackend.claim_lock``: a file lock beside a SQLite file, an advisory lock on
    PostgreSQL), so one process creates the study and fills its grid while the others wait,
    then find the same spec and do nothing. Pass the backend (``open_backend``) for that; a
    plain Optuna storage is locked between this process's threads only.

    Raises:
        StudyError: a study of that name exists with a different spec; a SQLite file's disk
            has no room for the registration; or a registration that failed half-way could
            not take its study back out.
    """
    backend = storage if isinstance(storage, StorageBackend) else StorageBackend(storage)
    if isinstance(backend, SQLiteBackend) and backend.path is not None:
        _check_room(backend.path, spec)
    with backend.claim_lock(spec.name):
        return _register(spec, backend.storage)


#: What registering a study may write to a SQLite file's disk: SQLite's write-ahead log (it
#: grows to about 4 MiB between checkpoints), and for each queued point its rows (about
#: 0.2 KiB) and, should the registration fail, as much again to take them back out.
_SQLITE_LOG_BYTES = 8 * 2**20
_SQLITE_POINT_BYTES = 2**10


def _check_room(path: Path, spec: StudySpec) -> None:
    """Refuse to register onto a disk that cannot hold the registration, before anything is
    written: a registration that runs out of room half-way cannot always take back what it
    wrote (removing rows needs room in the log too)."""
    points = len(spec.enqueue) + (spec.n_trials if spec.sampler.name == "grid" else 0)
    needed = _SQLITE_LOG_BYTES + points * _SQLITE_POINT_BYTES
    folder = path.resolve().parent
    try:
        status = os.statvfs(folder)
    except (OSError, AttributeError):
        return  # no such folder yet, or no statvfs here: the database says what it finds
    free = status.f_bavail * status.f_frsize
    if free < needed:
        raise StudyError(
            f"the disk of {folder} has {shown(free, 'bytes')} free, less than the "
            f"{shown(needed, 'bytes')} registering {spec.name!r} may write there (SQLite's "
            f"log and {points} queued points); nothing was changed. Free some space and run "
            "it again"
        )


def _register(spec: StudySpec, storage: optuna.storages.BaseStorage) -> Registration:
    spec_json = spec.to_json()
    existing = _study_attrs(storage, spec.name)
    if existing is not None:
        stored = existing.get(SPEC_ATTR)
        if stored is not None:
            if spec_json_equal(stored, spec_json):
                # A study registered before hpo wrote notes and metric names gets them now.
                study = optuna.load_study(study_name=spec.name, storage=storage)
                write_study_note(study, spec)
                if study.metric_names is None:
                    _name_metrics(study, spec)
                return Registration(spec.name, created=False, enqueued=0)
            raise StudyError(
                f"study {spec.name!r} is already registered with a different spec "
                f"({_differences(stored, spec_json)}). Give the changed study a new `name`, "
                f"or delete the old one first: hpo delete {spec.name}"
            )
        # A study without a spec is a registration that died half-way (a live one would hold
        # the lock): start it again.
        optuna.delete_study(study_name=spec.name, storage=storage)

    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        directions=directions(spec),
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
    )
    try:
        enqueued = _fill(study, storage, spec, spec_json)
    except BaseException as error:
        # A full disk, a dropped connection, Ctrl-C: take the half-made study back out, so
        # that a failed registration leaves the storage as it found it.
        _delete_half_registered(storage, spec.name, error)
        raise
    return Registration(spec.name, created=True, enqueued=enqueued)


def _delete_half_registered(
    storage: optuna.storages.BaseStorage, name: str, cause: BaseException
) -> None:
    """Delete the study a registration made before ``cause`` stopped it; when that fails too
    (the disk is still full), say what is left and what to do."""
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except Exception:
        root = cause
        while root.__cause__ is not None:
            root = root.__cause__
        reason = (str(root).strip().splitlines() or [type(root).__name__])[0]
        raise StudyError(
            f"the registration of {name!r} failed ({reason}), and so did removing the study "
            f"it had begun: the storage holds {name!r} without its spec, which no worker runs. "
            f"Once the storage takes writes again, hpo register replaces it (or hpo delete "
            f"{name} removes it)"
        ) from None


def _fill(
    study: optuna.Study, storage: optuna.storages.BaseStorage, spec: StudySpec, spec_json: str
) -> int:
    """Name, note and queue a study just created, and store its spec last; the number of
    points queued."""
    _name_metrics(study, spec)
    write_study_note(study, spec)
    points = [(point, "spec") for point in spec.enqueue]
    if spec.sampler.name == "grid":
        points += [(point, "grid") for point in grid_points(spec.space, skip=spec.enqueue)]
    for point, origin in points:
        study.enqueue_trial(point, user_attrs={QUEUED_ATTR: origin}, skip_if_exists=False)
    # Written last: a study is registered once its spec is there. Through the storage's
    # public API: Optuna 5's Study has no system attributes of its own any more.
    study.set_user_attr(VERSION_ATTR, hpo_version())
    storage.set_study_system_attr(storage.get_study_id_from_name(spec.name), SPEC_ATTR, spec_json)
    return len(points)


def _name_metrics(study: optuna.Study, spec: StudySpec) -> None:
    """Name the study's objectives (optuna-dashboard and Optuna's plots show the names)."""
    with warnings.catch_warnings():
        # set_metric_names is experimental in Optuna; the name is only a label.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(objective_names(spec))


def _differences(stored: str, new: str) -> str:
    old_spec, new_spec = _as_read(stored), _as_read(new)
    changed = [
        key
        for key in sorted(set(old_spec) | set(new_spec))
        if old_spec.get(key) != new_spec.get(key)
    ]
    return "changed: " + ", ".join(changed)


def _as_read(spec_json: str) -> dict[str, Any]:
    """A stored spec's keys as hpo reads it today (keys added since it was stored take their
    defaults), or as stored when it cannot be read."""
    try:
        read: dict[str, Any] = json.loads(StudySpec.from_json(spec_json).to_json())
    except SpecError:
        read = json.loads(spec_json)
    return read


def _study_attrs(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any] | None:
    """The study's user_attrs and, over them, its system attributes (where the spec is), or
    None when there is no such study.

    Three indexed lookups: ``get_all_study_summaries`` would load every study's best trial,
    seconds for a study of 10,000 trials, and every worker starts here.
    """
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return {**storage.get_study_user_attrs(study_id), **storage.get_study_system_attrs(study_id)}


def load_spec_from_storage(storage: optuna.storages.BaseStorage, name: str) -> StudySpec:
    """The spec a study was registered with.

    The stored spec is checked as a study file is at registration, and must carry the
    study's name: anyone who can write to the storage can write it.

    Raises:
        StudyError: no such study, or it was not registered by hpo.
        SpecError: the stored spec breaks a rule, or names another study.
    """
    attrs = _study_attrs(storage, name)
    if attrs is None:
        names = list_study_names(storage)
        known = f"; registered studies: {', '.join(names)}" if names else ""
        raise StudyError(
            f"no study named {name!r} in this storage{known}. "
            "Register it first: hpo register studies/<file>.yaml"
        )
    stored = attrs.get(SPEC_ATTR)
    if stored is None:
        raise StudyError(
            f"study {name!r} has no hpo spec: it was not registered by hpo, or its "
            f"registration did not finish. Register it again: hpo register FILE"
        )
    written = attrs.get(VERSION_ATTR, "an unknown version")
    source = f"the spec stored with study {name!r} (written by hpo {written})"
    fix = (
        f"hpo {hpo_version()} checks a stored spec as it checks a study file: run the study "
        f"with the hpo that wrote it, or register its YAML file again (hpo delete {name} "
        "removes this one)"
    )
    # The same checks as registration: whoever can write to the storage can write this.
    try:
        spec = StudySpec.from_json(stored, source)
    except SpecError as error:
        raise SpecError(source, [*error.problems, fix]) from None
    if spec.name != name:
        raise SpecError(
            source,
            [
                f"name: the spec is named {spec.name!r}, not {name!r}; a study's spec must "
                "carry the study's own name",
                fix,
            ],
        )
    return spec


def result_trial(study: optuna.Study, spec: StudySpec) -> optuna.trial.FrozenTrial:
    """The trial the study's export, refit and best net centre on
    (``hpo.spec.objectives.chosen_trial``: the best feasible trial, or the pick from the
    Pareto front).

    Raises:
        StudyError: no trial has completed, or none meets the spec's constraints.
    """
    try:
        return chosen_trial(study, spec)
    except ValueError:
        name = study.study_name
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if trials and spec.constraints:
            raise StudyError(
                f"study {name!r}: none of its {len(trials)} completed trials meets the "
                "constraints (see each trial's constraints with: hpo export "
                f"{name} --all); run more trials (hpo worker --study {name} --trials N) or "
                "loosen the constraints in a new study"
            ) from None
        raise StudyError(
            f"study {name!r} has no completed trial yet; run it first: hpo worker --study {name}"
        ) from None


def record_budget(study: optuna.Study, budget: int) -> None:
    """Keep the budget a worker runs to in ``BUDGET_ATTR`` (a write when it changes)."""
    if study.user_attrs.get(BUDGET_ATTR) != budget:
        study.set_user_attr(BUDGET_ATTR, budget)


def study_budget(
    storage: optuna.storages.BaseStorage, study: optuna.Study
) -> tuple[int, int] | None:
    """(the budget its workers last ran to, the spec's budget), or None for a study hpo did
    not register or cannot read; the two differ after ``--trials``."""
    try:
        spec = load_spec_from_storage(storage, study.study_name)
    except (StudyError, SpecError):
        return None
    return int(study.user_attrs.get(BUDGET_ATTR, spec.n_trials)), spec.n_trials


def record_task(study: optuna.Study, task: str) -> None:
    """Keep the task of the study's data in ``TASK_ATTR`` (one write, by the first worker)."""
    if study.user_attrs.get(TASK_ATTR) != task:
        study.set_user_attr(TASK_ATTR, task)


def load_study(
    storage: optuna.storages.BaseStorage, name: str, worker_index: int | None = 0
) -> tuple[optuna.Study, StudySpec]:
    """The Optuna study with the spec's sampler (seeded for ``worker_index``) and pruner."""
    spec = load_spec_from_storage(storage, name)
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(spec, worker_index),
        pruner=make_pruner(spec),
    )
    return study, spec


def list_study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, False))


def delete_study(storage: optuna.storages.BaseStorage, name: str) -> None:
    """Delete a study and all its trials.

    Raises:
        StudyError: no such study.
    """
    if _study_attrs(storage, name) is None:
        raise StudyError(f"no study named {name!r} in this storage")
    optuna.delete_study(study_name=name, storage=storage)
