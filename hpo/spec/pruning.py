"""The spec's pruner with hpo's defaults filled in, and what a trial reports to it: the one
place that decides them.

``make_pruner`` builds the pruner from ``pruner_options``; the engine reads ``pruning_start``
to know after which fold a trial may first be pruned (it fits the folds before that one
together), ``reports_fold_scores`` to know what it reports after each fold and
``EpochSteps`` to know at which steps it reports its epochs, so none of them asks the pruner
object for its settings.

What a trial reports (``pruner.over``):

- ``folds`` (the default): one value per fold (step = fold, 0-based): the running mean of its
  fold scores so far, which the median, percentile, successive-halving, hyperband, patient and
  forgiving pruners compare across trials; or, for ``wilcoxon``, the fold's own score, which
  Optuna's WilcoxonPruner pairs with the best trial's score on the same fold (a signed-rank
  test over the folds so far).
- ``epochs``: every ``report_every`` epochs (and at the last), the mean over the trial's folds
  of each fold's score on its held-out rows, by the spec's scorer; folds already finished count
  with their final score. Stacked, all K folds train at once and report together; fitted one by
  one (on a GPU, or a net too big to stack), each fold reports its epochs in turn. A step is
  an epoch (0-based, as ``optuna_integration.SkorchPruningCallback`` reports them), a trial's
  fits one after another, each ``max_epochs`` steps long (``EpochSteps``): so a pruner's
  ``min_resource``, ``max_resource`` and ``n_warmup_steps`` count epochs, whatever
  ``report_every`` is. Without ``report_every``, a fit reports about ``REPORTS_PER_FIT``
  times (``report_every``): each report costs a forward pass over the held-out rows.
- ``both``: as ``epochs``, but a stacked trial fits its first two folds first and the rest
  after, so a hopeless trial stops within its first epochs and a mediocre one after its first
  folds, at the cost of one stacked fit split in two.

Which pruner for K = 3 to 5 folds: ``median`` (the default of the catalogue), ``percentile``,
``successive_halving`` or ``forgiving``. A trial is never pruned after its last fold, so the
Wilcoxon test has at most K - 1 pairs, and its smallest one-sided p-value is 1/2^(K-1): 0.25
with 3 folds, 0.125 with 4, both above its default ``p_threshold`` of 0.1, so it could never
prune; with 5 folds it can prune only after the fourth. ``pruning_problem`` refuses a spec
where it never can, and the rules that compare fold scores (``wilcoxon``, ``forgiving``) over
epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna

from hpo.spec.forgiving import ForgivingPruner

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
    "forgiving": ForgivingPruner,
}
PRUNER_NAMES = ("none", *PRUNERS)

#: What a trial's reports step over (``pruner.over``; the module's docstring).
PRUNE_OVER = ("folds", "epochs", "both")

#: The pruners whose rule compares fold scores, so they step over folds only.
FOLD_RULES = ("wilcoxon", "forgiving")

#: With ``over: both``, the folds a stacked trial fits first: two folds' mean is a steadier
#: early judgement than one fold's, and the rest follow in one stacked fit.
FIRST_FOLDS = 2

#: skorch's ``max_epochs`` when a spec neither fixes nor searches it.
DEFAULT_MAX_EPOCHS = 10

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


#: hpo's defaults over epochs, where they differ: median and percentile wait a quarter of a
#: fit's epochs before they judge (a net's first epochs say little of where it ends), patient
#: a quarter of its reports; successive halving and hyperband take one epoch as the smallest
#: resource.
EPOCH_WARMUP_SHARE = 0.25

#: About how many times a fit reports when the spec sets no ``pruner.report_every``: a
#: report scores every fold's held-out rows (with 3 folds, half as many rows as it trains
#: on), which on a small net costs a sixth of an epoch's training; ten reports judge a trial
#: within its first tenth of epochs and keep that cost to a few percent
#: (docs/benchmarks.md, "Cost of reporting epochs").
REPORTS_PER_FIT = 10


def reports_epochs(spec: StudySpec) -> bool:
    """Whether a trial reports its epochs (``pruner.over`` is ``epochs`` or ``both``)."""
    return bool(spec.pruner.over != "folds")


def spec_max_epochs(spec: StudySpec) -> int:
    """The most epochs a trial of ``spec`` trains: its fixed ``max_epochs``, the top of a
    searched one, or skorch's default."""
    searched = spec.space.get("max_epochs")
    if searched is not None:
        high = getattr(searched, "high", None)
        choices = getattr(searched, "choices", None)
        if high is not None:
            return int(high)
        if choices:
            return int(max(choices))
    return int(spec.fixed.get("max_epochs", DEFAULT_MAX_EPOCHS))


def report_every(spec: StudySpec) -> int:
    """Every how many epochs a fit reports: the spec's ``pruner.report_every``, else
    about ``REPORTS_PER_FIT`` times per fit of the spec's most epochs."""
    if spec.pruner.report_every is not None:
        return int(spec.pruner.report_every)
    return max(1, math.ceil(spec_max_epochs(spec) / REPORTS_PER_FIT))


@dataclass(frozen=True)
class EpochSteps:
    """The steps at which a trial reports its epochs: every ``report_every`` epochs of a fit
    of ``max_epochs``, and its last. A step is an epoch (0-based); a trial's fits (its fold
    groups) follow each other, ``fit_epochs`` steps apart, so every trial of a study steps
    the same epochs.

    Attributes:
        max_epochs: the trial's ``max_epochs``.
        report_every: every how many epochs it reports (``report_every``).
        fit_epochs: steps per fit: the spec's most epochs (``spec_max_epochs``); by default
            ``max_epochs``.
    """

    max_epochs: int
    report_every: int = 1
    fit_epochs: int | None = None

    @classmethod
    def of(cls, spec: StudySpec, max_epochs: int) -> EpochSteps:
        """The steps of a trial of ``spec`` whose net trains ``max_epochs``."""
        return cls(max_epochs, report_every(spec), max(max_epochs, spec_max_epochs(spec)))

    @property
    def reports(self) -> int:
        """Reports per fit."""
        return math.ceil(self.max_epochs / self.report_every)

    def reports_at(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) of a fit is reported."""
        return (epoch + 1) % self.report_every == 0 or epoch + 1 == self.max_epochs

    def step(self, fit: int, epoch: int) -> int:
        """The step of epoch ``epoch`` (0-based) of the trial's fit ``fit``."""
        return fit * (self.fit_epochs or self.max_epochs) + epoch


def pruner_options(spec: StudySpec) -> dict[str, Any]:
    """The keyword arguments of the spec's pruner: hpo's defaults (over epochs, those of
    ``EPOCH_WARMUP_SHARE``), then the spec's ``pruner.options``; hyperband's
    ``max_resource`` is the number of folds, over epochs Optuna's ``auto`` (the steps, that
    is epochs, of the first trial that finishes: a trial's fits decide them)."""
    name = spec.pruner.name
    options = dict(PRUNER_DEFAULTS.get(name, {}))
    if name == "hyperband":
        options["max_resource"] = spec.cv.folds
    if reports_epochs(spec):
        steps = EpochSteps.of(spec, spec_max_epochs(spec))
        if name in ("median", "percentile"):
            options["n_warmup_steps"] = max(1, int(steps.max_epochs * EPOCH_WARMUP_SHARE))
        elif name == "patient":  # Optuna's patience counts reports
            options["patience"] = max(1, int(steps.reports * EPOCH_WARMUP_SHARE))
        elif name == "hyperband":
            options["max_resource"] = "auto"
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
    if name in FOLD_RULES and reports_epochs(spec):
        return (
            f"pruner: {name} with over: {spec.pruner.over}: {name} compares fold scores, and a "
            "fold still training scores below every finished one, so it steps over folds "
            "only; write over: folds, or choose median, percentile, successive_halving or "
            "hyperband to prune by the epoch"
        )
    advice = "for 3 to 5 folds use median, percentile or successive_halving (see docs/search.md)"
    option = _START_OPTIONS.get(name)
    # A median pruner left at its defaults on 2 folds is let be (it has always been allowed);
    # a delay the spec chose, and the pruners that need several folds, are refused.
    chosen = name in ("wilcoxon", "patient") or option in spec.pruner.options
    # Over epochs a trial is judged at its epochs, not only between its folds.
    if chosen and not reports_epochs(spec) and start.first_fold >= folds - 1:
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
