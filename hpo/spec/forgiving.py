"""The forgiving cross-validation pruner: stop a trial whose running fold mean is worse than
the incumbent's worst fold.

Bergman, Purucker and Hutter ("Don't waste your time: early stopping cross-validation",
AutoML 2024) stop a configuration's K-fold CV once the mean of its folds so far is worse than
the worst fold of the best configuration yet: a rule that forgives a bad fold of a good trial
(its mean stays above the incumbent's worst fold) and needs no statistics over folds, so it
prunes at 3 folds, where Optuna's Wilcoxon pruner cannot (``hpo.spec.pruning``). On 36
datasets it made random search converge faster in about 94 % of them.

The rule compares fold scores, so it steps over folds only (``pruner.over: folds``): an
epoch's held-out score of a fold still training is below any finished fold's, and would stop
every trial at its first epochs. It reads the incumbent's fold scores from its ``fold_scores``
user_attr, which hpo's objective writes (``hpo.engine.objective``).
"""

from __future__ import annotations

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

#: The user_attr of a trial's fold scores, in fold order.
FOLD_SCORES = "fold_scores"


class ForgivingPruner(optuna.pruners.BasePruner):
    """Prune a trial whose latest reported value (its running fold mean) is worse than the
    best complete trial's worst fold score.

    Args:
        n_startup_trials: complete trials the study needs before this pruner prunes (the
            incumbent must exist; more gives it a steadier worst fold). Default: 1.
    """

    def __init__(self, n_startup_trials: int = 1) -> None:
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be at least 1, got {n_startup_trials}")
        self.n_startup_trials = n_startup_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) < self.n_startup_trials:
            return False
        best = study.best_trial
        folds = best.user_attrs.get(FOLD_SCORES)
        if not folds:
            return False
        running_mean = trial.intermediate_values[step]
        if study.direction == StudyDirection.MINIMIZE:
            return bool(running_mean > max(folds))
        return bool(running_mean < min(folds))
