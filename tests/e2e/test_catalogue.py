"""The catalogue in studies/: the search spaces the issue names, and each downloaded-data study
run for one trial on small files in its dataset's real format (IDX for the MNIST family, .mat
for SVHN), so nothing is downloaded."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import scipy.io
from conftest import REPO
from idx_files import write_mnist_raw
from optuna.trial import TrialState

from hpo.engine.data import load_dataset
from hpo.errors import DatasetError
from hpo.results.refit import refit_study
from hpo.service.storage import open_storage
from hpo.service.study import register_study
from hpo.service.worker import run_worker
from hpo.spec.study_spec import StudySpec, load_spec, parse_spec

STUDIES = REPO / "studies"
MNIST_FAMILY = {
    "mnist-mlp-random": "MNIST",
    "fashion-mnist-mlp-tpe": "FashionMNIST",
    "fashion-mnist-cnn-tpe": "FashionMNIST",
    "mnist-mlp-fixed-sigmoid": "MNIST",
    "mnist-cnn-lenet": "MNIST",
}
HAND_PICKED = {
    "batch_size": 20,
    "module__units": 10,
    "module__depth": 3,
    "module__dropout": 0.0,
    "module__activation": "sigmoid",
    "module__weight_init": "default",
    "lr": 0.01,
    "optimizer__weight_decay": 1e-5,
    "optimizer": "adam",
}


def study(name: str) -> StudySpec:
    return load_spec(STUDIES / f"{name}.yaml")


def offline_copy(name: str, root: Path, **fixed: Any) -> StudySpec:
    """The catalogue study with its data under ``root``, no download, and ``fixed`` overrides
    (fewer epochs) so a trial takes a second."""
    raw = json.loads(study(name).to_json())
    raw["dataset"].update(root=str(root), download=False)
    raw["fixed"].update(fixed)
    return parse_spec(raw, source=f"offline copy of {name}")


def write_svhn_mat(path: Path, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An SVHN-format file: ``X`` (32, 32, 3, n) uint8 and ``y`` (n, 1) with 10 for zero."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, size=(n, 1), dtype=np.uint8)
    y[:2, 0] = 10  # at least one zero
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"X": X, "y": y})
    return X, y


def write_svhn(root: Path, n_train: int = 60, n_test: int = 20) -> None:
    write_svhn_mat(root / "SVHN" / "train_32x32.mat", n_train, seed=0)
    write_svhn_mat(root / "SVHN" / "test_32x32.mat", n_test, seed=1)


# --- the search spaces ----------------------------------------------------------------------


def test_every_study_says_what_it_reproduces() -> None:
    for path in sorted(STUDIES.glob("*.yaml")):
        assert path.read_text().startswith("# "), f"{path.name} starts without a comment"


def test_mnist_mlp_random_is_the_reported_search() -> None:
    spec = study("mnist-mlp-random")
    space = {key: param.model_dump(exclude_defaults=True) for key, param in spec.space.items()}
    assert space == {
        "module__hidden1": {"type": "int", "low": 100, "high": 600},
        "module__hidden2": {"type": "int", "low": 100, "high": "module__hidden1"},
        "lr": {"type": "float", "low": 5e-4, "high": 5e-2, "log": True},
        "optimizer__weight_decay": {"type": "float", "low": 5e-5, "high": 5e-3, "log": True},
        "batch_size": {"type": "categorical", "choices": [200, 500, 1000, 1500, 2000]},
        "module__dropout": {"type": "float", "low": 0.0, "high": 0.5},
    }
    assert spec.fixed == {
        "max_epochs": 150,
        "early_stopping_patience": 15,
        "optimizer": "adam",
        "module__activation": "leaky_relu",
    }
    assert spec.sampler.name == "random" and spec.cv.folds == 3
    assert spec.dataset.options["test_fraction"] == 0.2


@pytest.mark.parametrize("name", ["regression-grid", "regression-random", "regression-tpe"])
def test_regression_studies_search_the_same_knobs_after_the_warm_start(name: str) -> None:
    spec = study(name)
    assert set(spec.space) == set(HAND_PICKED)
    assert set(spec.space["module__activation"].choices) == {"sigmoid", "relu", "tanh"}
    assert set(spec.space["optimizer"].choices) == {"adam", "sgd"}
    assert spec.cv.folds == 5 and spec.dataset.name == "synthetic_regression"
    assert spec.enqueue[0] == HAND_PICKED


@pytest.mark.parametrize("name", ["fashion-mnist-mlp-tpe", "fashion-mnist-cnn-tpe"])
def test_fashion_mnist_studies_search_the_named_knobs(name: str) -> None:
    spec = study(name)
    assert set(spec.space) == {
        "module__dropout",
        "module__activation",
        "lr",
        "optimizer__weight_decay",
        "optimizer",
    }
    assert spec.space["optimizer"].choices == ["adam", "sgd"]
    assert spec.sampler.name == "tpe" and not spec.cv.stratified
    assert (spec.model == "cnn") == bool(spec.fixed.get("module__batch_norm"))


@pytest.mark.parametrize("name", ["mnist-mlp-fixed-sigmoid", "mnist-cnn-lenet"])
def test_fixed_architectures_are_one_point_grids(name: str) -> None:
    spec = study(name)
    assert spec.sampler.name == "grid" and spec.space == {} and spec.n_trials == 1


def test_fixed_architectures_are_the_reported_nets() -> None:
    mlp = study("mnist-mlp-fixed-sigmoid").fixed
    assert (mlp["module__hidden1"], mlp.get("module__hidden2")) == (64, None)
    assert mlp["module__activation"] == "sigmoid"
    lenet = study("mnist-cnn-lenet").fixed
    shape = {k: lenet[f"module__{k}"] for k in ("conv1", "conv2", "conv3", "kernel_size")}
    assert shape == {"conv1": 6, "conv2": 16, "conv3": None, "kernel_size": 5}
    assert (lenet["module__hidden1"], lenet["module__hidden2"]) == (120, 84)


@pytest.mark.parametrize("name", ["digits-mlp-tpe", "digits-cnn-tpe"])
def test_digits_studies_search_adamax(name: str) -> None:
    spec = study(name)
    assert spec.dataset.name == "digits" and "adamax" in spec.space["optimizer"].choices


def test_the_digits_cnn_stops_early_on_the_validation_split() -> None:
    assert "early_stopping_patience" in study("digits-cnn-tpe").fixed


def test_the_digits_mlp_trains_on_shifted_copies_and_refits_on_the_validation_digits_too() -> None:
    # What brings its test error under 0.05 (docs/results.md, "What held the MLP back").
    spec = study("digits-mlp-tpe")
    assert spec.augment == "shifts" and spec.fixed["lr_schedule"] == "cosine"
    assert spec.refit.include_validation and "early_stopping_patience" not in spec.fixed
    # Measured the better axis for it (docs/search.md, "Which axis"): its epochs are reported.
    assert spec.pruner.name == "median" and spec.pruner.over == "epochs"


# --- the downloaded datasets, offline -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MNIST_FAMILY))
def test_mnist_family_study_runs_a_trial_on_idx_files(
    name: str, tmp_path: Path, sqlite_url: str
) -> None:
    write_mnist_raw(tmp_path / "data", MNIST_FAMILY[name], n_train=150, n_test=40)
    spec = offline_copy(name, tmp_path / "data", max_epochs=2)
    storage = open_storage(sqlite_url)
    registration = register_study(spec, storage)
    grid = spec.sampler.name == "grid"
    assert registration.enqueued == (1 if grid else 0)

    # A one-point grid runs its point and stops; a search is cut to one trial.
    run_worker(
        spec.name,
        sqlite_url,
        trials=None if grid else 1,
        worker_index=0,
        heartbeat_seconds=0,
        threads=1,
    )

    trials = optuna.load_study(study_name=spec.name, storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE], [
        t.user_attrs.get("fail_reason") for t in trials
    ]
    assert 0.0 <= trials[0].value <= 1.0
    assert len(trials[0].user_attrs["fold_scores"]) == spec.cv.folds
    assert set(trials[0].params) == set(spec.space)  # nothing searched in a one-point grid


@pytest.mark.slow
def test_one_point_grid_refits_like_any_study(tmp_path: Path, sqlite_url: str) -> None:
    write_mnist_raw(tmp_path / "data", "MNIST", n_train=150, n_test=40)
    spec = offline_copy("mnist-cnn-lenet", tmp_path / "data", max_epochs=2)
    register_study(spec, open_storage(sqlite_url))
    run_worker(spec.name, sqlite_url, worker_index=0, heartbeat_seconds=0, threads=1)

    result = refit_study(
        open_storage(sqlite_url),
        spec.name,
        results_dir=tmp_path / "results",
        artifacts=tmp_path / "artifacts",
    )

    assert result.params == spec.configuration({}) and 0.0 <= result.metrics["accuracy"] <= 1.0
    assert (tmp_path / "results" / spec.name / "confusion_matrix.csv").is_file()


def test_test_fraction_pools_both_splits(tmp_path: Path) -> None:
    written = write_mnist_raw(tmp_path, "MNIST", n_train=150, n_test=50)
    official = load_dataset("mnist", root=str(tmp_path))
    pooled = load_dataset("mnist", root=str(tmp_path), test_fraction=0.2)

    assert (len(official.X_train), len(official.X_test)) == (150, 50)
    assert (len(pooled.X_train), len(pooled.X_test)) == (160, 40)
    every_label = np.concatenate([written["train_labels"], written["test_labels"]])
    assert Counter(np.concatenate([pooled.y_train, pooled.y_test]).tolist()) == Counter(
        every_label.tolist()
    )
    # Every image lands in exactly one split: the pixel sums of the pool are all there.
    sums = np.concatenate([pooled.X_train, pooled.X_test]).sum(axis=(1, 2, 3))
    pool = np.concatenate([official.X_train, official.X_test]).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(np.sort(sums), np.sort(pool), rtol=1e-6)
    again = load_dataset("mnist", root=str(tmp_path), test_fraction=0.2, max_train=10)
    np.testing.assert_array_equal(again.y_train, pooled.y_train[:10])  # seeded
    with pytest.raises(DatasetError, match="0 < test_fraction < 1"):
        load_dataset("mnist", root=str(tmp_path), test_fraction=1.0)


def test_svhn_reads_torchvision_format(tmp_path: Path) -> None:
    X, y = write_svhn_mat(tmp_path / "SVHN" / "train_32x32.mat", 30)
    write_svhn_mat(tmp_path / "SVHN" / "test_32x32.mat", 12, seed=1)

    data = load_dataset("svhn", root=str(tmp_path))

    assert (data.name, data.task, data.input_shape, data.n_classes) == (
        "svhn",
        "classification",
        (3, 32, 32),
        10,
    )
    assert data.X_train.shape == (30, 3, 32, 32) and data.X_train.dtype == np.float32
    assert data.X_test.shape == (12, 3, 32, 32)
    # Image i, channel c, row h, column w is X[h, w, c, i], as torchvision's SVHN has it.
    np.testing.assert_allclose(data.X_train[4, 2, 7, 19], X[7, 19, 2, 4] / 255.0)
    expected = y[:, 0].astype(np.int64)
    expected[expected == 10] = 0
    np.testing.assert_array_equal(data.y_train, expected)
    assert data.y_train.dtype == np.int64 and 0 in data.y_train and data.y_train.max() <= 9

    first = load_dataset("svhn", root=str(tmp_path), max_train=5, max_test=3)
    assert (len(first.X_train), len(first.X_test)) == (5, 3)
    np.testing.assert_array_equal(first.X_train, data.X_train[:5])


def test_svhn_missing_or_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train_32x32.mat, test_32x32.mat.*download: true"):
        load_dataset("svhn", root=str(tmp_path))
    (tmp_path / "SVHN").mkdir()
    (tmp_path / "SVHN" / "train_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match="cannot read .* as a MATLAB .mat file"):
        load_dataset("svhn", root=str(tmp_path))
    scipy.io.savemat(str(tmp_path / "SVHN" / "train_32x32.mat"), {"X": np.zeros((28, 28, 1, 3))})
    with pytest.raises(DatasetError, match="must hold arrays X and y"):
        load_dataset("svhn", root=str(tmp_path))


class FakeSVHN:
    """Stands in for ``torchvision.datasets.SVHN``: 'downloads' by writing a small file."""

    calls: list[tuple[str, str, bool]] = []

    def __init__(self, root: str, split: str = "train", download: bool = False) -> None:
        FakeSVHN.calls.append((root, split, download))
        write_svhn_mat(Path(root) / f"{split}_32x32.mat", 8)


def test_svhn_downloads_missing_files_with_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "SVHN", FakeSVHN)
    FakeSVHN.calls = []
    write_svhn_mat(tmp_path / "SVHN" / "test_32x32.mat", 4)  # already there: not fetched

    data = load_dataset("svhn", root=str(tmp_path), download=True)

    assert FakeSVHN.calls == [(str(tmp_path / "SVHN"), "train", True)]
    assert (len(data.X_train), len(data.X_test)) == (8, 4)


@pytest.mark.slow
def test_svhn_study_runs_a_trial_on_mat_files(tmp_path: Path, sqlite_url: str) -> None:
    write_svhn(tmp_path / "data", n_train=150, n_test=20)
    spec = offline_copy("svhn-cnn-tpe", tmp_path / "data", max_epochs=1)
    register_study(spec, open_storage(sqlite_url))

    run_worker(spec.name, sqlite_url, trials=1, worker_index=0, heartbeat_seconds=0, threads=1)

    trials = optuna.load_study(study_name=spec.name, storage=sqlite_url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE], [
        t.user_attrs.get("fail_reason") for t in trials
    ]
