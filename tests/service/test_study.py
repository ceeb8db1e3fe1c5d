"""Registration: idempotent, refuses a changed spec, enqueues a grid, carries the spec; and the
one count of a study's budget."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import run_hpo, tiny_spec
from optuna.trial import TrialState
from optuna_dashboard import get_note, save_note

from hpo.errors import SpecError, StudyError
from hpo.service.notes import spec_note
from hpo.service.storage import open_storage
from hpo.service.study import (
    QUEUED_ATTR,
    SPEC_ATTR,
    VERSION_ATTR,
    budget_used,
    delete_study,
    list_study_names,
    load_spec_from_storage,
    load_study,
    make_sampler,
    register_study,
)
from hpo.spec.objectives import metric_name
from hpo.spec.study_spec import parse_spec

GRID = {
    "name": "tiny-grid",
    "sampler": {"name": "grid"},
    "budget": {},
    "space": {
        "module__hidden1": {"type": "int", "low": 8, "high": 16, "step": 8},
        "lr": {"type": "categorical", "choices": [0.01, 0.1]},
        "module__activation": {"type": "categorical", "choices": ["relu", "tanh"]},
    },
}


def test_register_stores_the_spec_and_a_worker_can_load_it(storage_url: str) -> None:
    spec = parse_spec(tiny_spec())
    storage = open_storage(storage_url)
    registration = register_study(spec, storage)
    assert registration.created
    assert load_spec_from_storage(open_storage(storage_url), spec.name) == spec
    study, loaded = load_study(storage, spec.name)
    assert loaded == spec
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert list_study_names(storage) == [spec.name]


def test_a_registered_study_names_its_metric_after_the_scoring(storage_url: str) -> None:
    """So optuna-dashboard and Optuna's plots say "balanced_accuracy", not "Objective 0"."""
    spec = parse_spec(tiny_spec(scoring="balanced_accuracy"))
    storage = open_storage(storage_url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        register_study(spec, storage)
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
    study, loaded = load_study(storage, spec.name)
    assert study.metric_names == [spec.scoring] == ["balanced_accuracy"]
    assert metric_name(study, loaded) == "balanced_accuracy"


def test_a_study_registered_before_metric_names_is_named_by_its_spec(sqlite_url: str) -> None:
    """A study registered by an hpo that stored no metric name: its spec's scoring names it."""
    spec = parse_spec(tiny_spec(scoring="f1_macro"))
    storage = open_storage(sqlite_url)
    old = optuna.create_study(study_name=spec.name, storage=storage, direction=spec.direction)
    old.set_user_attr(SPEC_ATTR, spec.to_json())
    study, loaded = load_study(storage, spec.name)
    assert study.metric_names is None
    assert metric_name(study, loaded) == "f1_macro"
    # registering its file again names it for good (no more "Objective 0" in the dashboard)
    assert not register_study(spec, storage).created
    assert optuna.load_study(study_name=spec.name, storage=storage).metric_names == ["f1_macro"]


def test_registering_the_same_spec_again_is_a_no_op(storage_url: str) -> None:
    spec = parse_spec(tiny_spec(**GRID))
    storage = open_storage(storage_url)
    register_study(spec, storage)
    again = register_study(parse_spec(tiny_spec(**GRID)), storage)
    assert not again.created
    assert len(optuna.load_study(study_name=spec.name, storage=storage).trials) == 8


def test_registration_notes_the_spec_for_the_dashboard(storage_url: str) -> None:
    spec = parse_spec(tiny_spec())
    storage = open_storage(storage_url)
    register_study(spec, storage)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    note = get_note(study)
    assert note == spec_note(spec)
    assert note.startswith("## tiny-digits\n") and "\nmodel: mlp\n" in note


def test_a_study_registered_without_a_note_gets_it_from_the_same_spec_only(
    storage_url: str,
) -> None:
    spec = parse_spec(tiny_spec(**GRID))
    storage = open_storage(storage_url)
    register_study(spec, storage)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    save_note(study, "")  # as a study registered before hpo wrote notes: none

    def everything_but_the_note() -> tuple[object, ...]:
        attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(spec.name))
        system = {key: value for key, value in attrs.items() if not key.startswith("dashboard:")}
        trials = [(t.number, t.state, t.system_attrs) for t in study.get_trials()]
        return study.user_attrs, system, study.metric_names, trials

    before = everything_but_the_note()
    again = register_study(parse_spec(tiny_spec(**GRID)), storage)
    assert not again.created and again.enqueued == 0
    assert get_note(study) == spec_note(spec)
    assert everything_but_the_note() == before

    # a note someone wrote in the dashboard stays; a changed spec writes nothing
    save_note(study, "my own words")
    register_study(parse_spec(tiny_spec(**GRID)), storage)
    with pytest.raises(StudyError):
        register_study(parse_spec(tiny_spec(**GRID, description="changed")), storage)
    assert get_note(study) == "my own words"


@pytest.mark.slow
def test_optunas_own_cli_lists_the_study_readably(sqlite_url: str) -> None:
    # `optuna studies` prints user_attrs as they are, in one table row: the spec (JSON) and
    # the dashboard's notes are system attributes, which it does not print.
    spec = parse_spec(tiny_spec())
    register_study(spec, open_storage(sqlite_url))
    optuna_cli = Path(sys.executable).with_name("optuna")

    def listed(*form: str) -> str:
        done = subprocess.run(
            [str(optuna_cli), "studies", "--storage", sqlite_url, *form],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    (study,) = json.loads(listed("-f", "json"))
    assert study["name"] == spec.name and study["direction"] == ["MAXIMIZE"]
    assert SPEC_ATTR not in study["user_attrs"] and "dashboard:" not in json.dumps(study)
    table = listed()
    assert max(len(line) for line in table.splitlines()) < 200, table
    assert spec.name in table and "hpo_version" in table


def test_a_changed_spec_under_the_same_name_is_refused(storage_url: str) -> None:
    storage = open_storage(storage_url)
    register_study(parse_spec(tiny_spec()), storage)
    changed = parse_spec(tiny_spec(budget={"trials": 9}))
    with pytest.raises(StudyError, match=r"different spec \(changed: budget\).*new `name`"):
        register_study(changed, storage)
    assert load_spec_from_storage(storage, "tiny-digits").budget.trials == 4


def test_a_grid_is_enqueued_point_by_point_with_warm_starts_first(storage_url: str) -> None:
    warm = {"module__hidden1": 12, "lr": 0.1, "module__activation": "relu"}
    spec = parse_spec(tiny_spec(**GRID, enqueue=[warm]))
    storage = open_storage(storage_url)
    assert register_study(spec, storage).enqueued == 9
    trials = optuna.load_study(study_name=spec.name, storage=storage).trials
    assert all(t.state == TrialState.WAITING for t in trials)
    points = [t.system_attrs["fixed_params"] for t in trials]  # (how Optuna queues a point)
    assert points[0] == warm
    assert len({tuple(sorted(p.items())) for p in points[1:]}) == 8
    assert [t.user_attrs[QUEUED_ATTR] for t in trials] == ["spec"] + ["grid"] * 8
    assert spec.n_trials == 9


@pytest.mark.slow
def test_a_warm_start_that_is_a_grid_point_runs_once(sqlite_url: str) -> None:
    # 16.0 is the grid's 16, as a user may write it
    warm = {"module__hidden1": 16.0, "lr": 0.1, "module__activation": "tanh"}
    spec = parse_spec(tiny_spec(**GRID, enqueue=[warm]))
    assert spec.n_trials == 8
    storage = open_storage(sqlite_url)
    assert register_study(spec, storage).enqueued == 8
    worker = run_hpo("worker", "--study", spec.name, "--storage", sqlite_url, "--index", "0")
    assert worker.returncode == 0, worker.stderr
    trials = optuna.load_study(study_name=spec.name, storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    ran = Counter(
        (t.params["module__hidden1"], t.params["lr"], t.params["module__activation"])
        for t in trials
    )
    assert len(ran) == 8 and set(ran.values()) == {1}
    assert trials[0].user_attrs[QUEUED_ATTR] == "spec"
    # budget.trials counts the point once too
    with pytest.raises(SpecError, match="its 8 points once, but trials=9"):
        parse_spec(tiny_spec(**{**GRID, "budget": {"trials": 9}}, enqueue=[warm]))


def test_a_half_written_registration_is_redone(storage_url: str) -> None:
    storage = open_storage(storage_url)
    optuna.create_study(study_name="tiny-digits", storage=storage)  # no spec attribute
    with pytest.raises(StudyError, match="registration did not finish"):
        load_spec_from_storage(storage, "tiny-digits")
    assert register_study(parse_spec(tiny_spec()), storage).created


class _FullStorage(optuna.storages.InMemoryStorage):
    """A storage whose disk fills up once a study exists, while ``full``: no spec is written,
    and, with ``delete_too``, the half-made study cannot be removed either."""

    def __init__(self, *, delete_too: bool = False) -> None:
        super().__init__()
        self.full = True
        self.delete_too = delete_too

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        if self.full:
            raise optuna.exceptions.StorageInternalError("database or disk is full")
        super().set_study_system_attr(study_id, key, value)

    def delete_study(self, study_id: int) -> None:
        if self.full and self.delete_too:
            raise optuna.exceptions.StorageInternalError("database or disk is full")
        super().delete_study(study_id)


@pytest.mark.parametrize("spec", [tiny_spec(), tiny_spec(**GRID)], ids=["tpe", "grid"])
def test_a_registration_that_fails_half_way_leaves_no_study(spec: dict[str, object]) -> None:
    storage = _FullStorage()
    with pytest.raises(optuna.exceptions.StorageInternalError, match="disk is full"):
        register_study(parse_spec(spec), storage)
    assert list_study_names(storage) == []


def test_a_study_left_half_registered_is_named_with_what_to_do() -> None:
    storage = _FullStorage(delete_too=True)
    spec = parse_spec(tiny_spec())
    with pytest.raises(StudyError) as refused:
        register_study(spec, storage)
    message = str(refused.value)
    assert "registration of 'tiny-digits' failed (database or disk is full)" in message
    assert "without its spec, which no worker runs" in message
    assert "hpo register replaces it" in message
    storage.full = False  # room again: registering again replaces the half-made study
    assert register_study(spec, storage).created
    assert load_spec_from_storage(storage, spec.name) == spec


def test_a_stored_spec_this_version_cannot_read_names_the_version_that_wrote_it(
    storage_url: str,
) -> None:
    storage = open_storage(storage_url)
    register_study(parse_spec(tiny_spec()), storage)
    study = optuna.load_study(study_name="tiny-digits", storage=storage)
    _tamper(storage_url, "tiny-digits", model="gone")
    study.set_user_attr(VERSION_ATTR, "0.0.1")
    with pytest.raises(SpecError, match=r"(?s)written by hpo 0\.0\.1\).*unknown model 'gone'"):
        load_spec_from_storage(storage, "tiny-digits")


def _tamper(storage_url: str, study_name: str, **changes: object) -> None:
    """Rewrite the stored spec of a study as anyone who can write to the storage could."""
    storage = open_storage(storage_url)
    study_id = storage.get_study_id_from_name(study_name)
    spec = json.loads(storage.get_study_system_attrs(study_id)[SPEC_ATTR])
    spec.update(changes)
    storage.set_study_system_attr(study_id, SPEC_ATTR, json.dumps(spec))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        # The checks of a study file beyond the types: rules of fixed: values, the grid, seeds.
        ({"fixed": {"max_epochs": 0, "batch_size": 128}}, "fixed.max_epochs"),
        ({"fixed": {"max_epochs": 3, "batch_size": "=HYPERLINK(1)"}}, "fixed.batch_size"),
        ({"cv": {"folds": 2, "shuffle": True, "seed": -1}}, "cv.seed"),
        ({"space": {"lr": {"type": "float", "low": 0.1, "high": 0.01}}}, "space.lr"),
        ({"name": "another-study"}, "not 'tiny-digits'"),
        ({"name": "../../x"}, "name"),
    ],
    ids=["fixed-range", "fixed-type", "seed", "space-range", "other-name", "path-name"],
)
def test_a_tampered_stored_spec_is_refused_by_every_reader(
    sqlite_url: str, changes: dict[str, object], problem: str
) -> None:
    storage = open_storage(sqlite_url)
    register_study(parse_spec(tiny_spec()), storage)
    _tamper(sqlite_url, "tiny-digits", **changes)
    with pytest.raises(SpecError, match="spec stored with study 'tiny-digits'") as refused:
        load_spec_from_storage(storage, "tiny-digits")
    assert problem in str(refused.value)


@pytest.mark.slow
def test_a_worker_refuses_a_tampered_spec_before_any_trial(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    register_study(parse_spec(tiny_spec()), storage)
    _tamper(sqlite_url, "tiny-digits", fixed={"max_epochs": 3, "batch_size": "two"})
    worker = run_hpo("worker", "--study", "tiny-digits", "--storage", sqlite_url)
    assert worker.returncode == 2, worker.stderr
    assert "fixed.batch_size" in worker.stderr and "Traceback" not in worker.stderr
    study = optuna.load_study(study_name="tiny-digits", storage=storage)
    assert all(trial.state == TrialState.WAITING for trial in study.trials)


def test_the_budget_counts_finished_running_and_queued_trials_never_failed_ones() -> None:
    counts = {
        TrialState.COMPLETE: 3,
        TrialState.PRUNED: 2,
        TrialState.FAIL: 7,
        TrialState.RUNNING: 1,
        TrialState.WAITING: 4,
    }
    assert budget_used(counts) == 10
    assert budget_used(counts, pending=False) == 5
    assert budget_used({}) == 0


def test_unknown_studies_are_named_with_the_known_ones(storage_url: str) -> None:
    storage = open_storage(storage_url)
    register_study(parse_spec(tiny_spec()), storage)
    with pytest.raises(StudyError, match="no study named 'nope'.*tiny-digits"):
        load_spec_from_storage(storage, "nope")
    delete_study(storage, "tiny-digits")
    assert list_study_names(storage) == []


def test_worker_zero_replays_the_seed_and_others_draw_different_points() -> None:
    spec = parse_spec(tiny_spec(sampler={"name": "random", "seed": 3}))

    def first_points(worker_index: int | None) -> list[dict]:
        study = optuna.create_study(sampler=make_sampler(spec, worker_index))
        for _ in range(3):
            trial = study.ask()
            trial.suggest_float("lr", 1e-3, 1e-1, log=True)
            study.tell(trial, 0.0)
        return [t.params for t in study.trials]

    assert first_points(0) == first_points(0)
    assert first_points(1) == first_points(1)
    assert first_points(0) != first_points(1)
    assert first_points(None) != first_points(None)


@pytest.mark.slow
def test_concurrent_registrations_of_a_grid_create_and_fill_it_once(
    storage_url: str, write_spec: Callable[..., Path]
) -> None:
    """Six ``hpo register`` processes of the same 300-point grid at once (issue 15: on SQLite
    they used to delete and refill each other's study; on PostgreSQL one died with a raw
    DuplicatedStudyError)."""
    space = {
        "module__hidden1": {"type": "int", "low": 1, "high": 100},
        "lr": {"type": "categorical", "choices": [0.001, 0.01, 0.1]},
    }
    grid = tiny_spec(name="race-grid", sampler={"name": "grid"}, budget={}, space=space)
    path = write_spec(grid)
    command = [sys.executable, "-m", "hpo", "register", str(path), "--storage", storage_url]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    outcomes = [(p.wait(timeout=300), *p.communicate()) for p in processes]

    assert [code for code, _, _ in outcomes] == [0] * 6, outcomes
    said = sorted(out.split(" (")[0].strip() for _, out, _ in outcomes)
    assert said == ["race-grid is already registered with this spec; nothing to do"] * 5 + [
        "registered race-grid"
    ], said
    assert all("Traceback" not in err for _, _, err in outcomes)
    trials = optuna.load_study(study_name="race-grid", storage=storage_url).trials
    assert len(trials) == 300
    assert len({t.number for t in trials}) == 300
    assert {t.state for t in trials} == {TrialState.WAITING}
    points = {tuple(sorted(t.system_attrs["fixed_params"].items())) for t in trials}
    assert len(points) == 300
