"""Experiment tracking: trials and the refit in a real MLflow store (SQLite) and real
TensorBoard event files, read back with MLflow's own client and TensorBoard's own reader."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import tiny_spec

from hpo.errors import HpoError
from hpo.service.storage import open_storage
from hpo.service.study import register_study
from hpo.service.tracking import open_trackers
from hpo.service.worker import run_worker
from hpo.spec.study_spec import parse_spec

mlflow = pytest.importorskip("mlflow")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def with_folds(values: list[float]) -> Callable[..., float]:
    """A trial objective that writes fold results as the scorer does and returns ``values``
    in turn: the worker loop and the trackers, not the nets, are under test here."""
    given = iter(values)

    def objective(trial: optuna.Trial, should_stop: Callable[[], bool]) -> float:
        trial.suggest_int("module__hidden1", 8, 32)
        trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        value = next(given)
        trial.set_user_attr("fold_scores", [value - 0.01, value + 0.01])
        trial.set_user_attr("fit_seconds", [0.5, 0.7])
        trial.set_user_attr("score_std", 0.01)
        return value

    return objective


def tracked(tmp_path: Path, **tracking: Any) -> dict[str, Any]:
    return tiny_spec(name="tracked", budget={"trials": 3}, tracking=tracking)


def runs_of(uri: str, experiment: str) -> list[Any]:
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def test_every_finished_trial_is_one_mlflow_run_with_its_folds(
    sqlite_url: str, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = parse_spec(tracked(tmp_path, mlflow={"uri": uri, "experiment": "digits"}))
    register_study(spec, open_storage(sqlite_url))
    objective = with_folds([0.5, 0.7, 0.6])
    run_worker(spec.name, sqlite_url, worker_index=0, heartbeat_seconds=0, objective=objective)

    runs = {run.info.run_name: run for run in runs_of(uri, "digits")}
    assert sorted(runs) == ["trial-0", "trial-1", "trial-2"]
    second = runs["trial-1"]
    assert second.data.metrics["accuracy"] == pytest.approx(0.7)
    assert second.data.metrics["score_std"] == pytest.approx(0.01)
    assert set(second.data.params) == {"module__hidden1", "lr"}
    assert second.data.tags["hpo.state"] == "COMPLETE"
    assert second.info.status == "FINISHED"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    folds = client.get_metric_history(second.info.run_id, "fold_accuracy")
    assert [(m.step, round(m.value, 6)) for m in folds] == [(0, 0.69), (1, 0.71)]
    assert [m.value for m in client.get_metric_history(second.info.run_id, "fit_seconds")] == [
        0.5,
        0.7,
    ]

    # once per trial: a worker that logs a trial again (a restart) adds no run
    study = optuna.load_study(study_name=spec.name, storage=sqlite_url)
    open_trackers(spec).log_trial(study, study.trials[1])
    assert len(runs_of(uri, "digits")) == 3


def test_every_finished_trial_is_one_tensorboard_run(sqlite_url: str, tmp_path: Path) -> None:
    spec = parse_spec(tracked(tmp_path, tensorboard={"dir": str(tmp_path / "runs")}))
    register_study(spec, open_storage(sqlite_url))
    objective = with_folds([0.5, 0.7, 0.6])
    run_worker(spec.name, sqlite_url, worker_index=0, heartbeat_seconds=0, objective=objective)

    folders = sorted(p.name for p in (tmp_path / "runs" / "tracked").iterdir())
    assert folders == ["trial-0", "trial-1", "trial-2"]
    events = event_accumulator.EventAccumulator(str(tmp_path / "runs" / "tracked" / "trial-1"))
    events.Reload()
    folds = events.Scalars("fold/accuracy")
    assert [(e.step, round(e.value, 6)) for e in folds] == [(0, 0.69), (1, 0.71)]
    assert [e.value for e in events.Scalars("fold/fit_seconds")] == pytest.approx([0.5, 0.7])


def test_a_tracker_that_cannot_be_written_fails_no_trial_and_warns_once(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unwritable = tmp_path / "file"
    unwritable.write_text("")  # a file where the database's folder should be
    uri = f"sqlite:///{unwritable / 'mlflow.db'}"
    spec = parse_spec(tracked(tmp_path, mlflow={"uri": uri}))
    register_study(spec, open_storage(sqlite_url))
    caplog.set_level(logging.WARNING, logger="hpo")
    summary = run_worker(
        spec.name, sqlite_url, worker_index=0, heartbeat_seconds=0, objective=with_folds([0.5] * 3)
    )
    assert summary.states == {"COMPLETE": 3}
    warnings = [r for r in caplog.records if "tracking.mlflow: cannot log" in r.getMessage()]
    assert len(warnings) == 1, caplog.text


def test_a_tracker_whose_package_is_missing_is_refused_before_any_trial(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an uninstalled package gives
    spec = parse_spec(tracked(tmp_path, mlflow={"uri": "sqlite:///x.db"}))
    with pytest.raises(HpoError, match=r"pip install -e '\.\[mlflow\]'"):
        open_trackers(spec)


@pytest.mark.slow
def test_the_refit_logs_its_test_metrics_and_files(sqlite_url: str, tmp_path: Path) -> None:
    import hpo

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = tiny_spec(
        name="tracked-refit",
        budget={"trials": 1},
        tracking={"mlflow": {"uri": uri}, "tensorboard": {"dir": str(tmp_path / "runs")}},
    )
    spec = parse_spec(raw)
    register_study(spec, open_storage(sqlite_url))
    run_worker(spec.name, sqlite_url, worker_index=0, heartbeat_seconds=0, threads=1)
    result = hpo.refit(
        spec.name, sqlite_url, artifacts=tmp_path / "artifacts", results_dir=tmp_path / "r"
    )

    runs = {run.info.run_name: run for run in runs_of(uri, "tracked-refit")}
    assert sorted(runs) == ["refit", "trial-0"]
    refit = runs["refit"]
    assert refit.data.metrics["test_accuracy"] == pytest.approx(result.metrics["accuracy"])
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    files = {f.path for f in client.list_artifacts(refit.info.run_id)}
    assert {"metrics.json", "params.json"} <= files
    assert list((tmp_path / "mlruns").rglob("metrics.json"))  # beside the store, not in cwd
    events = event_accumulator.EventAccumulator(str(tmp_path / "runs" / "tracked-refit" / "refit"))
    events.Reload()
    assert events.Scalars("refit/test_accuracy")[0].value == pytest.approx(
        result.metrics["accuracy"]
    )
