"""The report's tables and sentences: the study at a glance, the time each trial and fold
took, and a word when the test score strays from the CV score.

- ``summary_html``: the spec (model, dataset, sampler, pruner, scoring), the trials by state,
  the best CV score and configuration, the refit's test metrics, and ``gap_sentence`` under it.
- ``timing_section``: every trial, sorted by number: state, value, fit seconds and epochs of
  each fold (the worker's ``fit_seconds``, ``epochs`` user_attrs), their total and the trial's
  wall time. All rows are kept, so nothing is hidden, in a block that scrolls past about 15
  rows so that a study of hundreds of trials does not push the refit's figures away; the
  caption above it names the slowest trials, and the best trial's row is marked.
- ``gap_sentence``: the one rule for "the test score differs a lot from the CV score" is
  ``large_gap``: the difference is larger than both ``GAP_STDS`` (2) standard deviations of the
  refit trial's fold scores (user_attr ``score_std``: what the folds alone disagree by) and
  ``GAP_RELATIVE`` (5%) of the CV score's size (a floor, since two or three folds can agree by
  chance to a few thousandths).
"""

from __future__ import annotations

import html
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.results.refit import TEST_ATTR_PREFIX
from hpo.results.report_section import Section
from hpo.spec.objectives import chosen_number, directions, objective_names
from hpo.spec.study_spec import StudySpec

TIMING = "Time per trial and fold"
#: A test score this many standard deviations of the fold scores from the CV score, or more,
#: may be a large gap (``large_gap``).
GAP_STDS = 2.0
#: ... and this fraction of the CV score's size, or more: both must be exceeded.
GAP_RELATIVE = 0.05
#: The slowest trials the timing table's caption names.
SLOWEST_NAMED = 3


def summary_html(
    study: optuna.Study, spec: StudySpec, metric: str, refit: dict[str, Any] | None
) -> str:
    """The summary table, the sentence on a large test-vs-CV gap, and the time written.

    Args:
        study: The study.
        spec: Its spec.
        metric: The name of its objective.
        refit: The refit's ``metrics.json``, or None (the test metrics then come from the
            study's ``test_*`` user_attrs when a refit wrote them).
    """
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    better = "greater" if spec.direction == "maximize" else "smaller"
    rows: list[tuple[str, str]] = [
        ("model", spec.model),
        ("dataset", spec.dataset.name),
        ("sampler", spec.sampler.name),
        ("pruner", spec.pruner.name),
        ("scoring", f"{spec.scoring} ({spec.cv.folds}-fold CV, {better} is better)"),
        ("trials", ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none yet"),
    ]
    if spec.objectives:
        rows.append(("more objectives", ", ".join(objective_rows(spec))))
    if spec.constraints:
        rows.append(("constraints", ", ".join(_bounds(spec))))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    number = chosen_number(study, spec) if complete else None
    if number is not None:
        best = study.trials[number]
        rows.append((f"best CV {metric}", f"{best.values[0]:.6g} (trial {best.number})"))
        if len(best.values) > 1:
            values = zip(objective_names(spec), best.values, strict=True)
            rows.append(
                (
                    "picked from the Pareto front",
                    f"of {_trials(len(study.best_trials))}, by refit.pick (best first objective "
                    f"within {spec.refit.pick.best_first_within or 0:g}, then the next): "
                    + ", ".join(f"{n} {_fmt(v)}" for n, v in values),
                )
            )
        params = spec.configuration(best.params)
        rows.append(("best configuration", ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())))
    elif complete and spec.constraints:
        rows.append((f"best CV {metric}", "none yet: no completed trial meets the constraints"))
    test = {
        k.removeprefix(TEST_ATTR_PREFIX): v
        for k, v in study.user_attrs.items()
        if k.startswith(TEST_ATTR_PREFIX)
    }
    if refit is not None:
        test = refit.get("test", test)
    if test:
        rows.append(("test split (refit)", ", ".join(f"{k} {_fmt(v)}" for k, v in test.items())))
    cells = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    gap = gap_sentence(study, spec, metric, refit)
    note = f'<p class="gap">{html.escape(gap)}</p>' if gap else ""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f'<table class="summary">{cells}</table>{note}<p class="stamp">written {stamp}</p>'


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


def timing_section(study: optuna.Study, metric: str) -> Section:
    """Every trial's state, value and the seconds and epochs of each fold, as an HTML table
    in a scrolling block (the module's docstring says why all rows are kept)."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    if not trials:
        return Section(TIMING, note="No trial has run yet.")
    best = _best_number(study)
    head = (
        f"<tr><th>trial</th><th>state</th><th>{html.escape(metric)}</th>"
        "<th>fit seconds per fold</th><th>epochs per fold</th>"
        "<th>fit seconds</th><th>wall seconds</th></tr>"
    )
    body = "\n".join(_timing_row(t, t.number == best) for t in trials)
    table = (
        f'<div class="scroll"><table class="timing"><thead>{head}</thead>'
        f"<tbody>{body}</tbody></table></div>"
    )
    return Section(TIMING, table=table, caption=_timing_caption(trials))


def _timing_row(trial: FrozenTrial, best: bool) -> str:
    seconds = trial.user_attrs.get("fit_seconds") or []
    epochs = trial.user_attrs.get("epochs") or []
    wall = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else None
    )
    cells = [
        f"{trial.number}{' (best)' if best else ''}",
        trial.state.name,
        "—" if not trial.values else f"{trial.values[0]:.4g}",
        " · ".join(f"{s:.2f}" for s in seconds) or "—",
        " · ".join(str(e) for e in epochs) or "—",
        f"{sum(seconds):.2f}" if seconds else "—",
        "—" if wall is None else f"{wall:.2f}",
    ]
    marked = ' class="best"' if best else ""
    return f"<tr{marked}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _timing_caption(trials: list[FrozenTrial]) -> str:
    fitted = {t.number: sum(t.user_attrs.get("fit_seconds") or []) for t in trials}
    fitted = {number: seconds for number, seconds in fitted.items() if seconds > 0}
    if not fitted:
        return f"{len(trials)} trials; none recorded its folds' times yet."
    slowest = sorted(fitted, key=lambda n: -fitted[n])[:SLOWEST_NAMED]
    named = ", ".join(f"trial {n} ({fitted[n]:.1f} s)" for n in slowest)
    return (
        f"{len(trials)} trials, {sum(fitted.values()):.1f} s of fitting in all "
        f"(the folds' fit seconds); the slowest: {named}."
    )


def objective_rows(spec: StudySpec) -> list[str]:
    """The objectives after the scorer, each with its direction."""
    names, ways = objective_names(spec), directions(spec)
    return [f"{n} ({w})" for n, w in zip(names[1:], ways[1:], strict=True)]


def _bounds(spec: StudySpec) -> list[str]:
    return [
        " and ".join(
            part
            for part in (
                None if bound.min is None else f"{name} >= {bound.min:g}",
                None if bound.max is None else f"{name} <= {bound.max:g}",
            )
            if part
        )
        for name, bound in spec.constraints.items()
    ]


def _trial(study: optuna.Study, number: Any) -> FrozenTrial | None:
    if not isinstance(number, int):
        return None
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    return found[0] if found else None


def _best_number(study: optuna.Study) -> int | None:
    """The best trial's number; None before one (or with several objectives: no one best)."""
    if len(study.directions) > 1:
        return None
    try:
        return study.best_trial.number
    except ValueError:
        return None


def _trials(count: int) -> str:
    return f"{count} trial{'' if count == 1 else 's'}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
