from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from idx_files import write_mnist_raw
from sklearn import datasets as sk_datasets

from hpo.engine.data import (
    DATASETS,
    SYNTHETIC_TRAIN_INTERVALS,
    DataSplits,
    dataset_options,
    load_dataset,
    synthetic_function,
)
from hpo.errors import DatasetError

TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _rows(X: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in X.reshape(len(X), -1)}


def _check_classification(data: DataSplits) -> None:
    assert data.task == "classification"
    for X, y in ((data.X_train, data.y_train), (data.X_test, data.y_test)):
        assert X.dtype == np.float32 and X.shape[1:] == data.input_shape
        assert y.dtype == np.int64 and y.shape == (len(X),)
        assert y.min() >= 0 and data.n_classes is not None and y.max() < data.n_classes


def _check_regression(data: DataSplits) -> None:
    assert data.task == "regression" and data.n_classes is None
    for X, y in ((data.X_train, data.y_train), (data.X_test, data.y_test)):
        assert X.dtype == np.float32 and X.shape[1:] == data.input_shape
        assert y.dtype == np.float32 and y.shape == (len(X), 1)


def test_registry_names() -> None:
    assert set(DATASETS) == {
        "digits",
        "diabetes",
        "synthetic_regression",
        "npz",
        "csv",
        "mnist",
        "fashion_mnist",
        "svhn",
        "mnist_5k",
    }


def test_digits_split_in_file_order() -> None:
    data = load_dataset("digits")
    _check_classification(data)
    assert data.input_shape == (1, 8, 8) and data.n_classes == 10
    assert (len(data.X_train), len(data.X_valid), len(data.X_test)) == (1000, 350, 447)
    assert data.X_valid.dtype == np.float32 and data.y_valid.dtype == np.int64
    assert 0.0 <= data.X_train.min() and data.X_train.max() == 1.0
    original = sk_datasets.load_digits()
    np.testing.assert_array_equal(data.X_test.reshape(447, 64) * 16, original.data[1350:])
    np.testing.assert_array_equal(data.y_test, original.target[1350:])
    assert not _rows(data.X_test) & _rows(data.X_train)
    assert not _rows(data.X_test) & _rows(data.X_valid)


def test_diabetes_features_are_raw_so_each_fold_scales_its_own() -> None:
    data = load_dataset("diabetes")
    _check_regression(data)
    assert data.input_shape == (10,)
    assert (len(data.X_train), len(data.X_test)) == (353, 89)
    # Every row is one of scikit-learn's unscaled rows: no statistic of any split is applied
    # before the folds are cut (the net's preprocess: standard scales each fold).
    original = sk_datasets.load_diabetes(scaled=False)
    raw = _rows(original.data.astype(np.float32))
    assert _rows(data.X_train) <= raw and _rows(data.X_test) <= raw
    assert not _rows(data.X_test) & _rows(data.X_train)
    assert set(np.unique(data.X_train[:, 1])) == {1.0, 2.0}  # sex, as coded in the file
    assert 25 <= data.y_train.min() and data.y_train.max() <= 346


def test_diabetes_options_change_the_split() -> None:
    small = load_dataset("diabetes", test_size=0.5, seed=1)
    assert len(small.X_test) == 221
    assert not np.array_equal(load_dataset("diabetes").y_test[:10], small.y_test[:10])


def test_synthetic_regression_leaves_gaps_for_the_test_split() -> None:
    data = load_dataset("synthetic_regression", n_train=500, n_test=400, seed=3)
    _check_regression(data)
    assert (len(data.X_train), len(data.X_test), data.input_shape) == (500, 400, (1,))
    x_train = data.X_train[:, 0]
    inside = np.zeros(len(x_train), dtype=bool)
    for low, high in SYNTHETIC_TRAIN_INTERVALS:
        assert ((x_train >= low) & (x_train <= high)).sum() > 50  # every interval is used
        inside |= (x_train >= low) & (x_train <= high)
    assert inside.all()
    x_test = data.X_test[:, 0]
    assert 0.0 <= x_test.min() and x_test.max() <= 1.0
    for low, high in ((0.3, 0.45), (0.7, 0.85)):
        assert ((x_test > low) & (x_test < high)).sum() > 10
    # Test targets are noise-free; training targets carry the requested noise.
    np.testing.assert_allclose(data.y_test[:, 0], synthetic_function(x_test), atol=1e-5)
    residual = data.y_train[:, 0] - synthetic_function(x_train)
    assert residual.std() == pytest.approx(0.1, rel=0.2)


def test_synthetic_regression_is_seeded() -> None:
    first = load_dataset("synthetic_regression", seed=1)
    again = load_dataset("synthetic_regression", seed=1)
    other = load_dataset("synthetic_regression", seed=2)
    np.testing.assert_array_equal(first.X_train, again.X_train)
    np.testing.assert_array_equal(first.y_train, again.y_train)
    assert not np.array_equal(first.X_train, other.X_train)
    quiet = load_dataset("synthetic_regression", noise=0.0)
    expected = synthetic_function(quiet.X_train[:, 0])
    np.testing.assert_allclose(quiet.y_train[:, 0], expected, atol=1e-5)


@pytest.mark.parametrize("options", [{"noise": -0.1}, {"n_train": 0}, {"n_test": 0}])
def test_synthetic_regression_rejects_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(DatasetError, match="synthetic_regression"):
        load_dataset("synthetic_regression", **options)


def test_npz_classification_encodes_labels(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 2, 3))
    y = np.array([7, 3, 9, 3, 7] * 10)
    np.savez(path, X=X, y=y)
    data = load_dataset("npz", path=str(path), test_size=0.2, seed=0)
    _check_classification(data)
    assert data.name == "npz"
    assert (data.input_shape, data.n_classes) == ((2, 3), 3)
    assert (len(data.X_train), len(data.X_test)) == (40, 10)
    # Codes follow the sorted class order of np.unique: 3 -> 0, 7 -> 1, 9 -> 2.
    for X_split, y_split in ((data.X_train, data.y_train), (data.X_test, data.y_test)):
        for row, code in zip(X_split, y_split, strict=True):
            index = int(np.flatnonzero((X.astype(np.float32) == row).all(axis=(1, 2)))[0])
            assert code == {3: 0, 7: 1, 9: 2}[int(y[index])]


@pytest.mark.parametrize(
    ("y", "task", "expected"),
    [
        (np.arange(150) % 4, None, "classification"),
        ((np.arange(150) % 4).astype(np.float64), None, "classification"),
        (np.array(["cat", "dog", "eel"] * 50), None, "classification"),
        (np.arange(150) % 100, None, "classification"),  # 100 distinct values: still classes
        (np.linspace(0, 1, 150), None, "regression"),
        (np.arange(150) * 2, None, "regression"),  # integers, but more than 100 distinct values
        (np.arange(150) * 2, "classification", "classification"),
        (np.arange(150) % 4, "regression", "regression"),
    ],
)
def test_npz_task_is_inferred_or_given(
    tmp_path: Path, y: np.ndarray, task: str | None, expected: str
) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, X=np.random.default_rng(0).normal(size=(len(y), 4)), y=y)
    data = load_dataset("npz", path=str(path), task=task)
    assert data.task == expected
    if expected == "classification":
        _check_classification(data)
        assert data.n_classes == np.unique(y).size
    else:
        _check_regression(data)


def test_npz_with_explicit_test_arrays(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    X, y = np.arange(24.0).reshape(12, 2), np.array(["b", "a", "c"] * 4)
    X_test, y_test = np.arange(8.0).reshape(4, 2) + 100, np.array(["a", "d", "a", "b"])
    np.savez(path, X=X, y=y, X_test=X_test, y_test=y_test)
    data = load_dataset("npz", path=str(path))
    _check_classification(data)
    assert data.n_classes == 4  # "d" appears only in the test split and still gets a code
    np.testing.assert_array_equal(data.X_train, X)  # no shuffling when the file holds a split
    np.testing.assert_array_equal(data.X_test, X_test)
    np.testing.assert_array_equal(data.y_train, [1, 0, 2] * 4)
    np.testing.assert_array_equal(data.y_test, [0, 3, 0, 1])


def test_npz_regression_with_column_targets(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(
        path,
        X=np.ones((10, 3)),
        y=np.linspace(0, 1, 10).reshape(-1, 1),
        X_test=np.zeros((5, 3)),
        y_test=np.linspace(0, 1, 5).reshape(-1, 1),
    )
    data = load_dataset("npz", path=str(path), task="regression")
    _check_regression(data)
    np.testing.assert_allclose(data.y_test[:, 0], np.linspace(0, 1, 5))


@pytest.mark.parametrize(
    ("arrays", "options", "message"),
    [
        (None, {}, "file not found. It must be a .npz file holding arrays X and y"),
        ({"X": np.ones((4, 2))}, {}, "must hold arrays X and y.*but it holds X"),
        ({"X": np.ones((4, 2)), "y": np.ones(4), "X_test": np.ones((2, 2))}, {}, "both X_test"),
        ({"X": np.ones((4, 2)), "y": np.ones(3)}, {}, r"y must have shape \(4,\)"),
        ({"X": np.ones(4), "y": np.ones(4)}, {}, "X must have shape"),
        (
            {
                "X": np.ones((4, 2)),
                "y": np.ones(4),
                "X_test": np.ones((2, 3)),
                "y_test": np.ones(2),
            },
            {},
            "X_test rows must have the shape of X rows",
        ),
        ({"X": np.ones((4, 2)), "y": np.ones(4)}, {"task": "ranking"}, "`task` must be one of"),
        ({"X": np.ones((4, 2)), "y": np.ones(4)}, {"test_size": 1.5}, "cannot hold out"),
        ({"X": np.ones((4, 2)), "y": np.array(list("abab"))}, {"task": "regression"}, "numeric"),
    ],
)
def test_npz_errors(
    tmp_path: Path, arrays: dict[str, np.ndarray] | None, options: dict[str, Any], message: str
) -> None:
    path = tmp_path / "data.npz"
    if arrays is not None:
        np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("npz", path=str(path), **options)
    assert str(path) in str(info.value)


def _write_csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_csv_classification(tmp_path: Path) -> None:
    rows = [f"{i},{i % 3 * 0.5},{['setosa', 'virginica'][i % 2]}" for i in range(20)]
    path = _write_csv(tmp_path / "table.csv", "a,b,species\n" + "\n".join(rows) + "\n")
    data = load_dataset("csv", path=path, target="species", test_size=0.25)
    _check_classification(data)
    assert (data.name, data.input_shape, data.n_classes) == ("csv", (2,), 2)
    assert (len(data.X_train), len(data.X_test)) == (15, 5)
    for X, y in ((data.X_train, data.y_train), (data.X_test, data.y_test)):
        for row, code in zip(X, y, strict=True):
            assert code == int(row[0]) % 2  # setosa on even rows -> 0, virginica -> 1


def test_csv_regression(tmp_path: Path) -> None:
    rows = [f"{i},{i * 1.5 + 0.25}" for i in range(20)]
    path = _write_csv(tmp_path / "table.csv", "x,size\n" + "\n".join(rows) + "\n")
    data = load_dataset("csv", path=path, target="size", seed=4)
    _check_regression(data)
    assert (data.input_shape, len(data.X_test)) == ((1,), 4)
    np.testing.assert_allclose(data.y_train[:, 0], data.X_train[:, 0] * 1.5 + 0.25)


@pytest.mark.parametrize(
    ("text", "target", "message"),
    [
        (None, "y", "file not found"),
        ("a,b,y\n1,2,3\n", "label", "target column 'label' not found; the columns are a, b, y"),
        ("a,color,y\n1,red,3\n2,blue,4\n", "y", "must be numeric, but color are not"),
        ("a,b,y\n1,,3\n2,5,4\n", "y", "columns b have missing values"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str | None, target: str, message: str) -> None:
    path = tmp_path / "table.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("csv", path=str(path), target=target)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_torchvision_datasets_read_idx_files(tmp_path: Path, name: str) -> None:
    written = write_mnist_raw(tmp_path, TORCHVISION_FOLDERS[name], n_train=20, n_test=10)
    data = load_dataset(name, root=str(tmp_path))
    _check_classification(data)
    assert (data.name, data.input_shape, data.n_classes) == (name, (1, 28, 28), 10)
    assert data.X_valid is None
    assert (len(data.X_train), len(data.X_test)) == (20, 10)
    np.testing.assert_array_equal(data.X_train[:, 0] * 255, written["train_images"])
    np.testing.assert_array_equal(data.X_test[:, 0] * 255, written["test_images"])
    np.testing.assert_array_equal(data.y_train, written["train_labels"])
    np.testing.assert_array_equal(data.y_test, written["test_labels"])
    assert 0.0 <= data.X_train.min() and data.X_train.max() <= 1.0


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_torchvision_datasets_take_the_first_images(tmp_path: Path, name: str) -> None:
    written = write_mnist_raw(tmp_path, TORCHVISION_FOLDERS[name], n_train=20, n_test=10)
    data = load_dataset(name, root=str(tmp_path), max_train=7, max_test=3)
    assert (len(data.X_train), len(data.X_test)) == (7, 3)
    np.testing.assert_array_equal(data.y_train, written["train_labels"][:7])
    np.testing.assert_array_equal(data.X_test[:, 0] * 255, written["test_images"][:3])


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_torchvision_datasets_missing_files(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError, match="download: true") as info:
        load_dataset(name, root=str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere" / TORCHVISION_FOLDERS[name] / "raw") in str(info.value)
    assert "train-images-idx3-ubyte" in str(info.value)


def test_idx_writer_uses_the_mnist_magic_numbers(tmp_path: Path) -> None:
    write_mnist_raw(tmp_path, "MNIST", n_train=3, n_test=2)
    raw = tmp_path / "MNIST" / "raw"
    images = (raw / "train-images-idx3-ubyte").read_bytes()
    labels = (raw / "t10k-labels-idx1-ubyte").read_bytes()
    assert struct.unpack(">4i", images[:16]) == (2051, 3, 28, 28)
    assert len(images) == 16 + 3 * 28 * 28
    assert struct.unpack(">2i", labels[:8]) == (2049, 2)
    assert len(labels) == 8 + 2


def test_unknown_dataset_suggests_a_name() -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("digit")
    assert "Unknown dataset 'digit'. Did you mean 'digits'?" in str(info.value)
    assert "fashion_mnist" in str(info.value)
    with pytest.raises(DatasetError, match="Unknown dataset"):
        dataset_options("imagenet")


def test_unknown_and_missing_options_are_listed_at_once() -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("npz", pth="x.npz", seed=1)
    message = str(info.value)
    assert "unknown option 'pth' (did you mean 'path'?)" in message
    assert "missing required option 'path'" in message
    assert "Its options are: path, seed, task, test_size." in message
    with pytest.raises(DatasetError, match="unknown option 'seed'.*Its options are: none"):
        load_dataset("digits", seed=0)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("digits", set()),
        ("diabetes", {"test_size", "seed"}),
        ("synthetic_regression", {"n_train", "n_test", "noise", "seed"}),
        ("npz", {"path", "task", "test_size", "seed"}),
        ("csv", {"path", "target", "task", "test_size", "seed"}),
        ("mnist", {"root", "download", "max_train", "max_test", "test_fraction"}),
        ("fashion_mnist", {"root", "download", "max_train", "max_test", "test_fraction"}),
        ("svhn", {"root", "download", "max_train", "max_test"}),
        ("mnist_5k", set()),
    ],
)
def test_dataset_options(name: str, options: set[str]) -> None:
    assert dataset_options(name) == options
