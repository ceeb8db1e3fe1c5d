"""Warm starts after registration: ``hpo enqueue NAME key=value ...``.

A point is checked exactly as a spec's ``enqueue:`` list is (every parameter of the space
given, each value a choice or inside its range, bounds naming earlier parameters respected),
by validating the registered spec with the point as its only ``enqueue`` entry; it is then
queued with ``study.enqueue_trial``. The worker counts WAITING trials inside the study's
budget (``hpo.service.study.budget_used``), so an enqueued point is one of the budget's
trials, run before any new sample.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from hpo.errors import HpoError, SpecError
from hpo.service.study import QUEUED_ATTR, budget_used, load_study
from hpo.spec.rules import ASSIGNMENT_CHARS
from hpo.spec.study_spec import _SpecLoader, parse_spec


@dataclass(frozen=True)
class Enqueued:
    """A queued point and where it stands against the study's budget.

    Attributes:
        study: The study's name.
        trial: Number of the WAITING trial that holds the point.
        params: The point, skorch ``set_params`` keys.
        budget: The study's trial budget (``budget.trials``).
        taken: Trials that already count against the budget (done, running or waiting,
            this one included; ``budget_used``).
    """

    study: str
    trial: int
    params: dict[str, Any]
    budget: int
    taken: int

    @property
    def within_budget(self) -> bool:
        """Whether a worker run with the spec's budget will reach this point."""
        return self.taken <= self.budget


def parse_assignments(assignments: Iterable[str]) -> dict[str, Any]:
    """``["lr=0.01", "optimizer=adam"]`` -> ``{"lr": 0.01, "optimizer": "adam"}``.

    Each value is read as a YAML scalar, as in a spec file: ``1e-3`` and ``0.01`` are floats,
    ``64`` an int, ``true`` a bool, ``null`` None, anything else a string.

    Raises:
        HpoError: an item is not ``key=value``, a key repeats, or a value is not a scalar.
    """
    params: dict[str, Any] = {}
    problems = []
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"{item!r} is not key=value (e.g. lr=0.01)")
            continue
        if key in params:
            problems.append(f"{key} is given twice")
            continue
        if len(text) > ASSIGNMENT_CHARS.most:
            problems.append(
                f"{key}: a value of {len(text):,} characters; it must be at most "
                f"{ASSIGNMENT_CHARS.most}: {ASSIGNMENT_CHARS.why}"
            )
            continue
        try:
            value = yaml.load(text, Loader=_SpecLoader) if text.strip() else None
        except yaml.YAMLError:
            value = text
        if isinstance(value, dict | list):
            problems.append(f"{key}: give one value, not {text!r}")
            continue
        params[key] = value
    if problems:
        raise HpoError("cannot read the point: " + "; ".join(problems))
    if not params:
        raise HpoError("give the point as key=value pairs, e.g. lr=0.01 optimizer=adam")
    return params


def enqueue_point(
    storage: optuna.storages.BaseStorage, name: str, params: dict[str, Any]
) -> Enqueued:
    """Validate ``params`` against the study's space and queue it as a WAITING trial.

    Raises:
        StudyError: No such study.
        HpoError: The point breaks the space (every problem listed; nothing is queued), or the
            study is a grid, whose budget is exactly its points.
    """
    study, spec = load_study(storage, name)
    if spec.sampler.name == "grid":
        raise HpoError(
            f"study {name!r} is a grid: it runs each of its points once and nothing else. Add "
            "the point to the spec's `enqueue:` list and register it under a new name."
        )
    raw = json.loads(spec.to_json())
    raw["enqueue"] = [params]
    try:
        parse_spec(raw, source=f"hpo enqueue {name}")
    except SpecError as error:
        lines = "\n".join(
            "  - " + p.replace("enqueue[0].", "").replace("enqueue[0]", "the point")
            for p in error.problems
        )
        raise HpoError(
            f"the point does not fit the space of study {name!r}; nothing was queued:\n{lines}"
        ) from None

    study.enqueue_trial(params, user_attrs={QUEUED_ATTR: "hpo enqueue"}, skip_if_exists=False)
    trials = study.get_trials(deepcopy=False)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    return Enqueued(
        study=name,
        trial=max(t.number for t in waiting),
        params=params,
        budget=spec.n_trials,
        taken=budget_used(Counter(t.state for t in trials)),
    )
