"""Which device a worker or a refit trains on, checked once before any trial."""

from __future__ import annotations

from typing import Any

import torch

from hpo.errors import DeviceError


def device_kind(device: Any) -> str:
    """``cpu`` or ``cuda`` (the kind of ``device``, a name like ``cuda:1`` or a
    ``torch.device``): the one check of "on the CPU or a GPU" the engine makes."""
    return torch.device(device).type


def default_device() -> str:
    """``cuda`` when a GPU is visible to torch, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None = None) -> str:
    """``device`` once checked to be usable here (``cpu``, ``cuda`` or ``cuda:N``), else
    ``default_device()``; checked before any trial, so a wrong one fails no trial.

    Raises:
        DeviceError: not a device hpo trains on, or a GPU that torch cannot reach.
    """
    if device is None:
        return default_device()
    try:
        kind = torch.device(device)
    except RuntimeError:
        kind = None
    if kind is None or kind.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {device!r}: hpo trains on cpu, cuda or cuda:N")
    if kind.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {device}: torch {torch.__version__} sees no CUDA GPU here (no "
                "NVIDIA GPU or driver, or a CPU-only build of torch); leave --device out to "
                "train on the CPU"
            )
        count = torch.cuda.device_count()
        if kind.index is not None and kind.index >= count:
            raise DeviceError(
                f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to "
                f"cuda:{count - 1}"
            )
    return device
