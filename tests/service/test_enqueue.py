"""hpo enqueue: a warm start queued after registration, checked like a spec's enqueue list."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from conftest import run_hpo, tiny_spec
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.service.enqueue import enqueue_point, parse_assignments
from hpo.service.storage import open_storage
from hpo.service.study import QUEUED_ATTR, register_study
from hpo.service.worker import run_worker
from hpo.spec.study_spec import parse_spec


def two_layer_spec(**overrides: Any) -> dict[str, Any]:
    spec = tiny_spec(
        name="warm",
        budget={"trials": 2},
        space={
            "module__hidden1": {"type": "int", "low": 8, "high": 32},
            "module__hidden2": {"type": "int", "low": 4, "high": "module__hidden1"},
            "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        },
    )
    spec.update(overrides)
    return spec


POINT = {"module__hidden1": 16, "module__hidden2": 8, "lr": 0.02, "optimizer": "sgd"}


def registered(url: str, raw: dict[str, Any] | None = None) -> optuna.storages.BaseStorage:
    storage = open_storage(url)
    register_study(parse_spec(raw or two_layer_spec()), storage)
    return storage


@pytest.mark.parametrize(
    ("item", "value"),
    [
        ("lr=0.01", 0.01),
        ("lr=1e-3", 0.001),  # YAML 1.1 would read this as a string; specs read it as a float
        ("module__hidden1=64", 64),
        ("module__batch_norm=true", True),
        ("optimizer__momentum=null", None),
        ("optimizer=adam", "adam"),
        ("module__padding='2'", "2"),
    ],
)
def test_values_are_yaml_scalars(item: str, value: Any) -> None:
    key = item.split("=")[0]
    parsed = parse_assignments([item])
    assert parsed == {key: value} and type(parsed[key]) is type(value)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["lr"], "'lr' is not key=value"),
        (["=3"], "'=3' is not key=value"),
        (["lr=0.1", "lr=0.2"], "lr is given twice"),
        (["choices=[1, 2]"], "give one value"),
        ([], "give the point as key=value pairs"),
    ],
)
def test_malformed_assignments(items: list[str], message: str) -> None:
    with pytest.raises(HpoError, match=message.replace("[", r"\[")):
        parse_assignments(items)


@pytest.mark.slow
def test_enqueued_point_is_the_next_trial_and_one_of_the_budget(sqlite_url: str) -> None:
    storage = registered(sqlite_url)

    queued = enqueue_point(storage, "warm", dict(POINT))

    assert queued.trial == 0 and queued.budget == 2 and queued.taken == 1
    assert queued.within_budget
    run_worker("warm", sqlite_url, worker_index=0, heartbeat_seconds=0, threads=1)
    trials = optuna.load_study(study_name="warm", storage=sqlite_url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].params == POINT  # run first, exactly as given
    assert trials[1].params != POINT


def test_a_bad_point_lists_every_problem_and_queues_nothing(sqlite_url: str) -> None:
    storage = registered(sqlite_url)
    point = {"module__hidden1": 16, "module__hidden2": 20, "lr": 0.5, "optimizer": "adamw"}
    point["module__hiden3"] = 4

    with pytest.raises(HpoError, match="does not fit the space") as info:
        enqueue_point(storage, "warm", point)

    problems = [line[4:] for line in str(info.value).splitlines()[1:]]
    assert "module__hidden2: 20 is outside the range [4, 16]" in problems  # <= hidden1
    assert "lr: 0.5 is outside the range [0.001, 0.1]" in problems
    assert "optimizer: 'adamw' is not one of ['adam', 'sgd']" in problems
    assert any(p.startswith("module__hiden3: not a parameter in space") for p in problems)
    assert len(problems) == 4
    assert optuna.load_study(study_name="warm", storage=sqlite_url).get_trials() == []


def test_a_point_must_give_every_searched_parameter(sqlite_url: str) -> None:
    storage = registered(sqlite_url)
    with pytest.raises(HpoError, match="the point: .* missing module__hidden2, optimizer"):
        enqueue_point(storage, "warm", {"module__hidden1": 16, "lr": 0.01})


def test_a_grid_takes_no_extra_points(sqlite_url: str) -> None:
    grid = two_layer_spec(
        sampler={"name": "grid"},
        budget={},
        space={"optimizer": {"type": "categorical", "choices": ["adam", "sgd"]}},
    )
    storage = registered(sqlite_url, grid)
    with pytest.raises(HpoError, match="is a grid"):
        enqueue_point(storage, "warm", {"optimizer": "adam"})


@pytest.mark.slow
def test_a_point_past_a_spent_budget_says_so(sqlite_url: str) -> None:
    storage = registered(sqlite_url)
    run_worker("warm", sqlite_url, worker_index=0, heartbeat_seconds=0, threads=1)

    queued = enqueue_point(storage, "warm", dict(POINT))

    assert queued.trial == 2 and queued.taken == 3 and not queued.within_budget


@pytest.mark.slow
def test_cli_enqueue(sqlite_url: str) -> None:
    registered(sqlite_url)
    args = ["module__hidden1=16", "module__hidden2=8", "lr=2e-2", "optimizer=sgd"]

    done = run_hpo("enqueue", "warm", *args, "--storage", sqlite_url)

    assert done.returncode == 0, done.stderr
    assert "enqueued trial 0 of warm" in done.stdout
    study = optuna.load_study(study_name="warm", storage=sqlite_url)
    (trial,) = study.get_trials()
    assert trial.system_attrs["fixed_params"] == POINT  # (how Optuna queues a point)
    assert trial.user_attrs == {QUEUED_ATTR: "hpo enqueue"}
