"""One self-contained HTML report of a study: the search, and the refit when it has run.

``write_report`` puts on one page, top to bottom:

- a summary: the spec (model, dataset, sampler, pruner, scoring), trials by state, the best
  CV score and configuration, the refit's test metrics and, when the test score strays far
  from the CV score, a sentence saying by how much and why it may (``report_tables``);
- the search's figures (``report_search``): optimization history, parameter importances,
  parallel coordinates (Optuna's), slices in a grid with the spec's log and categorical axes,
  and each trial's running mean score after each fold, named in legend and hover;
- a table of the time each trial and fold took (``report_tables``);
- when ``hpo refit`` has run, its figures (``report_refit``): learning curves; a confusion
  matrix (classification); predicted vs true and residuals on the test split (regression);
  the fitted curve over the data (a regression on one input).

The refit's files are read from the study's refit artifacts (``hpo.results.artifacts``) when
the artifact folder holds them, so a report written on another machine has them too, else
from ``results/<study>/``. plotly.js is embedded once, so the file opens offline and needs no
CDN. The figures name the study's metric on their axes ("accuracy", not Optuna's "Objective
Value"; ``hpo.spec.objectives.metric_name``). A figure that cannot be drawn (parameter
importances need two completed trials and a parameter that varies) becomes a short note,
never an error.

The page is written to ``results/<study>/report.html`` (or ``out``) and uploaded as an
artifact of the study (user_attr ``report_artifact``), so optuna-dashboard shows it.
"""

from __future__ import annotations

import html
import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from hpo.errors import HpoError
from hpo.files import check_output, write_output
from hpo.results.artifacts import (
    download_refit,
    recorded_refit,
    resolve_artifacts_dir,
    upload_report,
)
from hpo.results.paths import study_folder
from hpo.results.refit import (
    CONFUSION_FILE,
    CURVE_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
)
from hpo.results.report_refit import refit_sections
from hpo.results.report_search import SEARCH_TITLES, search_sections
from hpo.results.report_section import Section, sections_html
from hpo.results.report_tables import summary_html, timing_section
from hpo.service.notes import save_curves_figure
from hpo.service.study import load_study
from hpo.spec.objectives import metric_name

REPORT_FILE = "report.html"
#: The refit's files the report reads, by kind, and their names in ``results/<study>/``.
REFIT_FILES = {
    "metrics": METRICS_FILE,
    "history": HISTORY_FILE,
    "confusion_matrix": CONFUSION_FILE,
    "predictions": PREDICTIONS_FILE,
    "curve": CURVE_FILE,
}


@dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote.

    Attributes:
        path: The HTML file.
        figures: Titles of the figures drawn, in page order.
        tables: Titles of the tables shown (the time per trial and fold).
        notes: Why each figure that was left out is missing, by title.
        artifact_id: The id of the page as an artifact of the study.
        refit_source: Where the refit's files were read from: ``artifacts`` (the study's
            refit artifacts), ``folder`` (``<results_dir>/<name>/``) or None (no refit).
    """

    path: Path
    figures: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    artifact_id: str | None = None
    refit_source: str | None = None


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
        results_dir: Where ``hpo refit`` wrote ``<name>/``; its files (learning curves,
            confusion matrix, predictions, fitted curve) are read from there when the artifact
            folder does not hold them. Default ``results``.
        artifacts: The artifact folder: the refit's files are read from it, and the page is
            uploaded to it (made when missing). Default: ``$HPO_ARTIFACTS``, else ``results``.

    Returns:
        The path written, the figures and tables shown, the notes for the figures left out,
        and the page's artifact id.

    Raises:
        StudyError: No such study.
        HpoError: ``out`` is not given and the study's name cannot be a folder inside
            ``results_dir`` (``hpo.results.paths.study_folder``).
        OSError: the page cannot be written where it goes (``hpo.files.write_output``: a
            FIFO or a device is refused, a full disk leaves the file as it was).
    """
    study, spec = load_study(storage, name)
    metric = metric_name(study, spec)
    if out is None:
        folder = study_folder(results_dir, name)
        refit_folder: Path | None = folder
        path = folder / REPORT_FILE
    else:
        path = Path(out)
        try:
            refit_folder = study_folder(results_dir, name)
        except HpoError:
            # A name that cannot be a folder under results_dir (a study made with plain
            # Optuna): the page goes to ``out``, and the refit is read from artifacts only.
            refit_folder = None
    check_output(path)  # a FIFO or a device is refused before the page is made
    artifacts_dir = resolve_artifacts_dir(artifacts)

    with tempfile.TemporaryDirectory(prefix="hpo-report-") as downloads:
        refit_files, source, missing = _refit_files(
            study, artifacts_dir, refit_folder, Path(downloads)
        )
        metrics_path = refit_files.get("metrics")
        refit = None if metrics_path is None else json.loads(metrics_path.read_text("utf-8"))
        with warnings.catch_warnings():
            # Optuna warns about what the notes already say (too few trials, empty figures).
            warnings.simplefilter("ignore")
            sections: list[Section] = [
                *search_sections(study, spec, metric),
                timing_section(study, metric),
                *refit_sections(name, refit_files, missing, refit),
            ]
        summary = summary_html(study, spec, metric, refit)
    curves = [s.figure for s in sections if s.title == SEARCH_TITLES[-1] and s.figure is not None]
    if curves:  # the dashboard's own plot of them cannot be named (hpo.service.notes)
        save_curves_figure(study, curves[0])

    path.parent.mkdir(parents=True, exist_ok=True)
    write_output(
        path,
        _PAGE.format(
            title=html.escape(f"hpo report: {name}"),
            summary=summary,
            body=sections_html(sections),
            css=_CSS,
        ),
    )
    return Report(
        path=path,
        figures=[s.title for s in sections if s.figure is not None],
        tables=[s.title for s in sections if s.table],
        notes={s.title: s.note for s in sections if s.note},
        artifact_id=upload_report(study, artifacts_dir, path),
        refit_source=source,
    )


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


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; }
table.summary { border-collapse: collapse; }
table.summary th, table.summary td { text-align: left; padding: 0.25em 1em 0.25em 0;
  vertical-align: top; border-bottom: 1px solid #eee; }
p.note { color: #666; font-style: italic; }
p.gap { background: #fff6e0; border-left: 4px solid #e0a800; padding: 0.5em 0.8em; }
p.caption { color: #444; }
div.scroll { max-height: 30em; overflow-y: auto; border: 1px solid #ddd; }
table.timing { border-collapse: collapse; width: 100%; font-size: 0.9em;
  font-variant-numeric: tabular-nums; }
table.timing th { position: sticky; top: 0; background: #f4f4f4; text-align: left; }
table.timing th, table.timing td { padding: 0.2em 0.6em; border-bottom: 1px solid #eee;
  white-space: nowrap; }
table.timing tr.best td { font-weight: bold; background: #eef6ff; }
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
