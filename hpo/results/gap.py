"""When a refit's test score strays far from its CV score: the one rule, and what to say.

``large_gap`` is the rule: the difference is larger than both ``GAP_STDS`` (2) standard
deviations of the refit trial's fold scores (user_attr ``score_std``: what the folds alone
disagree by) and ``GAP_RELATIVE`` (5%) of the CV score's size (a floor, since two or three
folds can agree by chance to a few thousandths). ``gap_sentence`` words it, with the likely
reasons for that direction; the report puts it under its summary and ``hpo refit`` (and
``hpo.refit``) print it.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.spec.study_spec import StudySpec

#: A test score this many standard deviations of the fold scores from the CV score, or more,
#: may be a large gap (``large_gap``).
GAP_STDS = 2.0
#: ... and this fraction of the CV score's size, or more: both must be exceeded.
GAP_RELATIVE = 0.05


def large_gap(test: float, cv: float, fold_std: float | None) -> bool:
    """Whether a test score differs a lot from the CV score: by more than ``GAP_STDS``
    standard deviations of the fold scores and more than ``GAP_RELATIVE`` of ``|cv|``."""
    threshold = max(GAP_STDS * (fold_std or 0.0), GAP_RELATIVE * abs(cv))
    return abs(test - cv) > threshold


def gap_sentence(
    study: optuna.Study, spec: StudySpec, metric: str, refit: dict[str, Any] | None
) -> str:
    """A sentence when the refit's test score and its trial's CV score differ a lot
    (``large_gap``), with the likely reasons for that direction; "" otherwise or before a
    refit."""
    test = (refit or {}).get("test", {}).get("score", study.user_attrs.get("test_score"))
    number = (refit or {}).get("trial", study.user_attrs.get("refit_trial"))
    trial = _trial(study, number)
    if test is None or trial is None or not trial.values:
        return ""
    cv = float((refit or {}).get("cv_score", trial.values[0]))
    std = trial.user_attrs.get("score_std")
    if not large_gap(test, cv, std):
        return ""
    worse = test < cv if spec.direction == "maximize" else test > cv
    rule = f"{GAP_RELATIVE:.0%} of the CV score"
    if std:
        rule = f"{GAP_STDS:g} standard deviations of its fold scores ({std:.2g}) and {rule}"
    side = "below" if test < cv else "above"
    head = (
        f"The test {metric} {test:.4g} is {abs(test - cv):.2g} {side} the best CV {metric} "
        f"{cv:.4g} (trial {trial.number}): more than {rule}."
    )
    n_test = (refit or {}).get("n_test")
    chance = f"the test split has only {n_test} rows, so" if n_test else "on a small test split"
    reasons: list[str] = []
    if worse:
        complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if complete > 1:
            reasons.append(
                f"the best CV score is the best of {complete} trials, so it is optimistic "
                "(the more trials, the more so)"
            )
        reasons += [
            "the configuration was chosen on these folds and may fit them better than new "
            "data (overfitting to the folds)",
            "the test rows may differ from the training rows",
        ]
    else:
        reasons += [
            f"the refit trains on {spec.refit.trained_on}, while each fold trained on "
            f"{spec.cv.folds - 1}/{spec.cv.folds} of the training split",
            "the test rows may be easier or less noisy than the training rows",
        ]
    reasons.append(f"{chance} its score moves by chance")
    return f"{head} Likely reasons: {'; '.join(reasons)}."


def _trial(study: optuna.Study, number: Any) -> FrozenTrial | None:
    if not isinstance(number, int):
        return None
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    return found[0] if found else None
