"""One self-contained HTML report of a study: the search, and the refit when it has run.

``write_report`` draws Optuna's plotly figures (optimization history, parameter importances,
parallel coordinates, slices, the running mean score after each fold) and, when ``hpo refit``
has run, its learning curves and confusion matrix: read from the study's refit artifacts
(``hpo.results.artifacts``) when the artifact folder holds them, so a report written on
another machine has them too, else from ``results/<study>/``. plotly.js is embedded once, so
the file opens offline and needs no CDN. The search's figures name the study's metric on their
axes ("accuracy", not Optuna's "Objective Value"; ``hpo.service.study.metric_name``). A figure
that cannot be drawn (parameter importances need two completed trials and a parameter that
varies) becomes a short note, never an error.

The page is written to ``results/<study>/report.html`` (or ``out``) and uploaded as an
artifact of the study (user_attr ``report_artifact``), so optuna-dashboard shows it.
"""

from __future__ import annotations

import html
import json
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import plotly.graph_objects as go
from optuna import visualization
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.results.artifacts import (
    download_refit,
    recorded_refit,
    resolve_artifacts_dir,
    upload_report,
)
from hpo.results.paths import study_folder
from hpo.results.refit import CONFUSION_FILE, HISTORY_FILE, METRICS_FILE, TEST_ATTR_PREFIX
from hpo.service.study import load_study, metric_name
from hpo.spec.study_spec import StudySpec

REPORT_FILE = "report.html"
FIGURE_HEIGHT = 460
#: The refit's files the report reads, by kind, and their names in ``results/<study>/``.
REFIT_FILES = {
    "metrics": METRICS_FILE,
    "history": HISTORY_FILE,
    "confusion_matrix": CONFUSION_FILE,
}


@dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote.

    Attributes:
        path: The HTML file.
        figures: Titles of the figures drawn, in page order.
        notes: Why each figure that was left out is missing, by title.
        artifact_id: The id of the page as an artifact of the study.
        refit_source: Where the refit's files were read from: ``artifacts`` (the study's
            refit artifacts), ``folder`` (``<results_dir>/<name>/``) or None (no refit).
    """

    path: Path
    figures: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    artifact_id: str | None = None
    refit_source: str | None = None


@dataclass(frozen=True)
class _Section:
    title: str
    figure: go.Figure | None = None
    note: str = ""


def write_report(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    out: str | Path | None = None,
    results_dir: str | Path = "results",
    artifacts: str | Path | None = None,
) -> Report:
    """Write the HTML report of study ``name`` and upload it as an artifact of the study.

    Args:
        storage: The storage the study lives in.
        name: A registered study; it may have no completed trial yet (the figures then say so).
        out: The HTML file to write. Default ``<results_dir>/<name>/report.html``.
        results_dir: Where ``hpo refit`` wrote ``<name>/``; its learning curves and confusion
            matrix are read from there when the artifact folder does not hold them. Default
            ``results``.
        artifacts: The artifact folder: the refit's files are read from it, and the page is
            uploaded to it (made when missing). Default: ``$HPO_ARTIFACTS``, else ``results``.

    Returns:
        The path written, the figures drawn, the notes for those left out, and the page's
        artifact id.

    Raises:
        StudyError: No such study.
        HpoError: ``out`` is not given and the study's name cannot be a folder inside
            ``results_dir`` (``hpo.results.paths.study_folder``).
    """
    study, spec = load_study(storage, name)
    metric = metric_name(study, spec)
    if out is None:
        refit_folder: Path | None = study_folder(results_dir, name)
        path = refit_folder / REPORT_FILE
    else:
        path = Path(out)
        try:
            refit_folder = study_folder(results_dir, name)
        except HpoError:
            # A name that cannot be a folder under results_dir (a study made with plain
            # Optuna): the page goes to ``out``, and the refit is read from artifacts only.
            refit_folder = None
    artifacts_dir = resolve_artifacts_dir(artifacts)

    with tempfile.TemporaryDirectory(prefix="hpo-report-") as downloads:
        refit_files, source, missing = _refit_files(
            study, artifacts_dir, refit_folder, Path(downloads)
        )
        with warnings.catch_warnings():
            # Optuna warns about what the notes already say (too few trials, empty figures).
            warnings.simplefilter("ignore")
            sections = [
                *_search_sections(study, metric),
                *_refit_sections(name, refit_files, missing),
            ]
        summary = _summary(study, spec, metric, refit_files.get("metrics"))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        _PAGE.format(
            title=html.escape(f"hpo report: {name}"),
            summary=summary,
            body=_body(sections),
            css=_CSS,
        ),
        encoding="utf-8",
    )
    return Report(
        path=path,
        figures=[s.title for s in sections if s.figure is not None],
        notes={s.title: s.note for s in sections if s.figure is None},
        artifact_id=upload_report(study, artifacts_dir, path),
        refit_source=source,
    )


def _body(sections: list[_Section]) -> str:
    parts: list[str] = []
    plotly_js_written = False
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        if section.figure is not None:
            # Optuna sizes some figures (slices) by their number of parameters; let every
            # figure fit the page's width instead.
            section.figure.update_layout(
                height=FIGURE_HEIGHT,
                width=None,
                autosize=True,
                title=None,
                margin={"t": 30, "b": 50},
            )
            parts.append(
                section.figure.to_html(
                    full_html=False,
                    include_plotlyjs=not plotly_js_written,
                    config={"displaylogo": False, "responsive": True},
                )
            )
            plotly_js_written = True
        else:
            parts.append(f'<p class="note">{html.escape(section.note)}</p>')
        parts.append("</section>")
    return "\n".join(parts)


def _refit_files(
    study: optuna.Study, artifacts_dir: Path, folder: Path | None, downloads: Path
) -> tuple[dict[str, Path], str | None, str]:
    """The refit's files by kind, where they came from (``artifacts``, ``folder`` or None),
    and, when the study records a refit whose artifacts could not be read, why."""
    record = recorded_refit(study.user_attrs)
    missing = ""
    if record is not None:
        try:
            files = download_refit(record, artifacts_dir, downloads, tuple(REFIT_FILES))
            return files, "artifacts", ""
        except HpoError as error:
            missing = str(error)
    if folder is None:
        return {}, None, missing
    local = {kind: folder / file for kind, file in REFIT_FILES.items()}
    found = {kind: path for kind, path in local.items() if path.is_file()}
    return found, ("folder" if found else None), missing


def _search_sections(study: optuna.Study, metric: str) -> list[_Section]:
    """Optuna's figures of the search, their axes naming ``metric``."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        note = (
            "No trial has completed yet: run the study first "
            f"(hpo worker --study {study.study_name})."
        )
        titles = (
            "Optimization history",
            "Parameter importances",
            "Parallel coordinates",
            "Slices",
            "Running mean score after each fold",
        )
        return [_Section(title, note=note) for title in titles]

    varying = _varying_params(complete)
    no_params = "No searched parameter takes more than one value, so there is nothing to plot."
    named = {"target_name": metric}
    sections = [
        _plotted("Optimization history", visualization.plot_optimization_history, study, **named),
    ]
    if len(complete) < 2:
        sections.append(
            _Section(
                "Parameter importances",
                note="Parameter importances need at least 2 completed trials; "
                f"this study has {len(complete)}.",
            )
        )
    elif not varying:
        sections.append(_Section("Parameter importances", note=no_params))
    else:
        sections.append(
            _plotted(
                "Parameter importances",
                visualization.plot_param_importances,
                study,
                varying,
                **named,
            )
        )
    for title, plot in (
        ("Parallel coordinates", visualization.plot_parallel_coordinate),
        ("Slices", visualization.plot_slice),
    ):
        if varying:
            sections.append(_plotted(title, plot, study, varying, **named))
        else:
            sections.append(_Section(title, note=no_params))
    folds = _plotted(
        "Running mean score after each fold", visualization.plot_intermediate_values, study
    )
    if folds.figure is not None:
        folds.figure.update_xaxes(title_text="fold (0 = first)", dtick=1)
        folds.figure.update_yaxes(title_text=f"mean {metric} of the folds so far")
    sections.append(folds)
    return sections


def _varying_params(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    values: dict[str, set[str]] = {}
    for trial in trials:
        for key, value in trial.params.items():
            values.setdefault(key, set()).add(repr(value))
    return [key for key, seen in values.items() if len(seen) > 1]


def _plotted(
    title: str,
    plot: Callable[..., go.Figure],
    study: optuna.Study,
    params: list[str] | None = None,
    **options: Any,
) -> _Section:
    try:
        if params is not None:
            options["params"] = params
        figure = plot(study, **options)
    except (ValueError, RuntimeError, ZeroDivisionError) as error:
        return _Section(title, note=f"Optuna could not draw this figure: {error}")
    if not figure.data:
        return _Section(title, note="Nothing to draw: no trial recorded what this figure shows.")
    return _Section(title, figure=figure)


def _refit_sections(name: str, files: dict[str, Path], missing: str) -> list[_Section]:
    history_path = files.get("history")
    if history_path is None:
        note = (
            f"The best configuration has not been refit yet; run hpo refit {name}, "
            "then write the report again to add its learning curves and confusion matrix."
        )
        if missing:
            note = f"The study was refit, but its learning curves could not be read: {missing}."
        return [_Section("Learning curves", note=note)]
    history = pd.DataFrame(json.loads(history_path.read_text(encoding="utf-8")))
    curves = go.Figure()
    for column, label in (("train_loss", "training loss"), ("valid_loss", "validation loss")):
        if column in history:
            curves.add_trace(
                go.Scatter(x=history["epoch"], y=history[column], mode="lines+markers", name=label)
            )
    curves.update_layout(xaxis_title="epoch", yaxis_title="loss", template="plotly_white")
    sections = [_Section("Learning curves (refit)", figure=curves)]

    confusion_path = files.get("confusion_matrix")
    if confusion_path is not None:
        matrix = pd.read_csv(confusion_path, index_col=0)
        labels = [str(c) for c in matrix.columns]
        heatmap = go.Figure(
            go.Heatmap(
                z=matrix.to_numpy(),
                x=labels,
                y=[str(i) for i in matrix.index],
                text=matrix.to_numpy(),
                texttemplate="%{text}",
                colorscale="Blues",
                hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
            )
        )
        heatmap.update_layout(template="plotly_white")
        heatmap.update_xaxes(title_text="predicted class", type="category")
        heatmap.update_yaxes(title_text="true class", type="category", autorange="reversed")
        sections.append(_Section("Confusion matrix on the test split (refit)", figure=heatmap))
    return sections


def _summary(study: optuna.Study, spec: StudySpec, metric: str, metrics_path: Path | None) -> str:
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    rows: list[tuple[str, str]] = [
        ("model", spec.model),
        ("dataset", spec.dataset.name),
        ("sampler", spec.sampler.name),
        ("pruner", spec.pruner.name),
        ("scoring", f"{spec.scoring} ({spec.cv.folds}-fold CV, greater is better)"),
        ("trials", ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none yet"),
    ]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        rows.append((f"best CV {metric}", f"{best.value:.6g} (trial {best.number})"))
        params = spec.configuration(best.params)
        rows.append(("best configuration", ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())))
    test = {
        k.removeprefix(TEST_ATTR_PREFIX): v
        for k, v in study.user_attrs.items()
        if k.startswith(TEST_ATTR_PREFIX)
    }
    if metrics_path is not None:
        test = json.loads(metrics_path.read_text(encoding="utf-8")).get("test", test)
    if test:
        rows.append(("test split (refit)", ", ".join(f"{k} {_fmt(v)}" for k, v in test.items())))
    cells = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f'<table class="summary">{cells}</table><p class="stamp">written {stamp}</p>'


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; }
table.summary { border-collapse: collapse; }
table.summary th, table.summary td { text-align: left; padding: 0.25em 1em 0.25em 0;
  vertical-align: top; border-bottom: 1px solid #eee; }
p.note { color: #666; font-style: italic; }
p.stamp { color: #999; font-size: 0.85em; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<h1>{title}</h1>
{summary}
{body}
</body>
</html>
"""
