"""When a study has searched enough: a target reached, or no improvement for a while.

``budget.target`` ends a study once a completed trial's value reaches it (W&B's
``metric.target``, Katib's objective goal); ``budget.patience: N`` once N trials have
completed since the best one (Ray Tune's plateau stopper). Either way no worker starts a new
trial and running ones finish, as when ``budget.trials`` or ``budget.timeout`` is spent;
the worker records why in the study (``hpo.service.worker``), and ``hpo studies`` and the
dashboard's note say it. Both need one best value, so a study of several objectives refuses
them (``stop_rule_problems``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial

if TYPE_CHECKING:
    from hpo.spec.study_spec import StudySpec


def has_stop_rules(spec: StudySpec) -> bool:
    """Whether the spec ends its study on ``budget.target`` or ``budget.patience``."""
    return spec.budget.target is not None or spec.budget.patience is not None


def stop_reason(spec: StudySpec, completed: Sequence[FrozenTrial]) -> str:
    """Why the study should start no more trials, or "" while it should go on.

    Args:
        spec: The study's spec; its ``budget.target`` and ``budget.patience`` decide.
        completed: The study's completed trials, in any order.
    """
    if not completed or not has_stop_rules(spec):
        return ""
    maximize = spec.direction == "maximize"
    values = [(t.number, float(t.values[0])) for t in sorted(completed, key=_finished_order)]
    best_number, best = values[0]
    for number, value in values[1:]:
        if (value > best) if maximize else (value < best):
            best_number, best = number, value
    target = spec.budget.target
    if target is not None and ((best >= target) if maximize else (best <= target)):
        return (
            f"budget.target reached: trial {best_number} scored {best:.6g} "
            f"({'>=' if maximize else '<='} {target:g}); no new trial starts"
        )
    patience = spec.budget.patience
    if patience is not None:
        since = len(values) - 1 - [number for number, _ in values].index(best_number)
        if since >= patience:
            return (
                f"budget.patience of {patience} reached: {since} trials completed since the "
                f"best, trial {best_number} ({best:.6g}); no new trial starts"
            )
    return ""


def stop_rule_problems(raw: Mapping[str, Any]) -> list[str]:
    """A study of several objectives has no one best value to reach or to improve."""
    given = raw.get("budget")
    budget: dict[str, Any] = given if isinstance(given, dict) else {}
    scoring, objectives = raw.get("scoring"), raw.get("objectives")
    several = (isinstance(scoring, list) and len(scoring) > 1) or bool(objectives)
    if not several:
        return []
    return [
        f"budget.{key}: a study of several objectives has no single best value to "
        f"{'reach' if key == 'target' else 'improve'}; end it by budget.trials or "
        "budget.timeout, or bound the other objectives with constraints and keep one"
        for key in ("target", "patience")
        if budget.get(key) is not None
    ]


def _finished_order(trial: FrozenTrial) -> tuple[float, int]:
    complete = trial.datetime_complete
    return (complete.timestamp() if complete is not None else float("inf"), trial.number)
