"""The report's tables and sentences: the study at a glance, the time each trial and fold
took, and a word when the test score strays from the CV score.

- ``summary_html``: the spec (model, dataset, sampler, pruner, scoring), the trials by state,
  the best CV score and configuration, the refit's test metrics, and ``gap_sentence`` under it.
- ``timing_section``: every trial, sorted by number: state, value, fit seconds and epochs of
  each fold (the worker's ``fit_seconds``, ``epochs`` user_attrs), their total and the trial's
  wall time. All rows are kept, so nothing is hidden, in a block that scrolls past about 15
  rows so that a study of hundreds of trials does not push the refit's figures away; the
  caption above it names the slowest trials, and the best trial's row is marked.
- the sentence under the summary is ``hpo.results.gap.gap_sentence``, which ``hpo refit``
  prints too.
"""

from __future__ import annotations

import html
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.results.gap import gap_sentence
from hpo.results.refit import TEST_ATTR_PREFIX
from hpo.results.report_section import Section
from hpo.spec.objectives import chosen_number, directions, objective_names
from hpo.spec.study_spec import StudySpec

TIMING = "Time per trial and fold"
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
        (
            "pruner",
            spec.pruner.name + (f" over {spec.pruner.over}" * (spec.pruner.name != "none")),
        ),
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
