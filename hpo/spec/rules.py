"""What values hpo accepts, as plain data (no torch): the bounds no machine can honour past,
and the values the net parameters hpo knows may take.

The bounds (``Bound``: the most, and why no more) are the one place that says how large a
number or a file may be: a study's trials, folds, timeout and grid, a worker's heartbeat, a
net's epochs, units and batch size, and the files hpo reads (a study file, a password file, a
dataset). Each refusal quotes the bound and its reason (``Bound.refusal``).

A spec's ``fixed:`` values, its categorical choices and its int/float ranges in ``space:`` are
checked against ``RULES`` by ``hpo.spec.study_spec``, so that ``batch_size: two``, a dropout of
1.5 or a layer of 10**8 units is refused when the study is registered, not after it has burned
trials. Keys not in the table (a user module's ``module__*``, ``criterion__*``, most
``optimizer__*``) are passed through unchecked; ``module__*`` rules apply to the built-in
models only (``hpo.engine.models``).
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple


class Bound(NamedTuple):
    """The most a value may be, and why nothing larger can be honoured.

    Attributes:
        most: The largest value accepted.
        why: The reason, as a clause that ends a message.
        unit: How ``most`` is counted: ``""`` (a number), ``"s"`` or ``"bytes"``.
    """

    most: int | float
    why: str
    unit: str = ""

    def refusal(self, value: Any = None) -> str:
        """``"must be at most 100 (…why…), got 1e+30"``; without ``value``, no ``got``."""
        got = "" if value is None else f", got {shown(value, self.unit)}"
        return f"must be at most {shown(self.most, self.unit)}{got}: {self.why}"


def shown(value: Any, unit: str = "") -> str:
    """A number for a message, short however large: ``1,000,000``, ``about 10^5000``,
    ``1e+308 s``, ``1 MiB``."""
    if unit == "bytes" and isinstance(value, int):
        for size, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if value >= size:
                return f"{value / size:.3g} {name}"
        return f"{value} bytes"
    suffix = f" {unit}" if unit else ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = repr(value)
        return (text if len(text) <= 40 else text[:37] + "...") + suffix
    if isinstance(value, int):
        digits = len(str(abs(value))) if abs(value) < 10**4000 else int(math.log10(abs(value)))
        text = f"{value:,}" if digits <= 15 else f"about 10^{digits - 1}"
        return text + suffix
    return f"{value:g}{suffix}"


_DAY = 86_400

#: A study's budget (``budget.trials``, ``--trials``).
TRIALS = Bound(
    1_000_000,
    "Optuna's samplers read every finished trial of a study to draw the next one, so past a "
    "million trials each draw outlasts the trial it starts",
)
#: ``cv.folds``.
FOLDS = Bound(
    100,
    "each fold is a net fitted in every trial; past 100 a trial is a hundred fits, and the "
    "held-out folds of any dataset hpo loads are too small to score",
)
#: ``budget.timeout``.
TIMEOUT = Bound(
    366 * _DAY,
    "the study's clock, which no worker outlasts past a year (and a clock cannot count to "
    "1e308 s); leave timeout out for none",
    "s",
)
#: ``--heartbeat``, ``$HPO_HEARTBEAT``.
HEARTBEAT = Bound(
    _DAY,
    "a killed worker's trial runs again once its heartbeat is twice this late, so a longer "
    "one leaves it waiting for days (and a clock cannot count to 1e308 s); 0 turns "
    "heartbeats off",
    "s",
)
#: ``max_epochs``.
EPOCHS = Bound(
    100_000,
    "a fit of more epochs runs for days on any dataset hpo loads; it would train until killed",
)
#: The units (or channels) of one layer of a built-in model.
UNITS = Bound(
    100_000,
    "a layer of more units holds more weights than a GPU's memory as soon as its neighbour "
    "is as wide",
)
#: ``batch_size``.
BATCH_SIZE = Bound(
    10_000_000,
    "a batch is held in memory at once, and no dataset hpo loads has more rows; -1 takes the "
    "whole training fold",
)
#: The points of a grid, and of the ``enqueue:`` list.
GRID_POINTS = Bound(
    10_000,
    "each point is a trial written to the storage at registration (about 5 ms each on SQLite, "
    "a minute for 10,000) and then run in full; search a larger space with the random or tpe "
    "sampler",
)
#: A study file.
SPEC_BYTES = Bound(2**20, "a study file is a page of YAML", "bytes")
#: The values of a study file once its YAML aliases are expanded.
SPEC_NODES = Bound(
    100_000,
    "a study file holds a few hundred values; YAML aliases (*name) can make a small file "
    "expand to billions, which would take minutes to read",
)
#: How deep a study file's mappings and lists may nest.
SPEC_DEPTH = Bound(50, "a study file nests four levels deep, and Python's reader recurses")
#: One value of ``hpo enqueue NAME key=value``, in characters.
ASSIGNMENT_CHARS = Bound(100, "a value is one number or name")
#: A password file (``$HPO_STORAGE_PASSWORD_FILE``).
PASSWORD_BYTES = Bound(2**16, "a password file holds one line", "bytes")
#: The rows of ``synthetic_regression`` (``n_train``, ``n_test``).
SYNTHETIC_ROWS = Bound(
    10_000_000,
    "the points are drawn in memory whole (about 40 bytes a point while they are made), and a "
    "net fits every one of them each epoch",
)
#: A dataset's file, and the arrays an ``.npz`` file unpacks to.
DATA_BYTES = Bound(
    32 * 2**30,
    "hpo holds a dataset in memory whole (as float32, copied a few times while it loads)",
    "bytes",
)

#: The most units (or channels) one layer of a built-in model may have.
MAX_UNITS = int(UNITS.most)


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
        why: Why nothing above ``high`` is accepted (a ``Bound``'s reason), or ``""``.
    """

    kind: Literal["int", "float"]
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    also: tuple[tuple[Any, str], ...] = ()
    why: str = ""


_LAYER = Rule("int", 1, MAX_UNITS, nullable=True, why=UNITS.why)

#: The rule of every net parameter hpo knows the type of, by its ``set_params`` key.
RULES: dict[str, Rule] = {
    "lr": Rule("float", 0, low_open=True),
    "batch_size": Rule(
        "int",
        1,
        BATCH_SIZE.most,
        also=((-1, "the whole training fold in one batch"),),
        why=BATCH_SIZE.why,
    ),
    "max_epochs": Rule("int", 1, EPOCHS.most, why=EPOCHS.why),
    "early_stopping_patience": Rule("int", 1, also=((None, "no early stopping"),)),
    "validation_fraction": Rule("float", 0, 1, low_open=True, high_open=True),
    "optimizer__weight_decay": Rule("float", 0),
    "module__dropout": Rule("float", 0, 1, high_open=True),
    **{f"module__hidden{i}": _LAYER for i in range(1, 7)},
    "module__units": _LAYER,
    "module__depth": Rule("int", 1, 1000, nullable=True),
    "module__conv1": Rule("int", 1, MAX_UNITS, why=UNITS.why),
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
        above = rule.why and rule.high is not None and value > rule.high
        return f"must be {describe(rule)}, got {shown(value)}" + (f": {rule.why}" if above else "")
    return None
