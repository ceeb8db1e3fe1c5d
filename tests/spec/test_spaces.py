"""Search spaces: Optuna draws, grid expansion, and the parameter models' own rules."""

from __future__ import annotations

import math
import re
from typing import Any

import optuna
import pytest
from pydantic import TypeAdapter, ValidationError

from hpo.spec.spaces import (
    CategoricalParam,
    FloatParam,
    IntParam,
    Param,
    expand_grid,
    grid_points,
    grid_size,
    grid_size_error,
    point_key,
    suggest,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

PARAM: TypeAdapter[Param] = TypeAdapter(Param)


def make_space(raw: dict[str, dict[str, Any]]) -> dict[str, Param]:
    """A space as the spec holds it: each YAML mapping validated into its parameter model."""
    return {name: PARAM.validate_python(value) for name, value in raw.items()}


def random_study() -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))


# --- suggest -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "holds"),
    [
        ({"type": "int", "low": 8, "high": 32}, lambda v: isinstance(v, int) and 8 <= v <= 32),
        (
            {"type": "int", "low": 32, "high": 256, "log": True},
            lambda v: isinstance(v, int) and 32 <= v <= 256,
        ),
        ({"type": "int", "low": 10, "high": 50, "step": 10}, lambda v: v in (10, 20, 30, 40, 50)),
        ({"type": "float", "low": 0.0, "high": 0.5}, lambda v: 0.0 <= v <= 0.5),
        ({"type": "float", "low": 1e-4, "high": 1e-1, "log": True}, lambda v: 1e-4 <= v <= 1e-1),
        (
            {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
            lambda v: any(math.isclose(v, k / 10, abs_tol=1e-9) for k in range(6)),
        ),
        (
            {"type": "categorical", "choices": ["adam", "sgd", None, True, 3]},
            lambda v: v in ("adam", "sgd", None, True, 3),
        ),
    ],
    ids=["int", "int-log", "int-step", "float", "float-log", "float-step", "categorical"],
)
def test_suggest_draws_stay_in_range(raw: dict[str, Any], holds: Any) -> None:
    space = make_space({"x": raw})
    study = random_study()
    draws = [suggest(study.ask(), space)["x"] for _ in range(30)]
    assert all(holds(v) for v in draws), draws
    assert len(set(map(repr, draws))) > 1  # the sampler really varied the value


def test_suggest_categorical_draws_every_choice() -> None:
    choices = ["adam", "adamax", "sgd"]
    space = make_space({"optimizer": {"type": "categorical", "choices": choices}})
    study = random_study()
    assert {suggest(study.ask(), space)["optimizer"] for _ in range(50)} == set(choices)


@pytest.mark.parametrize(
    "raw",
    [
        {
            "module__hidden1": {"type": "int", "low": 8, "high": 256, "log": True},
            "module__hidden2": {"type": "int", "low": 4, "high": "module__hidden1", "log": True},
        },
        {
            "module__hidden1": {"type": "int", "low": 8, "high": 64, "step": 8},
            "module__hidden2": {"type": "int", "low": 8, "high": "module__hidden1", "step": 8},
        },
    ],
    ids=["log", "step"],
)
def test_suggest_bound_naming_earlier_parameter_always_holds(raw: dict[str, Any]) -> None:
    space = make_space(raw)
    study = random_study()
    pairs = [suggest(study.ask(), space) for _ in range(50)]
    assert all(p["module__hidden2"] <= p["module__hidden1"] for p in pairs)
    # The bound is not trivially met by a narrow range: hidden2 takes large values too.
    assert max(p["module__hidden2"] for p in pairs) > 16


def test_suggest_float_low_naming_earlier_parameter_holds() -> None:
    space = make_space(
        {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "optimizer__weight_decay": {"type": "float", "low": "lr", "high": 1e-1, "log": True},
        }
    )
    study = random_study()
    for _ in range(50):
        values = suggest(study.ask(), space)
        assert values["lr"] <= values["optimizer__weight_decay"] <= 1e-1


def test_suggest_values_are_keyed_by_spec_names_and_equal_trial_params() -> None:
    space = make_space(
        {
            "module__hidden1": {"type": "int", "low": 8, "high": 32},
            "module__hidden2": {"type": "int", "low": 4, "high": "module__hidden1"},
            "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        }
    )
    study = optuna.create_study()
    for _ in range(5):
        trial = study.ask()
        values = suggest(trial, space)
        assert list(values) == list(space)
        assert values == trial.params


def test_suggest_follows_enqueued_point() -> None:
    space = make_space(
        {
            "module__hidden1": {"type": "int", "low": 8, "high": 32},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        }
    )
    study = optuna.create_study()
    study.enqueue_trial({"module__hidden1": 17, "optimizer": "sgd"})
    assert suggest(study.ask(), space) == {"module__hidden1": 17, "optimizer": "sgd"}


# --- expand_grid / grid_points -------------------------------------------------------------


def test_grid_is_the_product_in_declaration_order() -> None:
    space = make_space(
        {
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
            "module__hidden1": {"type": "int", "low": 8, "high": 24, "step": 8},
            "module__dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.5},
        }
    )
    expected = [
        {"optimizer": o, "module__hidden1": h, "module__dropout": d}
        for o in ("adam", "sgd")
        for h in (8, 16, 24)
        for d in (0.0, 0.5)
    ]
    assert grid_points(space) == expected
    assert list(expand_grid(space)) == expected
    assert [list(point) for point in expected] == [list(space)] * len(expected)


@pytest.mark.parametrize(
    ("low", "high", "step", "values"),
    [
        (0.0, 0.5, 0.1, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]),
        (0.1, 0.7, 0.2, [0.1, 0.3, 0.5, 0.7]),
        (0.0, 1.0, 0.25, [0.0, 0.25, 0.5, 0.75, 1.0]),
        (1e-3, 4e-3, 1e-3, [1e-3, 2e-3, 3e-3, 4e-3]),
        (0.0, 1.0, 0.3, [0.0, 0.3, 0.6, 0.9]),  # high not on the step grid: left out
        (0.2, 0.2, 0.1, [0.2]),
    ],
)
def test_float_grid_has_both_ends_and_no_drift(
    low: float, high: float, step: float, values: list[float]
) -> None:
    space = make_space({"x": {"type": "float", "low": low, "high": high, "step": step}})
    grid = [point["x"] for point in grid_points(space)]
    # Exact equality: 0.30000000000000004 != 0.3, so float drift fails here.
    assert grid == values
    assert all(type(v) is float for v in grid)


@pytest.mark.parametrize(
    ("raw", "values"),
    [
        ({"type": "int", "low": 1, "high": 4}, [1, 2, 3, 4]),
        ({"type": "int", "low": 0, "high": 10, "step": 3}, [0, 3, 6, 9]),
        ({"type": "int", "low": 16, "high": 64, "step": 16}, [16, 32, 48, 64]),
        ({"type": "categorical", "choices": [True, False, None]}, [True, False, None]),
    ],
)
def test_int_and_categorical_grid_values(raw: dict[str, Any], values: list[Any]) -> None:
    assert [point["x"] for point in grid_points(make_space({"x": raw}))] == values


def test_grid_bound_naming_earlier_parameter_cuts_points() -> None:
    space = make_space(
        {
            "module__hidden1": {"type": "int", "low": 8, "high": 32, "step": 8},
            "module__hidden2": {"type": "int", "low": 8, "high": "module__hidden1", "step": 8},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        }
    )
    points = grid_points(space)
    # hidden1 = 8, 16, 24, 32 leaves 1, 2, 3, 4 values of hidden2; times 2 optimizers.
    assert len(points) == (1 + 2 + 3 + 4) * 2
    assert all(p["module__hidden2"] <= p["module__hidden1"] for p in points)
    assert {(p["module__hidden1"], p["module__hidden2"]) for p in points} == {
        (h1, h2) for h1 in (8, 16, 24, 32) for h2 in (8, 16, 24, 32) if h2 <= h1
    }
    assert len({tuple(p.values()) for p in points}) == len(points)  # no duplicates


def test_grid_low_naming_earlier_float_parameter_cuts_points() -> None:
    space = make_space(
        {
            "a": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
            "b": {"type": "float", "low": "a", "high": 0.3, "step": 0.1},
        }
    )
    points = grid_points(space)
    assert len(points) == 4 + 3 + 2 + 1
    assert all(p["a"] <= p["b"] + 1e-12 for p in points)


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        ({"type": "float", "low": 0.0, "high": 0.5}, ["space.x", "step"]),
        ({"type": "float", "low": 1e-4, "high": 1e-1, "log": True}, ["space.x", "step"]),
        ({"type": "int", "low": 8, "high": 256, "log": True}, ["space.x", "log", "step"]),
    ],
    ids=["float-no-step", "float-log", "int-log"],
)
def test_grid_size_error_names_the_parameter_and_the_fix(
    raw: dict[str, Any], fragments: list[str]
) -> None:
    param = PARAM.validate_python(raw)
    error = grid_size_error("x", param)
    assert error is not None
    for fragment in fragments:
        assert fragment in error
    with pytest.raises(ValueError):
        grid_points({"x": param})


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
        {"type": "int", "low": 8, "high": 256},
        {"type": "int", "low": 8, "high": 256, "step": 8},
        {"type": "categorical", "choices": ["adam", "sgd"]},
    ],
)
def test_grid_size_error_is_none_for_finite_params(raw: dict[str, Any]) -> None:
    assert grid_size_error("x", PARAM.validate_python(raw)) is None


# --- parameter models ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "fragments"),
    [
        (
            IntParam,
            {"type": "int", "low": 64, "high": 8},
            ["`low <= high` must hold", "low=64", "high=8"],
        ),
        (
            FloatParam,
            {"type": "float", "low": 0.5, "high": 0.1},
            ["`low <= high` must hold", "low=0.5", "high=0.1"],
        ),
        (
            FloatParam,
            {"type": "float", "low": 0.0, "high": 0.1, "log": True},
            ["log scale needs low > 0", "low=0"],
        ),
        (
            IntParam,
            {"type": "int", "low": -4, "high": 8, "log": True},
            ["log scale needs low > 0", "low=-4"],
        ),
        (
            IntParam,
            {"type": "int", "low": 8, "high": 64, "log": True, "step": 8},
            ["`step` and `log` cannot be combined"],
        ),
        (
            FloatParam,
            {"type": "float", "low": 1e-3, "high": 1e-1, "log": True, "step": 1e-3},
            ["`step` and `log` cannot be combined"],
        ),
        (
            FloatParam,
            {"type": "float", "low": 1.0, "high": 10.0, "log": True, "step": 1.0},
            ["`step` and `log` cannot be combined"],
        ),
        (
            IntParam,
            {"type": "int", "low": 8, "high": 64, "step": 0},
            ["`step` must be > 0", "step=0"],
        ),
        (
            FloatParam,
            {"type": "float", "low": 0.0, "high": 1.0, "step": -0.1},
            ["`step` must be > 0", "step=-0.1"],
        ),
    ],
)
def test_param_rules_raise_with_rule_and_values(
    cls: type[IntParam | FloatParam], kwargs: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(ValidationError) as info:
        cls(**kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    # The discriminated union a spec goes through reports the same rule.
    with pytest.raises(ValidationError, match=fragments[0].replace("`", ".")):
        PARAM.validate_python(kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"type": "int", "low": 8, "high": 8},
        {"type": "int", "low": 8, "high": 256, "log": True},  # default step 1 is fine with log
        {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        {"type": "float", "low": -1.0, "high": 1.0, "step": 0.5},
        {"type": "int", "low": 4, "high": "module__hidden1"},  # checked once the bound is known
    ],
)
def test_param_rules_accept_valid_ranges(kwargs: dict[str, Any]) -> None:
    param = PARAM.validate_python(kwargs)
    assert param.low == kwargs["low"] and param.high == kwargs["high"]


def test_categorical_needs_at_least_one_choice() -> None:
    with pytest.raises(ValidationError, match="at least 1"):
        CategoricalParam(type="categorical", choices=[])


@pytest.mark.parametrize(
    ("choices", "said"),
    [
        (["adam", "adam", "sgd"], "choice 'adam' is given twice; give each choice once"),
        ([32, 64, 32, 32], "choice 32 is given 3 times; give each choice once"),
        ([None, None], "choice None is given twice"),
        ([1, 1.0], "choice 1 is given twice, as 1 and 1.0: one value to Optuna"),
        ([1, True], "choice 1 is given twice, as 1 and True"),
        ([False, 0.0], "choice False is given twice, as False and 0.0"),
    ],
)
def test_a_choice_is_given_once(choices: list[Any], said: str) -> None:
    """Optuna stores a choice by its first index of an equal value, so a repeat is a grid
    point run twice and a value drawn twice as often."""
    with pytest.raises(ValidationError, match=re.escape(said)):
        CategoricalParam(type="categorical", choices=choices)


def test_choices_that_optuna_tells_apart_are_kept() -> None:
    choices = ["1", 1, 2.5, None, "adam", "Adam", False, ""]
    assert CategoricalParam(type="categorical", choices=choices).choices == choices


def test_references_lists_bounds_that_name_parameters() -> None:
    assert PARAM.validate_python({"type": "int", "low": "a", "high": "b"}).references() == [
        "a",
        "b",
    ]
    assert PARAM.validate_python({"type": "float", "low": 0.0, "high": 1.0}).references() == []
    assert PARAM.validate_python({"type": "categorical", "choices": ["a"]}).references() == []


# --- grid_size (issue 15) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        {"x": {"type": "int", "low": 1, "high": 4}},
        {"x": {"type": "int", "low": 0, "high": 10, "step": 3}},
        {"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.3}},
        {"x": {"type": "float", "low": 0.2, "high": 0.2, "step": 0.1}},
        {
            "a": {"type": "categorical", "choices": ["adam", "sgd", "adamw"]},
            "b": {"type": "int", "low": 8, "high": 24, "step": 8},
            "c": {"type": "float", "low": 1e-3, "high": 4e-3, "step": 1e-3},
        },
        {},
    ],
)
def test_grid_size_is_exact_without_references(raw: dict[str, Any]) -> None:
    space = make_space(raw)
    assert grid_size(space) == len(grid_points(space))


def test_grid_size_bounds_a_cut_grid_by_its_box() -> None:
    space = make_space(
        {
            "a": {"type": "int", "low": 8, "high": 32, "step": 8},
            "b": {"type": "int", "low": 8, "high": "a", "step": 8},
        }
    )
    assert len(grid_points(space)) == 10
    assert grid_size(space) == 16


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        ({"x": {"type": "int", "low": 1, "high": 10**12}}, 10**12),
        (
            {
                "x": {"type": "int", "low": 1, "high": 10**6},
                "y": {"type": "int", "low": 1, "high": 10**6},
            },
            10**12,
        ),
        ({"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 1e-12}}, 10**12 + 1),
    ],
    ids=["int-1e12", "product-1e12", "float-1e12"],
)
def test_grid_size_counts_huge_grids_without_expanding(raw: dict[str, Any], size: int) -> None:
    assert grid_size(make_space(raw)) == size  # instant; expanding would need terabytes


def test_grid_size_of_an_overflowing_float_range_is_past_any_cap() -> None:
    space = make_space({"x": {"type": "float", "low": -1e308, "high": 1e308, "step": 1.0}})
    assert grid_size(space) > 10**300


def test_expand_grid_is_lazy_for_a_huge_range() -> None:
    space = make_space({"x": {"type": "int", "low": 1, "high": 10**15}})
    first = next(expand_grid(space))
    assert first == {"x": 1}
    space = make_space({"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 1e-15}})
    assert next(expand_grid(space)) == {"x": 0.0}


def test_grid_size_refuses_a_param_without_a_finite_grid() -> None:
    with pytest.raises(ValueError):
        grid_size(make_space({"x": {"type": "float", "low": 0.0, "high": 1.0}}))


def test_grid_points_skip_a_warm_start_written_with_other_rounding() -> None:
    space = {
        "lr": FloatParam(type="float", low=0.1, high=0.5, step=0.1),
        "module__hidden1": IntParam(type="int", low=8, high=16, step=8),
    }
    warm = {"lr": 0.1 + 0.2, "module__hidden1": 16.0}  # 0.30000000000000004, and 16 as a float
    points = grid_points(space, skip=[warm])
    assert len(points) == len(grid_points(space)) - 1 == 9
    assert {"lr": 0.3, "module__hidden1": 16} not in points
    assert point_key({"x": True}) != point_key({"x": 1})
