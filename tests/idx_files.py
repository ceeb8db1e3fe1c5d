"""Write small MNIST-format IDX files, so the real torchvision loaders run offline in tests.

The IDX format: a big-endian int32 magic number ``0x0800 | ndim`` (8 marks unsigned bytes, so
2051 for 3-D images and 2049 for 1-D labels), one big-endian int32 per dimension, then the raw
bytes in C order.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

UNSIGNED_BYTE = 0x08


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8, 1 to 3 dimensions) to ``path`` as an uncompressed IDX file."""
    magic = (UNSIGNED_BYTE << 8) | array.ndim
    header = struct.pack(f">{1 + array.ndim}i", magic, *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist_raw(
    root: Path, folder: str, *, n_train: int = 20, n_test: int = 10, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write random 28x28 images and labels 0..9 under ``root/folder/raw/``.

    Args:
        root: The ``root`` option the loader will be given.
        folder: ``"MNIST"`` or ``"FashionMNIST"``, torchvision's class name.
        n_train: Number of training images. Default 20.
        n_test: Number of test images. Default 10.
        seed: Seed of the random pixels and labels. Default 0.

    Returns:
        The arrays written, keyed ``train_images``, ``train_labels``, ``test_images``,
        ``test_labels``.
    """
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    write_idx(raw / "train-images-idx3-ubyte", arrays["train_images"])
    write_idx(raw / "train-labels-idx1-ubyte", arrays["train_labels"])
    write_idx(raw / "t10k-images-idx3-ubyte", arrays["test_images"])
    write_idx(raw / "t10k-labels-idx1-ubyte", arrays["test_labels"])
    return arrays
