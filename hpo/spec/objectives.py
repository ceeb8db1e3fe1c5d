"""What a study optimizes: its objectives, their directions, its constraints and the refit's
pick from a Pareto front, in one place.

A spec's ``scoring`` is one scikit-learn scorer, or a list: the first a scorer (the CV score
every report, export and refit centres on), the others scorers or measures of the net
(``MEASURES``)::

    scoring: [accuracy, n_parameters]
    constraints: {n_parameters: {max: 100000}}
    refit: {pick: {best_first_within: 0.005}}

Scorers are maximized (scikit-learn's scorers are greater-is-better), measures minimized.
A constraint bounds a scorer or a measure; a trial outside it is infeasible, through Optuna's
own ``Trial.set_constraint`` (feasible when every value is <= 0), which the samplers (TPE, GP,
CMA-ES, NSGA-II) take into account and ``Study.best_trial`` / ``best_trials`` respect.

With several objectives a study has a Pareto front, not one best trial; ``refit.pick`` says
which trial of it ``hpo refit`` and ``hpo export`` take (``pick_from_front``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import optuna

    from hpo.spec.study_spec import StudySpec


@dataclass(frozen=True)
class Measure:
    """A built-in measure of a trial's net, always minimized."""

    description: str


#: The measures a spec may name as an objective or a constraint, beside scikit-learn scorers.
MEASURES: dict[str, Measure] = {
    "n_parameters": Measure("trainable parameters of the net"),
    "fit_seconds": Measure("mean seconds to fit one fold"),
    "predict_ms_per_1000_rows": Measure(
        "milliseconds to predict 1000 rows, in batches of the net's batch_size, on the trial's "
        "device"
    ),
}


def objective_names(spec: StudySpec) -> list[str]:
    """The study's objectives in order: its scorer, then ``objectives``."""
    return [spec.scoring, *spec.objectives]


def directions(spec: StudySpec) -> list[Literal["minimize", "maximize"]]:
    """Optuna's direction of each objective: scorers maximize, measures minimize."""
    return ["minimize" if name in MEASURES else "maximize" for name in objective_names(spec)]


def is_multi_objective(spec: StudySpec) -> bool:
    return bool(spec.objectives)


def metric_name(study: optuna.Study, spec: StudySpec) -> str:
    """The name of the study's (first) objective: the metric name stored at registration
    (``Study.metric_names``), else the spec's ``scoring`` (a study registered before hpo
    stored one)."""
    names = study.metric_names
    return str(names[0]) if names else spec.scoring


def _named_beyond_scoring(spec: StudySpec) -> list[str]:
    """What the objectives after ``scoring`` and the constraints name, in that order."""
    return [*spec.objectives, *spec.constraints]


def extra_scorers(spec: StudySpec) -> tuple[str, ...]:
    """The scikit-learn scorers besides ``scoring`` that each fold is scored by: those the
    objectives and constraints name, in that order, once each."""
    named = _named_beyond_scoring(spec)
    return tuple(dict.fromkeys(n for n in named if n not in MEASURES and n != spec.scoring))


def scorers(spec: StudySpec) -> tuple[str, ...]:
    """Every scorer a fold is scored by: ``scoring`` first, then ``extra_scorers``."""
    return (spec.scoring, *extra_scorers(spec))


def needed_measures(spec: StudySpec) -> tuple[str, ...]:
    """The measures the objectives and constraints name, in that order, once each."""
    return tuple(dict.fromkeys(n for n in _named_beyond_scoring(spec) if n in MEASURES))


def constraint_values(spec: StudySpec, values: Mapping[str, float]) -> dict[str, float]:
    """Optuna's constraint value per bound (<= 0 when it holds), named as the spec writes it,
    e.g. ``{"n_parameters <= 100000": -1200.0}``; ``values`` holds every scorer's and
    measure's value of the trial."""
    out: dict[str, float] = {}
    for name, bound in spec.constraints.items():
        if bound.max is not None:
            out[f"{name} <= {bound.max:g}"] = values[name] - bound.max
        if bound.min is not None:
            out[f"{name} >= {bound.min:g}"] = bound.min - values[name]
    return out


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial meets every constraint it was given (Optuna's rule: each <= 0)."""
    return all(value <= 0.0 for value in trial.constraints.values())


def broken_constraints(trial: optuna.trial.FrozenTrial) -> list[str]:
    """The constraints the trial breaks, as named at ``constraint_values``."""
    return [name for name, value in trial.constraints.items() if value > 0.0]


def pick_from_front(
    front: Sequence[optuna.trial.FrozenTrial], spec: StudySpec
) -> optuna.trial.FrozenTrial:
    """The trial of a Pareto front that ``hpo refit`` and ``hpo export`` take.

    Among the front's trials whose first objective is within ``refit.pick.best_first_within``
    of the front's best first objective (0: only the best), the best by the second objective,
    then the third, ...; ties go to the lower trial number.

    Raises:
        ValueError: the front is empty.
    """
    if not front:
        raise ValueError("the Pareto front is empty")
    signs = [1.0 if d == "maximize" else -1.0 for d in directions(spec)]

    def oriented(trial: optuna.trial.FrozenTrial) -> list[float]:  # greater is better
        return [sign * value for sign, value in zip(signs, trial.values, strict=True)]

    best_first = max(oriented(t)[0] for t in front)
    within = spec.refit.pick.best_first_within or 0.0
    close = [t for t in front if oriented(t)[0] >= best_first - within]
    return max(close, key=lambda t: ([*oriented(t)[1:], oriented(t)[0]], -t.number))


def chosen_trial(study: optuna.Study, spec: StudySpec) -> optuna.trial.FrozenTrial:
    """The trial a study's results centre on: its best (feasible) trial, or with several
    objectives ``pick_from_front`` of its (feasible) Pareto front.

    Raises:
        ValueError: no trial has completed, or none meets the constraints.
    """
    if len(study.directions) == 1:
        return study.best_trial
    front = study.best_trials
    if not front:
        raise ValueError("no trial has completed (and met the constraints) yet")
    return pick_from_front(front, spec)


def best_so_far(study: optuna.Study, number_format: str = ".6g") -> str:
    """What the study has found so far, in one phrase: ``best 0.9712 (trial 7)``, ``Pareto
    front: 4 trials`` with several objectives, or ``best -`` before any (feasible) trial."""
    if len(study.directions) > 1:
        front = len(study.best_trials)
        return f"Pareto front: {front} trial{'' if front == 1 else 's'}"
    try:
        best = study.best_trial
    except ValueError:  # no trial completed yet, or none meets the constraints
        return "best -"
    return f"best {format(best.value, number_format)} (trial {best.number})"


def chosen_number(study: optuna.Study, spec: StudySpec) -> int | None:
    """``chosen_trial``'s number, or None before any (feasible) trial has completed."""
    try:
        return chosen_trial(study, spec).number
    except ValueError:
        return None
