"""The notes optuna-dashboard shows on a study's page and on a trial's page (markdown, saved
with optuna-dashboard's public ``save_note``).

The study's note is written at registration: a heading (the study's name, model, dataset,
scoring, CV and budget) above the spec as YAML, the same keys as a study file, so the spec
the workers run is readable where the study is watched (the JSON they read is a system
attribute of the study, ``hpo.service.study``, which neither the dashboard's user-attribute
table nor ``optuna studies`` shows).

After ``hpo refit`` the study's note starts with the best CV score beside the refit's test
score, and the refit trial's own note says the same next to its parameters::

    **Best CV accuracy 0.9712 ± 0.0051** (trial 7, 5-fold mean ± std) · **test accuracy
    0.9650** (refit on the whole training split, scored once)

Only that first line is hpo's to replace: whatever else the note holds (the spec, or what
someone wrote in the dashboard) stays below it.

``hpo report`` also saves its figure of every trial's reports (``CURVES_FIGURE_ID``: the mean
score after each fold or each epoch, its axes named by the metric and by folds or epochs) to
the study with optuna-dashboard's public ``save_plotly_graph_object``, which the dashboard
draws on the study's page. Its own intermediate-value plot stays as Optuna draws it ("step",
"intermediate value"): optuna-dashboard has no public way to name that plot's axes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
import yaml

from hpo.spec.objectives import metric_name
from hpo.spec.study_spec import StudySpec

#: How a refit's line starts, so a later refit replaces it instead of stacking another.
REFIT_LINE_START = "**Best CV "
#: How the line saying why the study ended starts, likewise.
ENDED_LINE_START = "**Ended:** "
#: Study user attribute: why the study ended before its trial budget (a timeout, a target
#: reached, no improvement), as the worker that found it logged it.
ENDED_ATTR = "hpo_ended"


@dataclass(frozen=True)
class RefitScores:
    """What a refit scored on the test split, beside the CV score of the trial it refit.

    Attributes:
        metric: The study's metric name (``accuracy``, ``neg_mean_squared_error``, ...).
        trial: Number of the trial whose configuration was refit.
        cv_mean: That trial's value: the mean of its fold scores.
        cv_std: The standard deviation of its fold scores, or None when it has none.
        folds: How many folds it was scored on.
        test: The metric on the test split, scored once.
        test_metrics: Every test metric the refit computed, by name (``accuracy``,
            ``log_loss``; ``mse``, ``r2``).
        trained_on: The rows the refit trained on, in words (``RefitSpec.trained_on``).
    """

    metric: str
    trial: int
    cv_mean: float
    cv_std: float | None
    folds: int
    test: float
    test_metrics: Mapping[str, float] = field(default_factory=dict)
    trained_on: str = "the whole training split"


def spec_note(spec: StudySpec) -> str:
    """The markdown of a study's note: a heading and a line of what it runs, then the spec as
    YAML (a study file with the same keys registers the same study)."""
    budget = f"budget {spec.n_trials} trials"
    if spec.budget.timeout is not None:
        budget += f" or {spec.budget.timeout:g} s"
    search = f"{spec.sampler.name} sampler"
    if spec.pruner.name != "none":
        search += f", {spec.pruner.name} pruner over {spec.pruner.over}"
    summary = (
        f"`{spec.model}` on `{spec.dataset.name}` · scoring **{spec.scoring}** "
        f"({spec.direction}) · {spec.cv.folds}-fold CV · {budget} · {search}"
    )
    text = yaml.safe_dump(
        readable_spec(spec), sort_keys=False, default_flow_style=None, allow_unicode=True
    )
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    parts = [f"## {spec.name}", summary]
    if spec.description:
        parts.insert(1, spec.description)
    parts.append(f"{fence}yaml\n{text}{fence}")
    return "\n\n".join(parts) + "\n"


def readable_spec(spec: StudySpec) -> dict[str, Any]:
    """The spec as plain data for YAML: every value the workers use, less the empty ones a
    study file leaves out (no description, no options, ``timeout: null``, ...). Parsed
    back, it is the same spec."""
    data: dict[str, Any] = _without_empty(
        spec.model_dump(mode="json"), spec.model_dump(mode="json", exclude_defaults=True)
    )
    # A parameter reads as a study file writes it: its type first. An empty space stays: a
    # study file says `space: {}` for one fixed configuration, and leaves out no space.
    data["space"] = {key: {"type": p["type"], **p} for key, p in data.get("space", {}).items()}
    return data


def refit_note(scores: RefitScores) -> str:
    """The line at the top of the study's note after a refit: the best trial's CV score
    beside the refit's test score."""
    return (
        f"{REFIT_LINE_START}{scores.metric} {_cv(scores)}** (trial {scores.trial}, "
        f"{_cv_kind(scores)}) · **test {scores.metric} {scores.test:.4f}** (refit on "
        f"{scores.trained_on}, scored once)"
    )


def trial_refit_note(scores: RefitScores) -> str:
    """The refit trial's note: its CV score beside its test score, and every test metric."""
    lines = [
        f"**CV {scores.metric} {_cv(scores)}** ({_cv_kind(scores)}) · **test {scores.metric} "
        f"{scores.test:.4f}** (this configuration refit on {scores.trained_on}, scored "
        "once by hpo refit)"
    ]
    if scores.test_metrics:
        listed = " · ".join(f"{name} {value:.4f}" for name, value in scores.test_metrics.items())
        lines.append(f"Test split: {listed}")
    return "\n\n".join(lines) + "\n"


def write_study_note(
    study: optuna.Study, spec: StudySpec, *, refit: RefitScores | None = None
) -> bool:
    """Save the study's note for optuna-dashboard.

    Args:
        study: The study.
        spec: Its spec.
        refit: The refit's scores: its line goes on top of the note, in place of an earlier
            refit's line, and the rest of the note stays (the spec note where there was no
            note). None (registration) writes the spec note only where the study has no
            note: a note someone wrote in the dashboard stays. Default: None.

    Returns:
        Whether the note was saved.
    """
    from optuna_dashboard import get_note, save_note

    body = get_note(study)
    if refit is None:
        if body.strip():
            return False
        save_note(study, spec_note(spec))
        return True
    rest = body
    if rest.startswith(REFIT_LINE_START):
        rest = rest.partition("\n\n")[2]
    if not rest.strip():
        rest = spec_note(spec)
    save_note(study, f"{refit_note(refit)}\n\n{rest}")
    return True


def write_refit_notes(
    storage: optuna.storages.BaseStorage,
    spec: StudySpec,
    *,
    trial: int,
    test: float,
    test_metrics: Mapping[str, float],
) -> RefitScores:
    """After a refit of trial number ``trial``: its line on top of the study's note
    (``write_study_note``) and the trial's own note (``trial_refit_note``).

    Args:
        storage: The study's storage.
        spec: The study's spec.
        trial: Number of the trial whose configuration was refit.
        test: The spec's scorer on the test split.
        test_metrics: Every test metric the refit computed, by name.

    Returns:
        The scores the notes show.
    """
    from optuna_dashboard import save_note

    # A random sampler: nothing here samples, and a Trial calls its sampler's before_trial.
    study = optuna.load_study(
        study_name=spec.name, storage=storage, sampler=optuna.samplers.RandomSampler()
    )
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(spec.name), trial
    )
    frozen = storage.get_trial(trial_id)
    fold_scores = frozen.user_attrs.get("fold_scores") or []
    std = frozen.user_attrs.get("score_std")
    scores = RefitScores(
        metric=metric_name(study, spec),
        trial=trial,
        cv_mean=float(frozen.values[0]),  # the first objective: the CV score
        cv_std=None if std is None else float(std),
        folds=len(fold_scores) or spec.cv.folds,
        test=float(test),
        test_metrics=dict(test_metrics),
        trained_on=spec.refit.trained_on,
    )
    write_study_note(study, spec, refit=scores)
    # save_note takes a Study or a Trial, and optuna-dashboard has no public way to note a
    # finished trial (a FrozenTrial); Optuna's docs advise against building a Trial by hand
    # (optimize and ask do), and here it only reads the trial.
    save_note(optuna.Trial(study, trial_id), trial_refit_note(scores))
    return scores


#: The id under which ``hpo report`` saves its curves figure for the dashboard; each report
#: replaces the one before.
CURVES_FIGURE_ID = "hpo-report-curves"


def save_curves_figure(study: optuna.Study, figure: Any) -> None:
    """Show ``figure`` (a plotly figure of the trials' reports) on the study's dashboard page,
    in place of the one saved before."""
    from optuna_dashboard import save_plotly_graph_object

    save_plotly_graph_object(study, figure, graph_object_id=CURVES_FIGURE_ID)


def record_end(study: optuna.Study, spec: StudySpec, reason: str) -> None:
    """Keep why the study ended (``ENDED_ATTR``, which ``hpo studies`` shows) and say it on
    top of the study's note (below a refit's line); done once per reason, not per claim."""
    if study.user_attrs.get(ENDED_ATTR) == reason:
        return
    study.set_user_attr(ENDED_ATTR, reason)
    from optuna_dashboard import get_note, save_note

    paragraphs = [p for p in get_note(study).split("\n\n") if p.strip()] or [spec_note(spec)]
    paragraphs = [p for p in paragraphs if not p.startswith(ENDED_LINE_START)]
    at = 1 if paragraphs and paragraphs[0].startswith(REFIT_LINE_START) else 0
    paragraphs.insert(at, f"{ENDED_LINE_START}{reason}")
    save_note(study, "\n\n".join(paragraphs))


def _cv(scores: RefitScores) -> str:
    if scores.cv_std is None:
        return f"{scores.cv_mean:.4f}"
    return f"{scores.cv_mean:.4f} ± {scores.cv_std:.4f}"


def _cv_kind(scores: RefitScores) -> str:
    return f"{scores.folds}-fold mean" + ("" if scores.cv_std is None else " ± std")


def _without_empty(full: Any, explicit: Any) -> Any:
    """``full`` less the keys whose value is empty (None, "", {}, []) and not set explicitly
    (absent from ``explicit``, the same dump without defaults)."""
    if not isinstance(full, dict):
        return full
    explicit = explicit if isinstance(explicit, dict) else {}
    kept: dict[str, Any] = {}
    for key, value in full.items():
        value = _without_empty(value, explicit.get(key))
        if key not in explicit and (value is None or value in ("", {}, [])):
            continue  # (a section left empty once its empty keys are gone goes too)
        kept[key] = value
    return kept
