"""Search spaces: the spec's parameters as Optuna distributions, sampled or expanded to a grid.

A bound may name an earlier parameter (``high: module__hidden1``); it is resolved against the
values already drawn for the trial, so ``module__hidden2 <= module__hidden1`` always holds.

A parameter may exist only under a condition on earlier ones (``when``), as Optuna's
define-by-run spaces allow: ``optimizer__momentum: {..., when: {optimizer: sgd}}`` is drawn
only for the trials that drew sgd, ``module__hidden3: {..., when: {module__depth: {min: 3}}}``
only for depths of 3 or more. A condition maps earlier parameters to what they must be, all at
once: a value, a list of values (any of them), or ``{min: a, max: b}`` (a number in between;
either end may be left out). A trial whose conditions do not hold has no such parameter: its
net keeps the constructor's default, its row of ``best_params.csv`` leaves it empty, and a
grid expands only the combinations where it holds, each exactly once (``expand_grid``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any, Literal

import numpy as np
import optuna
from pydantic import BaseModel, ConfigDict, Field, model_validator

Bound = float | str

#: A value a parameter may take, as YAML gives it.
Scalar = None | bool | int | float | str


class ValueRange(BaseModel):
    """``{min: a, max: b}`` in a condition: a number from ``a`` to ``b``, both included; either
    end may be left out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _check_ends(self) -> ValueRange:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both, e.g. {min: 3}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"`min <= max` must hold, but got (min={self.min}, max={self.max})")
        return self

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is a number in the range."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


#: What a condition asks of one earlier parameter: a range, any of several values, or a value.
Condition = ValueRange | list[Scalar] | Scalar


def condition_met(condition: Condition, value: Any) -> bool:
    """Whether a parameter's ``value`` meets ``condition`` (values compared as a grid compares
    them, ``value_key``: ``64`` is ``64.0``, ``true`` is not ``1``)."""
    if isinstance(condition, ValueRange):
        return condition.holds(value)
    if isinstance(condition, list):
        return any(value_key(value) == value_key(wanted) for wanted in condition)
    return bool(value_key(value) == value_key(condition))


def conditions_hold(when: Mapping[str, Condition] | None, values: Mapping[str, Any]) -> bool:
    """Whether every condition of ``when`` holds for the values drawn so far; a parameter that
    was not drawn (its own condition failed) meets none."""
    if not when:
        return True
    return all(key in values and condition_met(c, values[key]) for key, c in when.items())


def describe_when(when: Mapping[str, Condition]) -> str:
    """``optimizer: sgd, module__depth: >= 3``, for messages."""
    parts = []
    for key, condition in when.items():
        if isinstance(condition, ValueRange):
            ends = [f">= {condition.min:g}"] if condition.min is not None else []
            ends += [f"<= {condition.max:g}"] if condition.max is not None else []
            parts.append(f"{key}: {' and '.join(ends)}")
        elif isinstance(condition, list):
            parts.append(f"{key}: one of {', '.join(map(str, condition))}")
        else:
            parts.append(f"{key}: {condition}")
    return ", ".join(parts)


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The conditions on earlier parameters under which this one exists; None: always.
    when: dict[str, Condition] | None = None

    @model_validator(mode="after")
    def _check_when(self) -> _Param:
        if self.when is not None and not self.when:
            raise ValueError("`when` is empty; give a condition, e.g. when: {optimizer: sgd}")
        return self

    def references(self) -> list[str]:
        """Names of earlier parameters this one's bounds refer to."""
        return [
            b
            for b in (getattr(self, "low", None), getattr(self, "high", None))
            if isinstance(b, str)
        ]


class _RangeParam(_Param):
    low: Bound
    high: Bound
    log: bool = False

    @model_validator(mode="after")
    def _check_range(self) -> _RangeParam:
        step = getattr(self, "step", None)
        if isinstance(self.low, float | int) and isinstance(self.high, float | int):
            if self.low > self.high:
                raise ValueError(
                    f"`low <= high` must hold, but got (low={self.low}, high={self.high}); "
                    "swap them"
                )
        if self.log and isinstance(self.low, float | int) and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0, but got low={self.low}")
        int_default_step = isinstance(self, IntParam) and step == 1
        if self.log and step is not None and not int_default_step:
            raise ValueError("`step` and `log` cannot be combined; drop one of them")
        if step is not None and step <= 0:
            raise ValueError(f"`step` must be > 0, but got step={step}")
        return self


class IntParam(_RangeParam):
    """An integer in [low, high], optionally on a log scale or a step grid."""

    type: Literal["int"]
    low: int | str
    high: int | str
    step: int = 1


class FloatParam(_RangeParam):
    """A float in [low, high], optionally on a log scale or a step grid."""

    type: Literal["float"]
    step: float | None = None


class CategoricalParam(_Param):
    """One of a list of choices (numbers, strings, booleans or null), each given once.

    Choices are told apart as Optuna tells them apart when it stores one (by ``==``): ``1``,
    ``1.0`` and ``true`` are one choice, and so are ``0``, ``0.0`` and ``false``. A repeated
    choice would be a grid point run twice, and drawn twice as often by the other samplers.
    """

    type: Literal["categorical"]
    choices: list[None | bool | int | float | str] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_choices_once(self) -> CategoricalParam:
        given: dict[Any, list[Any]] = {}  # the first choice of each value: how it was given
        for choice in self.choices:
            given.setdefault(choice, []).append(choice)  # (a NaN is refused elsewhere)
        repeats = [spellings for spellings in given.values() if len(spellings) > 1]
        if repeats:
            raise ValueError(
                "; ".join(_repeat_problem(spellings) for spellings in repeats)
                + "; give each choice once"
            )
        return self


def _repeat_problem(spellings: list[Any]) -> str:
    times = "twice" if len(spellings) == 2 else f"{len(spellings)} times"
    written = list(dict.fromkeys(f"{spelling!r}" for spelling in spellings))
    if len(written) == 1:
        return f"choice {written[0]} is given {times}"
    listed = ", ".join(written[:-1]) + f" and {written[-1]}"
    return (
        f"choice {written[0]} is given {times}, as {listed}: one value to Optuna, which "
        "stores a choice found by == (1, 1.0 and true are one; so are 0, 0.0 and false)"
    )


Param = Annotated[IntParam | FloatParam | CategoricalParam, Field(discriminator="type")]


def _resolve(bound: Bound, values: Mapping[str, Any]) -> Any:
    return values[bound] if isinstance(bound, str) else bound


def suggest(trial: optuna.Trial, space: Mapping[str, Param]) -> dict[str, Any]:
    """Draw every parameter of ``space`` in order, resolving bounds that name earlier ones.

    Returns:
        The drawn values, keyed by the spec's parameter names (skorch ``set_params`` keys); a
        parameter whose ``when`` does not hold for the values drawn before it is left out.
    """
    values: dict[str, Any] = {}
    for name, param in space.items():
        if not conditions_hold(param.when, values):
            continue  # this trial has no such parameter
        if isinstance(param, CategoricalParam):
            values[name] = trial.suggest_categorical(name, param.choices)
            continue
        low, high = _resolve(param.low, values), _resolve(param.high, values)
        if isinstance(param, IntParam):
            values[name] = trial.suggest_int(
                name, int(low), int(high), step=param.step, log=param.log
            )
        else:
            values[name] = trial.suggest_float(
                name, float(low), float(high), step=param.step, log=param.log
            )
    return values


def _float_count(low: float, high: float, step: float) -> int:
    """How many values ``low, low + step, ...`` stay <= ``high`` (0 when high < low)."""
    if high < low:
        return 0
    steps = (high - low) / step
    if not math.isfinite(steps):
        return _HUGE  # (high - low) overflowed; far beyond any grid
    return int(math.floor(steps + 1e-9)) + 1


#: A count past every cap, for a float range too wide to divide into steps.
_HUGE = 10**400


def _grid_values(param: Param, low: Any, high: Any) -> Iterable[Any]:
    """The values ``param`` takes on the grid, lazily: a range of 10**9 ints costs nothing."""
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    if isinstance(param, IntParam):
        if param.log:
            raise ValueError("an int on a log scale has no grid; give a step instead of log")
        return range(int(low), int(high) + 1, param.step)
    step = param.step
    if step is None:
        raise ValueError("a float range needs `step` to form a grid")
    count = _float_count(low, high, step)
    # One value at a time, with the same arithmetic as ``np.round(low + step * np.arange(n))``.
    return (float(np.round(low + step * np.float64(i), 12)) for i in range(count))


def grid_size(space: Mapping[str, Param]) -> int:
    """An upper bound on the number of grid points, counted without expanding the grid.

    Exact when no bound names another parameter; a bound naming one is taken at the widest
    that parameter allows, so a cut grid counts as its uncut box (``expand_grid`` then gives
    the exact number), and a conditional parameter counts its values plus its absence. A
    parameter with no finite grid (see ``grid_size_error``) raises ``ValueError``.
    """
    extent: dict[str, tuple[float, float]] = {}  # each numeric parameter's widest [low, high]
    total = 1
    for name, param in space.items():
        absent = 1 if param.when else 0  # a conditional parameter's points without it
        if isinstance(param, CategoricalParam):
            total *= len(param.choices) + absent
            continue
        low = extent[param.low][0] if isinstance(param.low, str) else param.low
        high = extent[param.high][1] if isinstance(param.high, str) else param.high
        extent[name] = (low, high)
        if isinstance(param, IntParam):
            if param.log:
                raise ValueError("an int on a log scale has no grid; give a step instead of log")
            count = max(0, (int(high) - int(low)) // param.step + 1)
        elif param.step is None:
            raise ValueError("a float range needs `step` to form a grid")
        else:
            count = _float_count(low, high, param.step)
        total *= count + absent
    return total


def grid_size_error(name: str, param: Param) -> str | None:
    """Why ``param`` cannot be part of a grid, or None when it can."""
    if isinstance(param, FloatParam) and param.step is None:
        return f"space.{name}: a grid needs a finite set of values; give this float a `step`"
    if isinstance(param, IntParam) and param.log:
        return f"space.{name}: a grid cannot walk a log scale; drop `log` and give a `step`"
    return None


def expand_grid(space: Mapping[str, Param]) -> Iterator[dict[str, Any]]:
    """Every point of the grid over ``space``, in order; bounds naming earlier parameters cut
    the points where they would not hold, and a parameter whose ``when`` does not hold is
    absent from the point (one point for all its values, not one per value)."""

    def expand(names: list[str], values: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if not names:
            yield dict(values)
            return
        name, rest = names[0], names[1:]
        param = space[name]
        if not conditions_hold(param.when, values):
            yield from expand(rest, values)
            return
        low = _resolve(getattr(param, "low", 0), values)
        high = _resolve(getattr(param, "high", 0), values)
        for value in _grid_values(param, low, high):
            values[name] = value
            yield from expand(rest, values)
        values.pop(name, None)

    yield from expand(list(space), {})


def grid_points(
    space: Mapping[str, Param], skip: Iterable[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    """The whole grid as a list (see ``expand_grid``), less the points equal to one of
    ``skip`` (a spec's ``enqueue:`` list: a warm start that is a grid point runs once)."""
    skipped = {point_key(point) for point in skip}
    return [point for point in expand_grid(space) if point_key(point) not in skipped]


def point_key(point: Mapping[str, Any]) -> tuple[Any, ...]:
    """A hashable key that equal points share, each value by ``value_key``."""
    return tuple(sorted((str(key), value_key(value)) for key, value in point.items()))


def value_key(value: Any) -> Any:
    """A hashable key that equal values of a point share: numbers to 12 significant digits
    (the grid's ``0.1 + 2 * 0.1`` is the ``0.3`` a user writes; ``64`` is ``64.0``); a bool
    stays apart from 1 and 0 (a categorical's choices never hold both)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return (type(value).__name__, value)
    return ("number", float(f"{value:.12g}"))
