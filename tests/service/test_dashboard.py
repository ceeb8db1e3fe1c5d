"""What optuna-dashboard shows of an hpo study: the spec as the study's note (YAML under a short
heading), and after a refit the test score beside the CV score, on top of the study's note
and in the refit trial's note; checked in a headless-Chromium rendering of the real
``hpo dashboard`` (Chromium as in test_report.py)."""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import free_port, get_json, served, tiny_spec
from optuna.distributions import FloatDistribution, IntDistribution
from optuna_dashboard import get_note, save_note
from PIL import Image
from test_report import chromium

import hpo
from hpo.service.notes import spec_note, write_refit_notes
from hpo.service.storage import open_storage
from hpo.service.study import register_study
from hpo.service.worker import run_worker
from hpo.spec.study_spec import parse_spec, spec_json_equal


def yaml_block(note: str) -> str:
    found = re.search(r"^(`{3,})yaml\n(.*?)^\1$", note, flags=re.S | re.M)
    assert found, note
    return found.group(2)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "description": "digits, with a `quoted` word",
            "sampler": {"name": "tpe", "seed": None},  # no seed: kept, not left out
            "pruner": {"name": "median"},
            "budget": {"trials": 20, "timeout": 600},
            "fixed": {"max_epochs": 3, "batch_size": 128, "optimizer": "adam"},
        },
        {"sampler": {"name": "grid"}, "budget": {}, "space": {}},
    ],
)
def test_the_spec_note_is_the_spec_as_yaml_under_a_heading(overrides: dict[str, Any]) -> None:
    spec = parse_spec(tiny_spec(**overrides))
    note = spec_note(spec)
    parts = note.split("\n\n")
    if spec.description:
        assert parts.pop(1) == spec.description
    assert parts[0] == "## tiny-digits"
    assert parts[1].startswith("`mlp` on `digits` · scoring **accuracy** (maximize) · 2-fold CV")
    assert f"budget {spec.n_trials} trials" in parts[1]
    text = yaml_block(note)
    assert "\nmodel: mlp\n" in text and "description: ''" not in text and "options" not in text
    # a study file of that YAML registers the same study
    again = parse_spec(yaml.safe_load(text))
    assert spec_json_equal(again.to_json(), spec.to_json())


@pytest.mark.parametrize(
    ("refit", "trained_on"),
    [
        ({}, "the whole training split"),
        ({"include_validation": True}, "the training and validation splits together"),
    ],
)
def test_a_refit_puts_its_test_score_on_top_of_the_notes_once(
    sqlite_url: str, refit: dict[str, Any], trained_on: str
) -> None:
    spec = parse_spec(tiny_spec(refit=refit))
    storage = open_storage(sqlite_url)
    register_study(spec, storage)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    study.add_trial(
        optuna.trial.create_trial(
            params={"module__hidden1": 16, "lr": 0.01},
            distributions={
                "module__hidden1": IntDistribution(8, 32),
                "lr": FloatDistribution(1e-3, 1e-1, log=True),
            },
            value=0.9,
            user_attrs={"fold_scores": [0.88, 0.92], "score_std": 0.02},
        )
    )
    metrics = {"accuracy": 0.85, "log_loss": 0.4}
    write_refit_notes(storage, spec, trial=0, test=0.85, test_metrics=metrics)

    line = (
        "**Best CV accuracy 0.9000 ± 0.0200** (trial 0, 2-fold mean ± std) · **test accuracy "
        f"0.8500** (refit on {trained_on}, scored once)"
    )
    assert get_note(study) == f"{line}\n\n{spec_note(spec)}"
    trial = optuna.Trial(study, study.trials[0]._trial_id)
    assert get_note(trial).startswith(
        "**CV accuracy 0.9000 ± 0.0200** (2-fold mean ± std) · **test accuracy 0.8500** "
    )
    assert "Test split: accuracy 0.8500 · log_loss 0.4000" in get_note(trial)

    # a second refit replaces the line; what someone added to the note stays
    save_note(study, get_note(study) + "\nmy own words\n")
    write_refit_notes(storage, spec, trial=0, test=0.86, test_metrics=metrics)
    note = get_note(study)
    assert note.count("Best CV") == 1 and "**test accuracy 0.8600**" in note
    assert note.endswith(f"{spec_note(spec)}\nmy own words\n")


def visible_text(dom: str) -> str:
    """The page's text as a reader sees it (the YAML is highlighted token by token)."""
    return html.unescape(re.sub(r"<[^>]+>", "", dom))


@pytest.mark.slow
def test_the_dashboard_shows_the_metric_the_spec_and_the_refit_score(
    sqlite_url: str, tmp_path: Path
) -> None:
    spec = parse_spec(tiny_spec(budget={"trials": 2}))
    register_study(spec, open_storage(sqlite_url))
    run_worker(spec.name, sqlite_url, worker_index=0, heartbeat_seconds=0, threads=1)
    result = hpo.refit(
        spec.name,
        sqlite_url,
        artifacts=tmp_path / "store",
        results_dir=tmp_path / "results",
        device="cpu",
    )

    port = free_port()
    command = [sys.executable, "-m", "hpo", "dashboard", "--storage", sqlite_url]
    command += ["--port", str(port), "--artifact-dir", str(tmp_path / "store"), "--quiet"]
    base = f"http://127.0.0.1:{port}"
    with served(command):
        (summary,) = get_json(f"{base}/api/studies")["study_summaries"]
        study_page = f"{base}/dashboard/studies/{summary['study_id']}"

        def rendered(page: str, name: str, *more: str) -> str:
            # The dashboard on 127.0.0.1, every other host unresolvable: nothing from a CDN.
            done = chromium(
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                *more,
                "--dump-dom",
                page,
                profile=tmp_path / f"profile-{name}",
            )
            assert done.returncode == 0, done.stderr[-2000:]
            return visible_text(done.stdout)

        shot = tmp_path / "note.png"
        top = rendered(study_page, "top")
        note = rendered(
            f"{study_page}/note", "note", f"--screenshot={shot}", "--window-size=1280,900"
        )
        # the refit trial's note, as its page shows it
        (refit_trial,) = [
            trial
            for trial in get_json(f"{base}/api/studies/{summary['study_id']}")["trials"]
            if trial["number"] == result.trial
        ]

    assert "tiny-digits" in top and "accuracy" in top  # the metric name, not "Objective 0"
    assert "Objective 0" not in top
    cv = f"{result.cv_score:.4f}"
    test = f"{result.metrics['score']:.4f}"
    assert f"Best CV accuracy {cv} ± " in note, note
    assert f"(trial {result.trial}, 2-fold mean ± std) · test accuracy {test}" in note
    assert "model: mlp" in note and "dataset: {name: digits}" in note
    assert "budget: {trials: 2}" in note
    assert refit_trial["note"]["body"].startswith(f"**CV accuracy {cv} ± ")
    assert f"**test accuracy {test}**" in refit_trial["note"]["body"]

    image = Image.open(shot).convert("RGB")
    colors = image.getcolors(maxcolors=1 << 20) or []
    painted = sum(count for count, rgb in colors if rgb != (255, 255, 255))
    assert len(colors) > 50, "a rendered page has text and a highlighted code block"
    assert painted > 0.1 * image.width * image.height
