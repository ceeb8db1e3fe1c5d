"""The CUDA path, run where a GPU is present (skipped elsewhere): trials train on the GPU,
score like the CPU path, and a worker process picks the GPU by itself."""

from __future__ import annotations

import optuna
import pytest
import torch
from conftest import run_hpo, tiny_spec

from hpo.engine.data import load_dataset
from hpo.engine.objective import evaluate
from hpo.spec.study_spec import parse_spec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_a_trial_on_the_gpu_scores_like_the_cpu(model: str) -> None:
    spec = parse_spec(tiny_spec(model=model, fixed={"max_epochs": 5, "batch_size": 64}))
    data = load_dataset("digits")
    scores = {}
    for device in ("cpu", "cuda"):
        study = optuna.create_study(direction="maximize")
        study.enqueue_trial({"module__hidden1": 32, "lr": 0.01})
        trial = study.ask()
        scores[device] = evaluate(trial, spec, data, device)
        assert trial.user_attrs["device"] == device
    assert scores["cuda"] == pytest.approx(scores["cpu"], abs=0.03)


def test_a_worker_uses_the_gpu_when_present(write_spec, sqlite_url: str) -> None:
    path = write_spec(budget={"trials": 2})
    assert run_hpo("register", str(path), "--storage", sqlite_url).returncode == 0
    result = run_hpo("worker", "--study", "tiny-digits", "--storage", sqlite_url, "--index", "0")
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="tiny-digits", storage=sqlite_url).trials
    assert [t.user_attrs["device"] for t in trials] == ["cuda", "cuda"]
