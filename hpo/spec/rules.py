"""What values the net parameters hpo knows may take, as plain data (no torch).

A spec's ``fixed:`` values, its categorical choices and its int/float ranges in ``space:`` are
checked against ``RULES`` by ``hpo.spec.study_spec``, so that ``batch_size: two``, a dropout of
1.5 or a layer of 10**8 units is refused when the study is registered, not after it has burned
trials. Keys not in the table (a user module's ``module__*``, ``criterion__*``, most
``optimizer__*``) are passed through unchecked; ``module__*`` rules apply to the built-in
models only (``hpo.engine.models``).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

#: The most units (or channels) one layer of a built-in model may have.
MAX_UNITS = 100_000


class Rule(NamedTuple):
    """The values one parameter may take.

    Attributes:
        kind: ``int`` (a whole number; YAML's true/false and ``2.0`` are not) or ``float``
            (any real number; ints are fine).
        low: The smallest value, or None for no minimum.
        high: The largest value, or None for no maximum.
        low_open: Whether ``low`` itself is refused (``lr > 0``).
        high_open: Whether ``high`` itself is refused (``dropout < 1``).
        nullable: Whether null is accepted (the model's default, e.g. no second layer).
        also: Values accepted besides the range, in ``fixed:`` and choices only (a range
            cannot reach them), each with what it means.
    """

    kind: Literal["int", "float"]
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    also: tuple[tuple[Any, str], ...] = ()


_LAYER = Rule("int", 1, MAX_UNITS, nullable=True)

#: The rule of every net parameter hpo knows the type of, by its ``set_params`` key.
RULES: dict[str, Rule] = {
    "lr": Rule("float", 0, low_open=True),
    "batch_size": Rule("int", 1, also=((-1, "the whole training fold in one batch"),)),
    "max_epochs": Rule("int", 1),
    "early_stopping_patience": Rule("int", 1, also=((None, "no early stopping"),)),
    "validation_fraction": Rule("float", 0, 1, low_open=True, high_open=True),
    "optimizer__weight_decay": Rule("float", 0),
    "module__dropout": Rule("float", 0, 1, high_open=True),
    **{f"module__hidden{i}": _LAYER for i in range(1, 7)},
    "module__units": _LAYER,
    "module__depth": Rule("int", 1, 1000, nullable=True),
    "module__conv1": Rule("int", 1, MAX_UNITS),
    "module__conv2": _LAYER,
    "module__conv3": _LAYER,
    "module__kernel_size": Rule("int", 1, 1000),
}


def describe(rule: Rule) -> str:
    """What ``rule`` asks for, in words: ``a whole number from 1 to 100000 (or null)``."""
    noun = "a whole number" if rule.kind == "int" else "a number"
    if rule.low is not None and rule.high is not None:
        if rule.low_open or rule.high_open:
            left, right = "(" if rule.low_open else "[", ")" if rule.high_open else "]"
            text = f"{noun} in {left}{rule.low:g}, {rule.high:g}{right}"
        else:
            text = f"{noun} from {rule.low:g} to {rule.high:g}"
    elif rule.low is not None:
        text = f"{noun} {'>' if rule.low_open else '>='} {rule.low:g}"
    elif rule.high is not None:
        text = f"{noun} {'<' if rule.high_open else '<='} {rule.high:g}"
    else:
        text = noun
    extras = [
        f"{'null' if value is None else value} for {meaning}" for value, meaning in rule.also
    ]
    if rule.nullable:
        extras.append("null for the model's default")
    return text + (f" (or {'; or '.join(extras)})" if extras else "")


def within(rule: Rule, value: float) -> bool:
    """Whether the number ``value`` lies in ``rule``'s range (``also`` values aside)."""
    if rule.low is not None and (value < rule.low or (rule.low_open and value == rule.low)):
        return False
    return rule.high is None or not (value > rule.high or (rule.high_open and value == rule.high))


def value_problem(rule: Rule, value: Any) -> str | None:
    """Why ``value`` breaks ``rule``, or None. NaN and infinities are left to the caller."""
    if any(value == extra and type(value) is type(extra) for extra, _ in rule.also):
        return None
    if value is None:
        return None if rule.nullable else f"must be {describe(rule)}, got null"
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number or (rule.kind == "int" and not isinstance(value, int)):
        return f"must be {describe(rule)}, got {value!r}"
    if not within(rule, value):
        return f"must be {describe(rule)}, got {value!r}"
    return None
