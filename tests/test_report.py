"""hpo report: one self-contained HTML file, checked by rendering it in headless Chromium, and
stored as an artifact of the study.

Chromium is Debian's ``chromium`` package (``scripts/ensure-chromium.sh`` installs it). It
renders the file with every host name unresolvable, so a figure that needed a CDN would stay
blank.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import run_hpo, tiny_spec
from optuna.distributions import FloatDistribution, IntDistribution
from PIL import Image

from hpo.errors import HpoError
from hpo.results.artifacts import REPORT_ARTIFACT_ATTR
from hpo.results.refit import refit_study
from hpo.results.report import write_report
from hpo.service.storage import open_storage
from hpo.service.study import SPEC_ATTR, register_study
from hpo.service.worker import run_worker
from hpo.spec.study_spec import parse_spec

CHROMIUM = Path("/usr/bin/chromium")

SEARCH_FIGURES = [
    "Optimization history",
    "Parameter importances",
    "Parallel coordinates",
    "Slices",
    "Running mean score after each fold",
]
REFIT_FIGURES = ["Learning curves (refit)", "Confusion matrix on the test split (refit)"]


def report_spec(trials: int) -> dict[str, Any]:
    return tiny_spec(
        name="report-digits",
        budget={"trials": trials},
        fixed={"max_epochs": 4, "batch_size": 128, "early_stopping_patience": 2},
    )


def run_study(url: str, raw: dict[str, Any]) -> None:
    spec = parse_spec(raw)
    register_study(spec, open_storage(url))
    run_worker(spec.name, url, worker_index=0, heartbeat_seconds=0, threads=1)


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must render the report: run scripts/ensure-chromium.sh first")
        pytest.skip("no chromium: run scripts/ensure-chromium.sh")
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # Offline: no host name resolves, so nothing can come from a CDN.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=20000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


def rendered_dom(page: Path, tmp_path: Path) -> str:
    done = chromium("--dump-dom", page.resolve().as_uri(), profile=tmp_path / "profile-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def count_class(dom: str, name: str) -> int:
    return len(re.findall(rf'class="(?:[^"]* )?{re.escape(name)}(?: [^"]*)?"', dom))


@pytest.mark.slow
def test_report_renders_every_figure_offline(sqlite_url: str, tmp_path: Path) -> None:
    run_study(sqlite_url, report_spec(trials=3))
    refit_study(
        open_storage(sqlite_url),
        "report-digits",
        results_dir=tmp_path / "results",
        artifacts=tmp_path / "store",
    )

    report = write_report(
        open_storage(sqlite_url),
        "report-digits",
        results_dir=tmp_path / "results",
        artifacts=tmp_path / "store",
    )

    assert report.path == tmp_path / "results" / "report-digits" / "report.html"
    assert report.figures == SEARCH_FIGURES + REFIT_FIGURES and report.notes == {}
    text = report.path.read_text()
    assert not re.search(r"<script[^>]+src=", text), "plotly.js must be embedded, not linked"
    assert text.count("<script") >= 1 + len(report.figures)  # the library once, then figures
    assert "test split (refit)" in text and "accuracy" in text

    dom = rendered_dom(report.path, tmp_path)
    # plotly adds these classes only once a figure has been drawn.
    assert count_class(dom, "js-plotly-plot") == len(report.figures)
    assert count_class(dom, "plot-container") == len(report.figures)
    assert count_class(dom, "main-svg") >= 2 * len(report.figures)
    for title in report.figures:
        assert f"<h2>{title}</h2>" in dom

    shot = tmp_path / "report.png"
    done = chromium(
        f"--screenshot={shot}",
        "--window-size=1280,4200",
        report.path.resolve().as_uri(),
        profile=tmp_path / "profile-shot",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    colors = image.getcolors(maxcolors=1 << 20) or []
    painted = sum(count for count, rgb in colors if rgb != (255, 255, 255))
    assert len(colors) > 200, "a page of plots has many colours; a blank one has a few"
    assert painted > 0.1 * image.width * image.height


def test_report_notes_what_one_trial_cannot_show(sqlite_url: str, tmp_path: Path) -> None:
    run_study(sqlite_url, report_spec(trials=1))
    out = tmp_path / "one.html"

    report = write_report(
        open_storage(sqlite_url),
        "report-digits",
        out=out,
        results_dir=tmp_path,
        artifacts=tmp_path / "store",
    )

    assert report.path == out and out.is_file()
    assert "Optimization history" in report.figures
    assert "at least 2 completed trials" in report.notes["Parameter importances"]
    assert "hpo refit" in report.notes["Learning curves"]
    assert not any("refit)" in title for title in report.figures)
    text = out.read_text()
    assert "at least 2 completed trials" in text and "hpo refit" in text


@pytest.mark.parametrize("registered", ["now", "before-metric-names"])
def test_report_names_the_metric_on_the_axes(
    sqlite_url: str, tmp_path: Path, registered: str
) -> None:
    """The figures say "balanced_accuracy", not Optuna's "Objective Value", also for a study
    registered before hpo stored a metric name (its spec's scoring names it). Three made-up
    trials draw every search figure without training anything."""
    spec = parse_spec({**report_spec(trials=3), "scoring": "balanced_accuracy"})
    storage = open_storage(sqlite_url)
    if registered == "now":
        register_study(spec, storage)
    else:
        old = optuna.create_study(study_name=spec.name, storage=storage, direction="maximize")
        old.set_user_attr(SPEC_ATTR, spec.to_json())
    study = optuna.load_study(study_name=spec.name, storage=storage)
    assert study.metric_names == (["balanced_accuracy"] if registered == "now" else None)
    space = {
        "module__hidden1": IntDistribution(8, 32),
        "lr": FloatDistribution(1e-3, 1e-1, log=True),
    }
    for hidden, lr, score in ((8, 0.01, 0.5), (16, 0.05, 0.7), (32, 0.002, 0.6)):
        study.add_trial(
            optuna.trial.create_trial(
                params={"module__hidden1": hidden, "lr": lr},
                distributions=space,
                value=score,
                intermediate_values={0: score - 0.1, 1: score},
            )
        )

    report = write_report(storage, spec.name, results_dir=tmp_path, artifacts=tmp_path / "store")

    assert report.figures == SEARCH_FIGURES
    text = report.path.read_text()
    assert "Objective Value" not in text and "Objective 0" not in text
    titles = re.findall(r'"title":\{"text":"([^"]*)"\}', text)
    # optimization history and slices (y axes), parallel coordinates (colour bar), folds
    assert titles.count("balanced_accuracy") >= 3, titles
    assert "mean balanced_accuracy of the folds so far" in titles
    assert "<th>best CV balanced_accuracy</th><td>0.7 (trial 1)</td>" in text


def test_report_of_a_study_without_completed_trials(sqlite_url: str, tmp_path: Path) -> None:
    register_study(parse_spec(report_spec(trials=2)), open_storage(sqlite_url))
    study = optuna.load_study(study_name="report-digits", storage=sqlite_url)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)

    report = write_report(
        open_storage(sqlite_url), "report-digits", results_dir=tmp_path, artifacts=tmp_path
    )

    assert report.figures == []
    assert set(report.notes) == {*SEARCH_FIGURES, "Learning curves"}
    assert "No trial has completed yet" in report.notes["Slices"]
    assert "hpo worker --study report-digits" in report.notes["Slices"]  # the real name
    assert "run hpo refit report-digits," in report.notes["Learning curves"]
    assert "1 FAIL" in report.path.read_text()
    assert report.refit_source is None


def test_report_refuses_a_study_copied_under_a_name_that_leaves_the_results_folder(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A study copied with plain Optuna to ``../../escape`` carries a spec of another name:
    refused before anything is written (``hpo.results.paths.study_folder`` guards the path
    too, tested in test_refit.py)."""
    register_study(parse_spec(report_spec(trials=2)), open_storage(sqlite_url))
    optuna.copy_study(
        from_study_name="report-digits",
        from_storage=sqlite_url,
        to_storage=sqlite_url,
        to_study_name="../../escape",
    )
    results = tmp_path / "inner" / "deeper" / "results"
    before = sorted(tmp_path.rglob("*"))
    for out in (None, tmp_path / "pages" / "escape.html"):
        with pytest.raises(
            HpoError, match=r"spec is named 'report-digits', not '\.\./\.\./escape'"
        ):
            write_report(
                open_storage(sqlite_url),
                "../../escape",
                out=out,
                results_dir=results,
                artifacts=results / "store",
            )
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_report_travels_as_an_artifact_and_reads_the_refit_from_artifacts(
    sqlite_url: str, tmp_path: Path
) -> None:
    run_study(sqlite_url, report_spec(trials=1))
    refit = refit_study(
        open_storage(sqlite_url),
        "report-digits",
        results_dir=tmp_path / "here",
        artifacts=tmp_path / "store",
    )
    # Another machine: the storage and the artifact folder, no results/<study>/.
    for path in refit.files.values():
        path.unlink()

    report = write_report(
        open_storage(sqlite_url),
        "report-digits",
        results_dir=tmp_path / "elsewhere",
        artifacts=tmp_path / "store",
    )

    assert report.refit_source == "artifacts"
    assert report.figures[-2:] == REFIT_FIGURES
    assert f"accuracy {refit.metrics['accuracy']:.4g}" in report.path.read_text()
    study = optuna.load_study(study_name="report-digits", storage=sqlite_url)
    assert study.user_attrs[REPORT_ARTIFACT_ATTR] == report.artifact_id
    [meta] = [
        m
        for m in optuna.artifacts.get_all_artifact_meta(study)
        if m.artifact_id == report.artifact_id
    ]
    assert meta.filename == "report.html" and meta.mimetype == "text/html"
    stored = (tmp_path / "store" / report.artifact_id).read_bytes()
    assert stored == report.path.read_bytes()

    # A wrong artifact folder: the report says where the refit's files went, and how to
    # name the folder.
    lost = write_report(
        open_storage(sqlite_url),
        "report-digits",
        results_dir=tmp_path / "elsewhere",
        artifacts=tmp_path / "empty",
    )
    assert lost.refit_source is None
    note = lost.notes["Learning curves"]
    assert "was refit" in note and str(tmp_path / "store") in note and "--artifacts" in note


@pytest.mark.slow
def test_cli_report(sqlite_url: str, tmp_path: Path) -> None:
    register_study(parse_spec(report_spec(trials=2)), open_storage(sqlite_url))
    done = run_hpo(
        "report",
        "report-digits",
        "--storage",
        sqlite_url,
        "--out",
        "r.html",
        "--artifacts",
        "store",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "r.html" in done.stdout and (tmp_path / "r.html").is_file()
    assert "No trial has completed yet" in done.stderr  # the notes are shown too
    [stored] = (tmp_path / "store").iterdir()
    assert stored.read_bytes() == (tmp_path / "r.html").read_bytes()
