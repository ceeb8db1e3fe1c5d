"""hpo report: one self-contained HTML file, checked by rendering it in headless Chromium, and
stored as an artifact of the study.

Chromium is Debian's ``chromium`` package (``scripts/ensure-chromium.sh`` installs it). It
renders the file with every host name unresolvable, so a figure that needed a CDN would stay
blank.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard
import pytest
from conftest import run_hpo, tiny_spec
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from PIL import Image

from hpo.errors import HpoError
from hpo.results.artifacts import REFIT_ARTIFACTS_ATTR, REPORT_ARTIFACT_ATTR
from hpo.results.gap import gap_sentence, large_gap
from hpo.results.refit import refit_study
from hpo.results.report import write_report
from hpo.results.report_search import fold_figure, log_ticks, slice_figure, varying_params
from hpo.service.notes import CURVES_FIGURE_ID
from hpo.service.storage import open_storage
from hpo.service.study import SPEC_ATTR, register_study
from hpo.service.worker import run_worker
from hpo.spec.study_spec import StudySpec, parse_spec

CHROMIUM = Path("/usr/bin/chromium")

SEARCH_FIGURES = [
    "Optimization history",
    "Parameter importances",
    "Parallel coordinates",
    "Slices",
    "Running mean score after each fold",
]
REFIT_FIGURES = ["Learning curves (refit)", "Confusion matrix on the test split (refit)"]
REGRESSION_FIGURES = [
    "Learning curves (refit)",
    "Predicted vs true on the test split (refit)",
    "Residuals on the test split (refit)",
    "Fitted curve over the data (refit)",
]
TIMING = "Time per trial and fold"


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


def axis_titles(dom: str) -> list[str]:
    """The axis titles plotly drew (``xtitle``, ``ytitle``, ``x2title``...)."""
    return re.findall(r'<text class="[xy]\d*title"[^>]*>([^<]*)</text>', dom)


def timing_rows(page: str) -> list[list[str]]:
    """The cells of the timing table's body rows."""
    [body] = re.findall(r'<table class="timing">.*?<tbody>(.*?)</tbody>', page, re.S)
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body)]


#: A space with a log axis, an integer and a categorical, for made-up trials.
MADE_UP_SPACE = {
    "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
    "module__hidden1": {"type": "int", "low": 8, "high": 32},
    "module__activation": {"type": "categorical", "choices": ["relu", "tanh", "leaky_relu"]},
}


def made_up_study(url: str) -> tuple[optuna.Study, StudySpec]:
    """A registered study with four trials told by hand (nothing trains): two complete
    (trial 1 the best), one pruned after its first fold, one failed."""
    spec = parse_spec({**report_spec(trials=4), "space": MADE_UP_SPACE})
    register_study(spec, open_storage(url))
    study = optuna.load_study(study_name=spec.name, storage=url)
    space = {
        "lr": FloatDistribution(1e-3, 1e-1, log=True),
        "module__hidden1": IntDistribution(8, 32),
        "module__activation": CategoricalDistribution(["relu", "tanh", "leaky_relu"]),
    }
    told = (
        (TrialState.COMPLETE, 0.80, (0.002, 8, "relu"), [1.5, 2.0], [4, 3], 0.02),
        (TrialState.COMPLETE, 0.90, (0.03, 32, "tanh"), [0.5, 0.25], [4, 4], 0.01),
        (TrialState.PRUNED, None, (0.09, 16, "tanh"), [4.0], [2], None),
    )
    for state, value, (lr, hidden, activation), seconds, epochs, std in told:
        scores = [value or 0.4] * len(seconds)
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params={"lr": lr, "module__hidden1": hidden, "module__activation": activation},
                distributions=space,
                intermediate_values=dict(enumerate(scores)),
                user_attrs={
                    "fit_seconds": seconds,
                    "epochs": epochs,
                    "fold_scores": scores,
                    **({} if std is None else {"score_std": std}),
                },
            )
        )
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    return study, spec


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
    for key, value in (("model", "mlp"), ("dataset", "digits"), ("sampler", "random")):
        assert f"<tr><th>{key}</th><td>{value}</td></tr>" in dom
    assert "accuracy" in axis_titles(dom)

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


@pytest.mark.slow
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


def test_slices_are_a_grid_with_the_spec_s_log_and_categorical_axes(sqlite_url: str) -> None:
    """One small plot per parameter, 2 columns for 3 parameters: lr on a log axis with one
    tick per decade, the activation's choices as plain text (Optuna quotes them, 'relu') in
    the spec's order, also the choice no trial drew; colour is the trial number."""
    study, spec = made_up_study(sqlite_url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))

    figure = slice_figure(complete, spec, "accuracy", varying_params(complete, spec))

    assert [a.text for a in figure.layout.annotations] == list(MADE_UP_SPACE)
    layout = figure.layout
    assert layout.xaxis.domain[0] == 0 and layout.xaxis2.domain[0] > 0.5  # side by side
    assert layout.xaxis3.domain == layout.xaxis.domain  # the third starts a second row
    assert layout.xaxis.type == "log" and list(layout.xaxis.ticktext) == ["0.001", "0.01", "0.1"]
    assert layout.xaxis2.type == "linear"
    assert layout.xaxis3.type == "category"
    assert list(layout.xaxis3.categoryarray) == ["relu", "tanh", "leaky_relu"]
    [activation] = [t for t in figure.data if t.name == "module__activation"]
    assert list(activation.x) == ["relu", "tanh"] and list(activation.y) == [0.8, 0.9]
    assert list(activation.marker.color) == [0, 1]  # the trial numbers
    assert layout.yaxis.title.text == "accuracy" and layout.yaxis3.title.text == "accuracy"


@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [
        (1e-3, 1e-1, [0.001, 0.01, 0.1]),
        (3e-3, 3e-2, [0.003, 0.01, 0.03]),  # under two decades: 1-3 steps
        (5e-5, 5e-3, [1e-4, 3e-4, 1e-3, 3e-3]),
        (2e-3, 4e-3, [2e-3, 4e-3]),  # narrower than 1-2-5 steps: the ends
        (1e-9, 1.0, [1e-9, 1e-7, 1e-5, 1e-3, 1e-1]),  # many decades: every other one
    ],
)
def test_log_ticks_are_few_and_round(low: float, high: float, ticks: list[float]) -> None:
    assert log_ticks(low, high) == pytest.approx(ticks)


def test_fold_lines_name_their_trial_and_its_params(sqlite_url: str) -> None:
    study, _ = made_up_study(sqlite_url)

    figure = fold_figure(study.get_trials(), "accuracy", best=study.best_trial.number)

    assert figure is not None and figure.layout.showlegend
    assert [t.name for t in figure.data] == ["trial 0", "trial 1 (best)", "trial 2 (pruned)"]
    assert "lr=0.03, module__hidden1=32, module__activation=tanh" in figure.data[1].hovertemplate
    assert figure.data[1].line.width > figure.data[0].line.width
    assert figure.data[2].line.dash == "dot"
    assert figure.layout.yaxis.title.text == "mean accuracy of the folds so far"


def test_epoch_reports_are_drawn_against_epochs(sqlite_url: str) -> None:
    study, _ = made_up_study(sqlite_url)

    figure = fold_figure(study.get_trials(), "accuracy", best=None, over_epochs=True)

    assert figure is not None
    steps = sorted(study.trials[0].intermediate_values)
    assert list(figure.data[0].x) == [step + 1 for step in steps]  # epochs trained
    assert figure.layout.xaxis.title.text == "epoch (a trial's fits one after another)"
    assert figure.layout.yaxis.title.text == "mean held-out accuracy of the folds"
    assert "after epoch %{x}" in figure.data[0].hovertemplate


def test_report_saves_its_curves_for_the_dashboard_named_by_the_metric(
    sqlite_url: str, tmp_path: Path
) -> None:
    study, _ = made_up_study(sqlite_url)

    write_report(
        open_storage(sqlite_url), study.study_name, results_dir=tmp_path, artifacts=tmp_path
    )

    # What the dashboard's page reads: its own JSON API, through its public WSGI app.
    app = optuna_dashboard.wsgi(open_storage(sqlite_url))
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = f"/api/studies/{study._study_id}"
    answer: list[str] = []
    body = b"".join(app(environ, lambda status, headers, *_: answer.append(status)))
    assert answer == ["200 OK"]
    [saved] = json.loads(body)["plotly_graph_objects"]
    assert saved["id"] == CURVES_FIGURE_ID
    figure = json.loads(saved["graph_object"])
    assert figure["layout"]["yaxis"]["title"]["text"] == "mean accuracy of the folds so far"
    assert [trace["name"] for trace in figure["data"]][1] == "trial 1 (best)"


def test_report_tables_the_time_of_every_trial_and_fold(sqlite_url: str, tmp_path: Path) -> None:
    study, _ = made_up_study(sqlite_url)

    report = write_report(
        open_storage(sqlite_url), study.study_name, results_dir=tmp_path, artifacts=tmp_path
    )

    assert report.tables == [TIMING] and TIMING not in report.figures
    page = report.path.read_text()
    rows = timing_rows(page)
    assert [row[:6] for row in rows] == [
        ["0", "COMPLETE", "0.8", "1.50 · 2.00", "4 · 3", "3.50"],
        ["1 (best)", "COMPLETE", "0.9", "0.50 · 0.25", "4 · 4", "0.75"],
        ["2", "PRUNED", "—", "4.00", "2", "4.00"],
        ["3", "FAIL", "—", "—", "—", "—"],
    ]
    assert '<tr class="best"><td>1 (best)</td>' in page
    assert "4 trials, 8.2 s of fitting in all" in page  # 1.5 + 2 + 0.5 + 0.25 + 4
    assert "the slowest: trial 2 (4.0 s), trial 0 (3.5 s), trial 1 (0.8 s)" in page
    assert '<div class="scroll"><table class="timing">' in page  # a long study scrolls
    assert "&#x27;relu&#x27;" not in page and "'relu'" not in page


@pytest.mark.parametrize(
    ("test", "cv", "std", "large"),
    [
        (0.91, 0.97, 0.01, True),  # 0.06: over 2 std (0.02) and 5% (0.0485)
        (0.94, 0.97, 0.01, False),  # 0.03: under 5% of the score
        (0.90, 0.97, 0.04, False),  # 0.07: under 2 std of noisy folds (0.08)
        (0.91, 0.97, None, True),  # no fold std recorded: 5% alone
        (-0.0041, -0.0135, 0.002, True),  # an MSE far better on the test split
        (-0.0130, -0.0135, 0.002, False),
    ],
)
def test_large_gap_is_over_both_2_fold_stds_and_5_percent(
    test: float, cv: float, std: float | None, large: bool
) -> None:
    assert large_gap(test, cv, std) is large


def test_the_gap_sentence_says_which_way_and_why(sqlite_url: str, tmp_path: Path) -> None:
    study, spec = made_up_study(sqlite_url)  # trial 1: CV 0.9, fold std 0.01

    def sentence(test: float) -> str:
        refit = {"test": {"score": test}, "trial": 1, "cv_score": 0.9, "n_test": 447}
        return gap_sentence(study, spec, "accuracy", refit)

    below = sentence(0.84)
    assert below.startswith(
        "The test accuracy 0.84 is 0.06 below the best CV accuracy 0.9 (trial 1): more than 2 "
        "standard deviations of its fold scores (0.01) and 5% of the CV score."
    )
    assert "the best of 2 trials, so it is optimistic" in below
    assert "overfitting to the folds" in below and "only 447 rows" in below
    above = sentence(0.97)
    assert "0.07 above" in above and "whole training split" in above
    assert "1/2 of the training split" in above
    assert "optimistic" not in above
    assert sentence(0.88) == ""

    # Without the refit's files, the study's test_score and refit_trial say it on the page.
    study.set_user_attr("test_score", 0.84)
    study.set_user_attr("refit_trial", 1)
    report = write_report(
        open_storage(sqlite_url), spec.name, results_dir=tmp_path, artifacts=tmp_path
    )
    assert '<p class="gap">The test accuracy 0.84 is 0.06 below' in report.path.read_text()


def regression_report_spec() -> dict[str, Any]:
    return tiny_spec(
        name="report-regression",
        model="regressor",
        dataset={"name": "synthetic_regression", "n_train": 80, "n_test": 50},
        scoring="neg_mean_squared_error",
        budget={"trials": 3},
        fixed={"max_epochs": 5, "batch_size": 20, "module__depth": 2, "module__units": 16},
        space={
            "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
            "module__activation": {"type": "categorical", "choices": ["relu", "tanh"]},
        },
    )


@pytest.mark.slow
def test_regression_report_renders_its_test_plots_and_fitted_curve(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A regression on the 1-D synthetic function: predicted vs true, residuals and the fitted
    curve beside the true function, drawn by Chromium, and the summary and metric shown."""
    run_study(sqlite_url, regression_report_spec())
    refit_study(
        open_storage(sqlite_url),
        "report-regression",
        results_dir=tmp_path / "results",
        artifacts=tmp_path / "store",
    )

    report = write_report(
        open_storage(sqlite_url),
        "report-regression",
        results_dir=tmp_path / "results",
        artifacts=tmp_path / "store",
    )

    assert report.figures == SEARCH_FIGURES + REGRESSION_FIGURES and report.notes == {}
    assert report.tables == [TIMING] and report.refit_source == "artifacts"
    page = report.path.read_text()
    rows = timing_rows(page)
    assert [row[0].removesuffix(" (best)") for row in rows] == ["0", "1", "2"]
    assert sum(row[0].endswith(" (best)") for row in rows) == 1
    assert all(len(row[3].split(" · ")) == 2 for row in rows)  # fit seconds of both folds
    dom = rendered_dom(report.path, tmp_path)
    assert count_class(dom, "js-plotly-plot") == len(report.figures)
    for key, value in (
        ("model", "regressor"),
        ("dataset", "synthetic_regression"),
        ("sampler", "random"),
        ("pruner", "none"),
    ):
        assert f"<tr><th>{key}</th><td>{value}</td></tr>" in dom
    assert "<th>best CV neg_mean_squared_error</th>" in dom
    titles = axis_titles(dom)
    # optimization history, the slices' rows, the folds
    assert titles.count("neg_mean_squared_error") >= 2, titles
    assert "mean neg_mean_squared_error of the folds so far" in titles
    assert {"predicted value", "residual (true − predicted)", "x (the input)"} <= set(titles)
    legend = re.findall(r'class="legendtext"[^>]*>([^<]*)<', dom)
    assert sum(name.startswith("trial ") for name in legend) == 3  # the folds' lines
    assert "perfect prediction" in legend
    assert "true function sin(2πx)(1 + x)" in legend and "refit net's prediction" in legend
    # Categorical ticks as plain text; log ticks one per decade.
    ticks = re.findall(r'<g class="x\d*tick"><text [^>]*data-unformatted="([^"]*)"', dom)
    assert {"relu", "tanh", "0.001", "0.01", "0.1"} <= set(ticks), ticks

    shot = tmp_path / "regression.png"
    done = chromium(
        f"--screenshot={shot}",
        "--window-size=1280,6000",
        report.path.resolve().as_uri(),
        profile=tmp_path / "profile-shot",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.stat().st_size > 50_000
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 6000)
    colors = image.getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 200, "a page of plots has many colours; a blank one has a few"


@pytest.mark.slow
def test_report_of_a_refit_without_predictions_asks_for_a_new_refit(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A regression refit made before predictions.csv: the learning curves are drawn, and a
    note says to refit for the test-split plots."""
    run_study(sqlite_url, {**regression_report_spec(), "budget": {"trials": 1}})
    storage = open_storage(sqlite_url)
    refit = refit_study(storage, "report-regression", results_dir=tmp_path, artifacts=tmp_path)
    study = optuna.load_study(study_name="report-regression", storage=sqlite_url)
    record = study.user_attrs[REFIT_ARTIFACTS_ATTR]
    older = {k: v for k, v in record["files"].items() if k not in ("predictions", "curve")}
    study.set_user_attr(REFIT_ARTIFACTS_ATTR, {**record, "files": older})
    refit.files["predictions"].unlink()
    refit.files["curve"].unlink()

    report = write_report(storage, "report-regression", results_dir=tmp_path, artifacts=tmp_path)

    assert report.figures[-1] == "Learning curves (refit)"
    note = report.notes["Predicted vs true on the test split (refit)"]
    assert "predates predictions.csv" in note and "hpo refit report-regression" in note
