"""Conditional parameters (``when``): drawn only where their condition holds, a grid of only
the valid combinations, every misuse refused at registration with one message."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from conftest import REPO, tiny_spec

import hpo
from hpo.errors import HpoError, SpecError
from hpo.results.export import export_study, read_best_params
from hpo.service.enqueue import enqueue_point
from hpo.service.storage import open_storage
from hpo.service.study import register_study
from hpo.spec.sampling import sampler_options
from hpo.spec.spaces import expand_grid, grid_size, point_key, suggest
from hpo.spec.study_spec import load_spec, parse_spec

SGD_ONLY = {
    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    "optimizer__momentum": {
        "type": "float",
        "low": 0.5,
        "high": 0.99,
        "when": {"optimizer": "sgd"},
    },
}


def conditional(space: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return tiny_spec(space=space, **overrides)


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as refused:
        parse_spec(raw)
    return refused.value.problems


# --- drawing and expanding ------------------------------------------------------------------


def test_a_conditional_parameter_is_drawn_only_where_its_condition_holds() -> None:
    space = parse_spec(conditional(SGD_ONLY)).space
    adam = suggest(optuna.trial.FixedTrial({"optimizer": "adam"}), space)
    sgd = suggest(optuna.trial.FixedTrial({"optimizer": "sgd", "optimizer__momentum": 0.9}), space)
    assert adam == {"optimizer": "adam"}
    assert sgd == {"optimizer": "sgd", "optimizer__momentum": 0.9}


def test_a_range_condition_and_a_list_condition() -> None:
    space = parse_spec(
        conditional(
            {
                "module__depth": {"type": "int", "low": 1, "high": 4},
                "module__units": {
                    "type": "int",
                    "low": 8,
                    "high": 64,
                    "when": {"module__depth": {"min": 3}},
                },
                "optimizer": {"type": "categorical", "choices": ["adam", "sgd", "rmsprop"]},
                "optimizer__momentum": {
                    "type": "float",
                    "low": 0.0,
                    "high": 0.9,
                    "when": {"optimizer": ["sgd", "rmsprop"]},
                },
            }
        )
    ).space
    shallow = optuna.trial.FixedTrial({"module__depth": 2, "optimizer": "adam"})
    deep = {"module__depth": 3, "module__units": 16, "optimizer": "rmsprop"}
    assert suggest(shallow, space) == {"module__depth": 2, "optimizer": "adam"}
    drawn = suggest(optuna.trial.FixedTrial({**deep, "optimizer__momentum": 0.5}), space)
    assert drawn == {**deep, "optimizer__momentum": 0.5}


def test_a_grid_expands_only_the_valid_combinations_each_once() -> None:
    space = parse_spec(
        conditional(
            {
                "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
                "optimizer__momentum": {
                    "type": "categorical",
                    "choices": [0.5, 0.9],
                    "when": {"optimizer": "sgd"},
                },
                "lr": {"type": "categorical", "choices": [0.01, 0.1]},
            },
            sampler={"name": "grid"},
            budget={},
        )
    ).space
    points = list(expand_grid(space))
    assert Counter(point_key(p) for p in points).most_common(1)[0][1] == 1  # each once
    assert sorted((p["optimizer"], p.get("optimizer__momentum"), p["lr"]) for p in points) == [
        ("adam", None, 0.01),
        ("adam", None, 0.1),
        ("sgd", 0.5, 0.01),
        ("sgd", 0.5, 0.1),
        ("sgd", 0.9, 0.01),
        ("sgd", 0.9, 0.1),
    ]
    assert len(points) <= grid_size(space)  # the bound the grid's size cap reads


def test_tpe_models_a_conditional_space_by_group() -> None:
    spec = parse_spec(conditional(SGD_ONLY, sampler={"name": "tpe", "seed": 0}))
    assert sampler_options(spec, "tpe") == {"multivariate": True, "group": True}
    told = parse_spec(
        conditional(SGD_ONLY, sampler={"name": "tpe", "seed": 0, "options": {"group": False}})
    )
    assert sampler_options(told, "tpe") == {"multivariate": True, "group": False}
    plain = parse_spec(tiny_spec(sampler={"name": "tpe", "seed": 0}))
    assert sampler_options(plain, "tpe") == {}


def test_the_catalogue_study_searches_momentum_for_sgd_only() -> None:
    spec = load_spec(REPO / "studies" / "digits-mlp-sgd-tpe.yaml")
    assert spec.space["optimizer__momentum"].when == {"optimizer": "sgd"}
    assert spec.space["optimizer__nesterov"].when == {"optimizer": "sgd"}


# --- refused at registration ----------------------------------------------------------------


def momentum_when(
    when: Any, *, before: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    """The SGD-momentum space with ``when`` as momentum's condition (``before`` it: more
    parameters), and the spec's other keys."""
    space = {
        **(before or {}),
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "optimizer__momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": when},
    }
    return conditional(space, **spec)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (
            momentum_when({"optimzer": "sgd"}),
            "space.optimizer__momentum.when.optimzer: no parameter 'optimzer' in space; did "
            "you mean 'optimizer'?",
        ),
        (
            conditional(
                {
                    "optimizer__momentum": {
                        "type": "float",
                        "low": 0.5,
                        "high": 0.99,
                        "when": {"optimizer": "sgd"},
                    },
                    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
                }
            ),
            "optimizer comes after optimizer__momentum in space; a condition names an earlier "
            "parameter",
        ),
        (
            conditional(
                {
                    "lr": {
                        "type": "float",
                        "low": 0.01,
                        "high": 0.1,
                        "when": {"module__hidden1": {"min": 16}},
                    },
                    "module__hidden1": {
                        "type": "int",
                        "low": 8,
                        "high": 32,
                        "when": {"lr": {"max": 0.05}},
                    },
                }
            ),
            "lr and module__hidden1 each exist only under a condition on the other, a cycle",
        ),
        (
            momentum_when({"optimizer__momentum": {"min": 0.6}}),
            "space.optimizer__momentum.when.optimizer__momentum: a parameter cannot depend on "
            "itself",
        ),
        (
            momentum_when({"optimizer": "rmsprop"}),
            "no value of optimizer meets optimizer: rmsprop, so optimizer__momentum would never "
            "be drawn; its choices are 'adam', 'sgd'",
        ),
        (
            momentum_when(
                {"module__hidden1": {"min": 100}},
                before={"module__hidden1": {"type": "int", "low": 8, "high": 32}},
            ),
            "no value of module__hidden1 meets module__hidden1: >= 100",
        ),
        (
            tiny_spec(
                fixed={"max_epochs": 2, "optimizer": "sgd"},
                space={
                    "optimizer__momentum": {
                        "type": "float",
                        "low": 0.5,
                        "high": 0.99,
                        "when": {"optimizer": "sgd"},
                    }
                },
            ),
            "space.optimizer__momentum.when.optimizer: optimizer is fixed ('sgd') for every "
            "trial, so this condition always holds or never does",
        ),
        (
            conditional(
                {
                    "module__depth": {"type": "int", "low": 1, "high": 3},
                    "module__hidden1": {
                        "type": "int",
                        "low": 8,
                        "high": 64,
                        "when": {"module__depth": {"min": 2}},
                    },
                    "module__hidden2": {"type": "int", "low": 4, "high": "module__hidden1"},
                }
            ),
            "space.module__hidden2: bound 'module__hidden1' exists only when module__depth: "
            ">= 2; bound it by a parameter every trial has",
        ),
        (momentum_when({}), "`when` is empty"),
        (momentum_when({"optimizer": {"min": 3, "max": 1}}), "`min <= max` must hold"),
    ],
    ids=[
        "unknown",
        "later",
        "cycle",
        "itself",
        "no-choice-meets-it",
        "no-number-meets-it",
        "fixed-key",
        "bound-on-a-conditional",
        "empty",
        "min-above-max",
    ],
)
def test_a_misused_condition_is_one_message_naming_the_key(raw: dict[str, Any], says: str) -> None:
    found = problems(raw)
    assert any(says in problem for problem in found), found


def test_a_warm_start_gives_exactly_the_parameters_its_values_meet() -> None:
    assert parse_spec(momentum_when({"optimizer": "sgd"}, enqueue=[{"optimizer": "adam"}]))
    given = problems(
        momentum_when({"optimizer": "sgd"})
        | {"enqueue": [{"optimizer": "adam", "optimizer__momentum": 0.9}]}
    )
    assert any(
        "enqueue[0].optimizer__momentum: given, but exists only when optimizer: sgd" in p
        for p in given
    ), given
    missing = problems(momentum_when({"optimizer": "sgd"}) | {"enqueue": [{"optimizer": "sgd"}]})
    assert any("missing optimizer__momentum" in p for p in missing), missing


def test_hpo_enqueue_holds_a_point_to_the_conditions(sqlite_url: str) -> None:
    spec = parse_spec(momentum_when({"optimizer": "sgd"}, budget={"trials": 4}))
    storage = open_storage(sqlite_url)
    register_study(spec, storage)
    enqueue_point(storage, spec.name, {"optimizer": "adam"})
    with pytest.raises(HpoError, match="optimizer__momentum: given, but exists only when"):
        enqueue_point(storage, spec.name, {"optimizer": "adam", "optimizer__momentum": 0.9})


# --- a real study ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_conditional_study_runs_and_leaves_an_absent_parameter_empty(
    sqlite_url: str, tmp_path: Path
) -> None:
    from hpo.service.worker import run_worker

    raw = tiny_spec(
        name="conditional",
        sampler={"name": "grid"},
        budget={},
        fixed={"max_epochs": 2, "batch_size": 128, "lr": 0.05},
        space={
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
            "optimizer__momentum": {
                "type": "categorical",
                "choices": [0.9],
                "when": {"optimizer": "sgd"},
            },
        },
    )
    spec = parse_spec(raw)
    storage = open_storage(sqlite_url)
    register_study(spec, storage)
    run_worker(spec.name, sqlite_url, worker_index=0, heartbeat_seconds=0, threads=1)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    assert sorted(tuple(sorted(t.params.items())) for t in study.trials) == [
        (("optimizer", "adam"),),
        (("optimizer", "sgd"), ("optimizer__momentum", 0.9)),
    ]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]

    trials = pd.read_csv(export_study(storage, spec.name, tmp_path / "t.csv", all_trials=True))
    assert trials["optimizer__momentum"].isna().sum() == 1  # the adam trial's cell is empty
    best = export_study(storage, spec.name, tmp_path / "best.csv")
    assert "optimizer__momentum" in pd.read_csv(best).columns
    params = read_best_params(best)
    adam = study.best_trial.params["optimizer"] == "adam"
    assert ("optimizer__momentum" not in params) is adam
    assert ("optimizer__momentum" in hpo.skorch_params(pd.read_csv(best).iloc[0])) is not adam
