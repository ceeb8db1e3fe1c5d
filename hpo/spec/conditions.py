"""The rules a spec's conditional parameters (``when``) must follow, checked at registration.

Each is one message naming the key (``hpo.spec.spaces`` says what a condition is):

- a condition names an earlier parameter of ``space``: not an unknown key, not a later one
  (two parameters that name each other are a cycle), not the parameter itself;
- it does not name a key of ``fixed``, which every trial has with one value, so the condition
  would always hold or never: the parameter is then a fixed key or none;
- some value of the parameter it names can meet it (a choice among the categorical's, a number
  within the range's bounds);
- no bound (``high: module__hidden3``) names a parameter that some trials lack;
- a warm start (``enqueue:``, ``hpo enqueue``) gives exactly the parameters whose conditions
  its own values meet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpo.errors import did_you_mean
from hpo.spec.spaces import (
    CategoricalParam,
    Condition,
    Param,
    ValueRange,
    condition_met,
    conditions_hold,
    describe_when,
)


def condition_problems(space: Mapping[str, Param], fixed: Mapping[str, Any]) -> list[str]:
    """Every problem of the ``when`` conditions of ``space``, one line each."""
    problems: list[str] = []
    names = list(space)
    for position, (name, param) in enumerate(space.items()):
        for ref in param.references():
            if space.get(ref) is not None and space[ref].when:
                problems.append(
                    f"space.{name}: bound {ref!r} exists only when "
                    f"{describe_when(space[ref].when or {})}; bound it by a parameter every "
                    "trial has"
                )
        for key, condition in (param.when or {}).items():
            where = f"space.{name}.when.{key}"
            if key == name:
                problems.append(f"{where}: a parameter cannot depend on itself")
            elif key in fixed:
                problems.append(
                    f"{where}: {key} is fixed ({fixed[key]!r}) for every trial, so this "
                    f"condition always holds or never does; give {name} under fixed (or not "
                    f"at all), or search {key} in space"
                )
            elif key not in space:
                problems.append(
                    f"{where}: no parameter {key!r} in space"
                    f"{did_you_mean(key, names[:position])}; a condition names an earlier "
                    "parameter of space"
                )
            elif names.index(key) > position:
                if name in (space[key].when or {}):
                    problems.append(
                        f"{where}: {name} and {key} each exist only under a condition on the "
                        "other, a cycle; let one of them exist always"
                    )
                else:
                    problems.append(
                        f"{where}: {key} comes after {name} in space; a condition names an "
                        f"earlier parameter, so move {key} above {name}"
                    )
            elif not _can_meet(condition, space[key]):
                problems.append(
                    f"{where}: no value of {key} meets {describe_when({key: condition})}, so "
                    f"{name} would never be drawn; {_what_it_takes(space[key])}"
                )
    return problems


def absent_from(point: Mapping[str, Any], space: Mapping[str, Param]) -> list[str]:
    """The parameters of ``space`` that a point with these values does not have: those whose
    conditions its values do not meet."""
    return [name for name, param in space.items() if not conditions_hold(param.when, point)]


def point_problems(where: str, point: Mapping[str, Any], space: Mapping[str, Param]) -> list[str]:
    """A warm start's problem with the conditions: a parameter given although its conditions
    do not hold for the point's values."""
    return [
        f"{where}.{name}: given, but exists only when {describe_when(space[name].when or {})}, "
        "which this point's values do not meet; leave it out"
        for name in absent_from(point, space)
        if name in point
    ]


def _can_meet(condition: Condition, param: Param) -> bool:
    if isinstance(param, CategoricalParam):
        return any(condition_met(condition, choice) for choice in param.choices)
    low, high = param.low, param.high
    if isinstance(low, str) or isinstance(high, str):
        return True  # bounds drawn per trial: the trial decides
    if isinstance(condition, ValueRange):
        above_low = condition.max is None or condition.max >= low
        below_high = condition.min is None or condition.min <= high
        return above_low and below_high
    wanted = condition if isinstance(condition, list) else [condition]
    return any(
        isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
        for value in wanted
    )


def _what_it_takes(param: Param) -> str:
    if isinstance(param, CategoricalParam):
        return f"its choices are {', '.join(map(repr, param.choices))}"
    return f"it takes values from {param.low} to {param.high}"
