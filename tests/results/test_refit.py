"""hpo refit: the best configuration retrained on the training split and judged on the test,
its files written for people and stored as the study's Optuna artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import run_hpo, tiny_spec

from hpo.engine.build import build_net
from hpo.engine.data import load_dataset, synthetic_function
from hpo.engine.preprocess import Scaling
from hpo.errors import HpoError
from hpo.results.artifacts import REFIT_ARTIFACTS_ATTR
from hpo.results.paths import study_folder
from hpo.results.refit import CURVE_POINTS, refit_study
from hpo.service.storage import open_storage
from hpo.service.study import hpo_version, register_study
from hpo.service.worker import run_worker
from hpo.spec.study_spec import parse_spec


def run_study(url: str, raw: dict[str, Any], trials: int | None = None) -> optuna.Study:
    """Register ``raw`` and run it to its budget with one in-process worker."""
    spec = parse_spec(raw)
    storage = open_storage(url)
    register_study(spec, storage)
    run_worker(spec.name, url, trials=trials, worker_index=0, heartbeat_seconds=0, threads=1)
    return optuna.load_study(study_name=spec.name, storage=storage)


def classification_spec() -> dict[str, Any]:
    # Early stopping makes the fit use digits' fixed validation split, so history has both
    # curves.
    return tiny_spec(
        name="refit-digits",
        budget={"trials": 2},
        preprocess="standard",
        fixed={"max_epochs": 6, "batch_size": 128, "early_stopping_patience": 3},
    )


def regression_spec() -> dict[str, Any]:
    return tiny_spec(
        name="refit-regression",
        model="regressor",
        dataset={"name": "synthetic_regression", "n_train": 80, "n_test": 50},
        scoring="neg_mean_squared_error",
        budget={"trials": 2},
        fixed={"max_epochs": 5, "batch_size": 20, "module__depth": 2},
        space={
            "module__units": {"type": "int", "low": 4, "high": 16},
            "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        },
    )


@pytest.mark.slow
def test_refit_classification_scores_the_best_trial_on_the_test_split(
    sqlite_url: str, tmp_path: Path
) -> None:
    study = run_study(sqlite_url, classification_spec())
    best = study.best_trial

    result = refit_study(
        open_storage(sqlite_url),
        "refit-digits",
        results_dir=tmp_path / "r",
        artifacts=tmp_path / "artifacts",
    )

    folder = tmp_path / "r" / "refit-digits"
    spec = parse_spec(classification_spec())
    assert result.folder == folder
    assert result.trial == best.number and result.cv_score == pytest.approx(best.value)
    assert result.params == spec.configuration(best.params)
    assert {**classification_spec()["fixed"], **best.params}.items() <= result.params.items()
    assert set(result.metrics) == {"score", "accuracy", "log_loss"}
    assert result.metrics["score"] == result.metrics["accuracy"]  # the spec scores accuracy
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and result.metrics["log_loss"] > 0

    # params.json rebuilds the net without the data: model, shapes, classes, scaling.
    data = load_dataset("digits")
    rebuild = json.loads((folder / "params.json").read_text())
    assert rebuild["configuration"] == result.params
    assert rebuild["model"] == "mlp" and rebuild["task"] == "classification"
    assert rebuild["input_shape"] == [1, 8, 8] and rebuild["n_outputs"] == 10
    assert rebuild["n_classes"] == 10 and rebuild["classes"] == list(range(10))
    assert rebuild["trial"] == best.number and rebuild["hpo_version"] == hpo_version()
    scaling = Scaling.from_state(rebuild["scaling"])
    assert scaling.kind == "standard"
    np.testing.assert_array_equal(scaling.center, result.net.scaling_.center)
    np.testing.assert_array_equal(scaling.spread, result.net.scaling_.spread)

    # The saved weights reproduce the reported test accuracy in a fresh net.
    net = build_net(spec, data, result.params, "cpu")
    net.initialize()
    net.load_params(f_params=str(folder / "model.pt"))
    net.scaling_ = scaling
    accuracy = float(np.mean(net.predict(data.X_test) == data.y_test))
    assert accuracy == pytest.approx(result.metrics["accuracy"])

    confusion = pd.read_csv(folder / "confusion_matrix.csv", index_col=0)
    assert confusion.shape == (10, 10)
    assert confusion.to_numpy().sum() == len(data.y_test) == 447
    assert np.trace(confusion.to_numpy()) / 447 == pytest.approx(result.metrics["accuracy"])
    assert confusion.loc[3].sum() == np.sum(data.y_test == 3)  # rows are the true classes

    # predictions.csv: each test row's true and predicted class, what the matrix counts.
    predictions = pd.read_csv(folder / "predictions.csv")
    assert list(predictions.columns) == ["y_true", "y_pred"]  # images: no x column
    np.testing.assert_array_equal(predictions["y_true"], data.y_test)
    np.testing.assert_array_equal(predictions["y_pred"], result.net.predict(data.X_test))
    assert np.mean(predictions["y_true"] == predictions["y_pred"]) == pytest.approx(
        result.metrics["accuracy"]
    )
    assert not (folder / "curve.json").exists()  # a classification draws no fitted curve

    history = json.loads((folder / "history.json").read_text())
    assert len(history) == result.epochs >= 1
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    assert all({"train_loss", "valid_loss"} <= set(row) for row in history)

    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["test"] == result.metrics and metrics["trial"] == best.number
    assert metrics["n_train"] == 1000 and metrics["n_valid"] == 350 and metrics["n_test"] == 447

    attrs = optuna.load_study(study_name="refit-digits", storage=sqlite_url).user_attrs
    assert attrs["test_accuracy"] == result.metrics["accuracy"]
    assert attrs["test_log_loss"] == result.metrics["log_loss"]
    assert attrs["refit_trial"] == best.number


@pytest.mark.slow
def test_refit_including_validation_fits_again_for_the_epochs_early_stopping_chose(
    sqlite_url: str, tmp_path: Path
) -> None:
    raw = {**classification_spec(), "refit": {"include_validation": True}}
    raw["fixed"] = {**raw["fixed"], "max_epochs": 30, "early_stopping_patience": 2}
    raw["space"] = {**raw["space"], "lr": {"type": "float", "low": 0.05, "high": 0.2}}
    run_study(sqlite_url, raw)

    result = refit_study(
        open_storage(sqlite_url), "refit-digits", results_dir=tmp_path, artifacts=tmp_path / "a"
    )

    # The epochs: those of the first fit's best epoch, on the training split with early
    # stopping on the validation split, as a refit without the option fits.
    spec, data = parse_spec(raw), load_dataset("digits")
    first = build_net(spec, data, result.params, "cpu").fit(data.X_train, data.y_train)
    chosen = dict(first.callbacks_)["early_stopping"].best_epoch_
    assert 1 <= chosen < len(first.history) <= 30  # it stopped early, after its best epoch
    metrics = json.loads((tmp_path / "refit-digits" / "metrics.json").read_text())
    assert metrics["include_validation"] is True and metrics["early_stopping_epochs"] == chosen
    assert metrics["n_train"] == 1350 and metrics["n_valid"] == 350
    assert result.epochs == metrics["epochs"] == chosen

    # The net scored: a fresh one of the same seed on the 1350 rows, that many epochs, with no
    # validation loss to watch; the same process and threads, so equal to the last bit.
    rows = np.concatenate([data.X_train, data.X_valid])
    labels = np.concatenate([data.y_train, data.y_valid])
    again = {**result.params, "max_epochs": chosen, "early_stopping_patience": None}
    final = build_net(spec, data, again, "cpu").fit(rows, labels)
    np.testing.assert_array_equal(
        result.net.predict_proba(data.X_test), final.predict_proba(data.X_test)
    )
    history = json.loads((tmp_path / "refit-digits" / "history.json").read_text())
    assert len(history) == chosen and not any("valid_loss" in row for row in history)


@pytest.mark.slow
def test_refit_including_validation_without_early_stopping_fits_once_on_every_row(
    sqlite_url: str, tmp_path: Path
) -> None:
    raw = {
        **tiny_spec(name="refit-all", budget={"trials": 1}),
        "refit": {"include_validation": True},
    }
    run_study(sqlite_url, raw)

    result = refit_study(
        open_storage(sqlite_url), "refit-all", results_dir=tmp_path, artifacts=tmp_path / "a"
    )

    metrics = json.loads((tmp_path / "refit-all" / "metrics.json").read_text())
    assert metrics["n_train"] == 1350 and metrics["early_stopping_epochs"] is None
    assert result.epochs == raw["fixed"]["max_epochs"]


@pytest.mark.slow
def test_refit_stores_its_files_as_artifacts_of_the_study(sqlite_url: str, tmp_path: Path) -> None:
    run_study(sqlite_url, regression_spec())

    result = refit_study(
        open_storage(sqlite_url),
        "refit-regression",
        results_dir=tmp_path / "results",
        artifacts=tmp_path / "store",
    )

    study = optuna.load_study(study_name="refit-regression", storage=sqlite_url)
    linked = {meta.artifact_id: meta for meta in optuna.artifacts.get_all_artifact_meta(study)}
    assert set(result.artifacts) == {
        *("model", "params", "metrics", "history", "predictions", "curve"),
    }
    assert set(result.artifacts.values()) == set(linked)
    record = study.user_attrs[REFIT_ARTIFACTS_ATTR]
    assert record == {"dir": str((tmp_path / "store").resolve()), "files": result.artifacts}
    store = optuna.artifacts.FileSystemArtifactStore(tmp_path / "store")
    for kind, artifact_id in result.artifacts.items():
        local = result.files[kind]
        assert linked[artifact_id].filename == local.name
        with store.open_reader(artifact_id) as stored:
            assert stored.read() == local.read_bytes(), kind
    assert linked[result.artifacts["params"]].mimetype == "application/json"

    # A second refit links a second set; the user_attr names the latest.
    again = refit_study(
        open_storage(sqlite_url),
        "refit-regression",
        results_dir=tmp_path / "results",
        artifacts=tmp_path / "store",
    )
    study = optuna.load_study(study_name="refit-regression", storage=sqlite_url)
    assert len(optuna.artifacts.get_all_artifact_meta(study)) == 12
    assert study.user_attrs[REFIT_ARTIFACTS_ATTR]["files"] == again.artifacts != result.artifacts


@pytest.mark.slow
def test_refit_regression_reports_mse_and_r2(sqlite_url: str, tmp_path: Path) -> None:
    run_study(sqlite_url, regression_spec())

    result = refit_study(
        open_storage(sqlite_url), "refit-regression", results_dir=tmp_path, artifacts=tmp_path
    )

    assert set(result.metrics) == {"score", "mse", "r2"}
    assert result.metrics["mse"] == pytest.approx(-result.metrics["score"], rel=1e-5)
    assert result.metrics["mse"] > 0 and result.metrics["r2"] <= 1.0
    folder = tmp_path / "refit-regression"
    assert not (folder / "confusion_matrix.csv").exists()
    assert (folder / "model.pt").stat().st_size > 0
    # No early stopping: the whole training split is trained on and nothing is validated.
    history = json.loads((folder / "history.json").read_text())
    assert len(history) == 5 and all("valid_loss" not in row for row in history)
    attrs = optuna.load_study(study_name="refit-regression", storage=sqlite_url).user_attrs
    assert attrs["test_mse"] == result.metrics["mse"]
    assert attrs["test_r2"] == result.metrics["r2"]


@pytest.mark.slow
def test_refit_of_a_1d_regression_keeps_its_predictions_and_fitted_curve(
    sqlite_url: str, tmp_path: Path
) -> None:
    """What the report's predicted-vs-true, residual and fitted-curve plots read: the test
    rows with their x, and the net on a dense grid beside the noise-free function."""
    run_study(sqlite_url, regression_spec(), trials=1)

    result = refit_study(
        open_storage(sqlite_url), "refit-regression", results_dir=tmp_path, artifacts=tmp_path
    )

    data = load_dataset("synthetic_regression", n_train=80, n_test=50)
    predictions = pd.read_csv(result.files["predictions"])
    assert list(predictions.columns) == ["x", "y_true", "y_pred"]
    np.testing.assert_allclose(predictions["x"], data.X_test.reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(predictions["y_true"], data.y_test.reshape(-1), rtol=1e-6)
    predicted = result.net.predict(data.X_test).reshape(-1)
    np.testing.assert_allclose(predictions["y_pred"], predicted, rtol=1e-5, atol=1e-6)
    mse = np.mean((predictions["y_true"] - predictions["y_pred"]) ** 2)
    assert mse == pytest.approx(result.metrics["mse"], rel=1e-4)

    curve = json.loads(result.files["curve"].read_text())
    grid = np.asarray(curve["x"], dtype=np.float32)
    assert len(grid) == CURVE_POINTS and np.all(np.diff(grid) > 0)
    every_x = np.concatenate([data.X_train, data.X_test]).reshape(-1)
    assert grid[0] == pytest.approx(every_x.min()) and grid[-1] == pytest.approx(every_x.max())
    on_grid = result.net.predict(grid.reshape(-1, 1)).reshape(-1)
    np.testing.assert_allclose(curve["y_pred"], on_grid, rtol=1e-5, atol=1e-6)
    assert curve["function"] == "sin(2πx)(1 + x)"
    np.testing.assert_allclose(curve["y_function"], synthetic_function(grid), atol=1e-6)
    np.testing.assert_allclose(curve["train_x"], data.X_train.reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(curve["train_y"], data.y_train.reshape(-1), rtol=1e-6)
    assert curve["n_train"] == 80
    assert result.files["curve"].stat().st_size < 20_000


def test_refit_without_a_completed_trial_is_a_clear_error(sqlite_url: str, tmp_path: Path) -> None:
    register_study(parse_spec(classification_spec()), open_storage(sqlite_url))
    with pytest.raises(HpoError, match="no completed trial yet; run it first"):
        refit_study(
            open_storage(sqlite_url),
            "refit-digits",
            results_dir=tmp_path,
            artifacts=tmp_path / "store",
        )
    assert not (tmp_path / "refit-digits").exists()
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_refit_refuses_an_artifact_folder_that_is_a_file_before_training(
    sqlite_url: str, tmp_path: Path
) -> None:
    run_study(sqlite_url, regression_spec(), trials=1)
    (tmp_path / "store").write_text("not a folder")
    with pytest.raises(HpoError, match=r"store is not a folder.*--artifacts DIR"):
        refit_study(
            open_storage(sqlite_url),
            "refit-regression",
            results_dir=tmp_path,
            artifacts=tmp_path / "store",
        )
    assert not (tmp_path / "refit-regression").exists()


@pytest.mark.slow
def test_cli_refit(sqlite_url: str, tmp_path: Path) -> None:
    run_study(sqlite_url, classification_spec(), trials=1)
    done = run_hpo(
        "refit", "refit-digits", "--storage", sqlite_url, "--results", "out", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout and "CV score" in done.stdout
    assert (tmp_path / "out" / "refit-digits" / "model.pt").exists()
    # The artifact folder: --artifacts, else HPO_ARTIFACTS, else results.
    # model, params, metrics, history, confusion matrix, predictions
    assert "stored as 6 artifacts" in done.stdout
    assert len(list((tmp_path / "results").iterdir())) == 6
    env = {"HPO_ARTIFACTS": "from-env"}
    for flag, folder in (((), "from-env"), (("--artifacts", "from-flag"), "from-flag")):
        again = run_hpo(
            "refit", "refit-digits", "--storage", sqlite_url, *flag, cwd=tmp_path, env=env
        )
        assert again.returncode == 0, again.stderr
        assert len(list((tmp_path / folder).iterdir())) == 6
    assert len(list((tmp_path / "from-env").iterdir())) == 6


@pytest.mark.parametrize("hostile", ["../../escape", "/abs-escape"])
def test_refit_refuses_a_study_name_that_leaves_the_results_folder(
    sqlite_url: str, tmp_path: Path, hostile: str
) -> None:
    """A study copied with plain Optuna may carry any name; its spec then names another
    study and is refused before any file is written (``study_folder`` guards the path too)."""
    run_study(sqlite_url, regression_spec(), trials=1)
    name = hostile if not hostile.startswith("/") else str(tmp_path / "abs-escape")
    optuna.copy_study(
        from_study_name="refit-regression",
        from_storage=sqlite_url,
        to_storage=sqlite_url,
        to_study_name=name,
    )
    results = tmp_path / "inner" / "deeper" / "results"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(HpoError, match=r"spec is named 'refit-regression', not '.*escape'"):
        refit_study(
            open_storage(sqlite_url), name, results_dir=results, artifacts=results / "store"
        )
    assert sorted(tmp_path.rglob("*")) == before
    assert not (tmp_path / "inner" / "escape").exists()
    assert not (tmp_path / "abs-escape").exists()


@pytest.mark.parametrize(
    "name", ["..", ".", "", "  ", "a/b", "../x", "/abs", "a\\b", "C:x", "nul\x00", "x/.."]
)
def test_study_folder_refuses_names_that_are_not_one_plain_folder(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(HpoError, match=r"outside the results folder.*--out FILE"):
        study_folder(tmp_path, name)


@pytest.mark.parametrize("name", ["digits-mlp", "a.b", "..a", "x y", "ünï"])
def test_study_folder_keeps_plain_names_inside(tmp_path: Path, name: str) -> None:
    assert study_folder(tmp_path, name) == tmp_path / name


@pytest.mark.slow
def test_refit_says_when_the_test_score_strays_far_from_the_cv_score(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The report's sentence, from hpo refit and hpo.refit too: here a trial whose CV score
    claims a chance-level 0.1 on the digits, which a refit of its net beats by far."""
    raw = tiny_spec(name="gap", sampler={"name": "grid"}, budget={}, space={})
    spec = parse_spec({**raw, "fixed": {"max_epochs": 4, "batch_size": 64, "lr": 0.01}})
    storage = open_storage(sqlite_url)
    register_study(spec, storage)
    study = optuna.load_study(study_name="gap", storage=storage)
    trial = study.ask()
    trial.set_user_attr("score_std", 0.01)
    study.tell(trial, 0.1)

    result = refit_study(storage, "gap", results_dir=tmp_path / "r", artifacts=tmp_path / "a")

    assert result.metrics["accuracy"] > 0.5
    assert result.warning.startswith(f"The test accuracy {result.metrics['accuracy']:.4g} is")
    assert "above the best CV accuracy 0.1 (trial 0)" in result.warning
    printed = run_hpo(
        "refit", "gap", "--storage", sqlite_url, "--results", str(tmp_path / "r2"),
        "--artifacts", str(tmp_path / "a2"),
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert "above the best CV accuracy 0.1 (trial 0)" in " ".join(printed.stderr.split())
