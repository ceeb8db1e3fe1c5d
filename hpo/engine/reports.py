"""What a trial tells its pruner, and when the pruner stops it: ``TrialReports``.

The spec decides what is reported when (``hpo.spec.pruning``: ``pruner.over``,
``EpochSteps``); this module does it for one trial. Over folds, the running mean of the fold
scores (for the Wilcoxon pruner, each fold's own score) goes to ``trial.report`` after each
fold. Over epochs, a fit's folds report after the epochs ``EpochSteps`` names: the mean over
the trial's folds so far, each finished fold by its final score and each fold of the running
fit by its held-out score at that epoch (``hpo.engine.folds.fold.EpochListener``).
A trial is never pruned at its last report: nothing is left to save.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import optuna

from hpo.spec.pruning import EpochSteps, reports_epochs, reports_fold_scores
from hpo.spec.study_spec import StudySpec


class TrialReports:
    """One trial's reports to its pruner, over folds or over epochs (``pruner.over``).

    Args:
        trial: the trial.
        spec: the study.
        folds: the trial's number of folds.
        max_epochs: the trial's net's ``max_epochs``.
        may_prune: the pruner may stop the trial (asking a pruner that is not there would
            cost a storage read per report).
        report: report at all (Optuna takes intermediate values of one objective only).
    """

    def __init__(
        self,
        trial: optuna.Trial,
        spec: StudySpec,
        folds: int,
        max_epochs: int,
        *,
        may_prune: bool,
        report: bool = True,
    ) -> None:
        self.trial = trial
        self.folds = folds
        self.may_prune = may_prune
        self.report = report
        self.fold_scores = reports_fold_scores(spec)
        self.steps = EpochSteps.of(spec, max_epochs)
        self.over_epochs = reports_epochs(spec)
        #: Each finished fold's score, by fold number.
        self.finished: dict[int, float] = {}
        #: The running fit's folds and its number among the trial's fits.
        self._fit_folds: tuple[int, ...] = ()
        self._fit = -1
        #: Where the pruner stopped the trial, for its user_attrs: epoch (1-based), folds.
        self.pruned_at: dict[str, object] | None = None

    @property
    def listener(self) -> TrialReports | None:
        """This object as the fold runners' ``EpochListener``, when the trial reports epochs."""
        return self if self.over_epochs and self.report else None

    # --- over epochs: hpo.engine.folds.fold.EpochListener -----------------------------------

    def reports_at(self, epoch: int) -> bool:
        return self.steps.reports_at(epoch)

    def epoch_scored(self, epoch: int, scores: Mapping[int, float], ended: bool = False) -> None:
        folds = tuple(sorted(scores))
        if folds != self._fit_folds:  # the trial's next fit
            self._fit_folds = folds
            self._fit += 1
        others = [score for fold, score in self.finished.items() if fold not in scores]
        value = float(np.mean([*others, *scores.values()]))
        step = self.steps.step(self._fit, epoch)
        self.trial.report(value, step)
        # The last fit's last epoch, or the one after which all its folds stopped early.
        last = max(folds) == self.folds - 1 and (ended or epoch + 1 == self.steps.max_epochs)
        if self.may_prune and not last and self.trial.should_prune():
            shown = ", ".join(str(fold) for fold in folds)
            self.pruned_at = {"epoch": epoch + 1, "folds": list(folds), "step": step}
            raise optuna.TrialPruned(
                f"pruned at epoch {epoch + 1} of fold{'s' * (len(folds) > 1)} {shown}: "
                f"mean {value:.4f}"
            )

    # --- over folds, and every fold's end ---------------------------------------------------

    def fold_finished(self, fold: int, score: float) -> None:
        """Fold ``fold`` ended with ``score``; over folds, report and perhaps prune."""
        self.finished[fold] = score
        if self.over_epochs or not self.report:
            return
        scores = list(self.finished.values())
        self.trial.report(float(score if self.fold_scores else np.mean(scores)), fold)
        if self.may_prune and fold + 1 < self.folds and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after fold {fold}: mean {np.mean(scores):.4f}")
