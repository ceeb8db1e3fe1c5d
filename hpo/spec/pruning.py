"""The spec's pruner with hpo's defaults filled in: the one place that decides them.

``make_pruner`` builds Optuna's pruner from ``pruner_options``, and the engine reads
``pruning_start`` to know after which fold a trial may first be pruned (it fits the folds
before that one together) and ``reports_fold_scores`` to know what it reports after each fold,
so neither asks the pruner object for its settings.

A trial reports one value per fold (step = fold, 0-based): the running mean of its fold scores
so far, which the median, percentile, successive-halving, hyperband and patient pruners compare
across trials; or, for ``wilcoxon``, the fold's own score, which Optuna's WilcoxonPruner
pairs with the best trial's score on the same fold (a signed-rank test over the folds so far).

Which pruner for K = 3 to 5 folds: ``median`` (the default of the catalogue), ``percentile`` or
``successive_halving``. A trial is never pruned after its last fold, so the Wilcoxon test has
at most K - 1 pairs, and its smallest one-sided p-value is 1/2^(K-1): 0.25 with 3 folds, 0.125
with 4, both above its default ``p_threshold`` of 0.1, so it could never prune; with 5 folds
it can prune only after the fourth. ``wilcoxon_problem`` refuses a spec where it never can.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna

if TYPE_CHECKING:
    from hpo.spec.study_spec import StudySpec

#: The pruners a spec may name (besides ``none``), with the Optuna class each one builds.
PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
    "patient": optuna.pruners.PatientPruner,
}
PRUNER_NAMES = ("none", *PRUNERS)

#: hpo's defaults per pruner name, under the spec's own ``pruner.options``. Median and
#: percentile: Optuna's 5 start-up trials, and no pruning before the second fold's running mean
#: (one fold's score is too noisy to judge a configuration by); percentile keeps the best
#: quarter (Optuna's own example). Successive halving and hyperband: a fold is the smallest
#: resource. Patient: waits ``patience`` folds without improvement, then asks a median pruner
#: with the median's defaults (the wrapped pruner is an object, which a spec cannot give).
PRUNER_DEFAULTS: dict[str, dict[str, Any]] = {
    "median": {"n_startup_trials": 5, "n_warmup_steps": 1},
    "percentile": {"percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": 1},
    "hyperband": {"min_resource": 1},
    "successive_halving": {"min_resource": 1},
    "patient": {"patience": 1},
}
#: The pruner ``patient`` wraps.
PATIENT_WRAPS = "median"
#: The option that delays each pruner's first judgement, for the advice when it comes too late.
_START_OPTIONS = {
    "median": "n_warmup_steps",
    "percentile": "n_warmup_steps",
    "wilcoxon": "n_startup_steps",
    "patient": "patience",
}


def pruner_options(spec: StudySpec) -> dict[str, Any]:
    """The keyword arguments of the spec's Optuna pruner: hpo's defaults, then the spec's
    ``pruner.options``; hyperband's ``max_resource`` is the number of folds."""
    name = spec.pruner.name
    options = dict(PRUNER_DEFAULTS.get(name, {}))
    if name == "hyperband":
        options["max_resource"] = spec.cv.folds
    options.update(spec.pruner.options)
    return options


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's Optuna pruner, with hpo's defaults; ``NopPruner`` for ``none``."""
    name = spec.pruner.name
    if name == "none":
        return optuna.pruners.NopPruner()
    options = pruner_options(spec)
    if name == "patient":
        wrapped = PRUNERS[PATIENT_WRAPS](**PRUNER_DEFAULTS[PATIENT_WRAPS])
        return optuna.pruners.PatientPruner(wrapped, **options)
    return PRUNERS[name](**options)


def reports_fold_scores(spec: StudySpec) -> bool:
    """Whether a trial reports each fold's own score (Wilcoxon's paired test), rather than the
    running mean of its folds so far (every other pruner, and none)."""
    return bool(spec.pruner.name == "wilcoxon")


@dataclass(frozen=True)
class PruningStart:
    """When a trial may first be pruned.

    Attributes:
        startup_trials: complete trials the study needs before the pruner prunes at all.
        first_fold: the first fold after which a trial may be pruned (0-based).
    """

    startup_trials: int
    first_fold: int


def pruning_start(spec: StudySpec) -> PruningStart | None:
    """When the spec's pruner may first stop a trial; None when it has no pruner."""
    name = spec.pruner.name
    if name == "none":
        return None
    options = pruner_options(spec)
    if name == "wilcoxon":  # it tests once it has max(2, n_startup_steps) pairs
        first = max(2, int(options.get("n_startup_steps", 2))) - 1
        return PruningStart(startup_trials=1, first_fold=first)
    if name == "patient":  # it asks its median once patience + 2 folds have reported
        median = PRUNER_DEFAULTS[PATIENT_WRAPS]
        return PruningStart(
            startup_trials=median["n_startup_trials"],
            first_fold=max(int(options["patience"]) + 1, median["n_warmup_steps"]),
        )
    return PruningStart(
        startup_trials=int(options.get("n_startup_trials", 0)),
        first_fold=int(options.get("n_warmup_steps", 0)),
    )


def pruning_problem(spec: StudySpec) -> str | None:
    """Why the spec's pruner could never prune a trial of its folds, or None. A trial is never
    pruned after its last fold (there is nothing left to save)."""
    start = pruning_start(spec)
    if start is None:
        return None
    folds, name = spec.cv.folds, spec.pruner.name
    advice = "for 3 to 5 folds use median, percentile or successive_halving (see docs/search.md)"
    option = _START_OPTIONS.get(name)
    # A median pruner left at its defaults on 2 folds is let be (it has always been allowed);
    # a delay the spec chose, and the pruners that need several folds, are refused.
    chosen = name in ("wilcoxon", "patient") or option in spec.pruner.options
    if chosen and start.first_fold >= folds - 1:
        lower = f"lower pruner.options.{option}, " if option else ""
        return (
            f"pruner: {name} with cv.folds: {folds} can never prune: it judges a trial after "
            f"fold {start.first_fold + 1} at the earliest, and fold {folds} is the last; "
            f"{lower}raise cv.folds, or {advice}"
        )
    if name == "wilcoxon":
        threshold = float(pruner_options(spec).get("p_threshold", 0.1))
        pairs = folds - 1
        if 0.5**pairs >= threshold:
            return (
                f"pruner: wilcoxon with cv.folds: {folds} can never prune: it compares at most "
                f"{pairs} folds with the best trial's, and the smallest p-value of {pairs} pairs "
                f"is 1/2^{pairs} = {0.5**pairs:.3g}, not under its p_threshold {threshold:g}; "
                f"{advice}"
            )
    return None
