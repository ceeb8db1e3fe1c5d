"""The built-in measures of a trial's net (``hpo.spec.objectives.MEASURES``), for studies that
minimize them or bound them by constraints.

``n_parameters`` and ``predict_ms_per_1000_rows`` are properties of the architecture, not of
the fitted weights, so they are measured on a freshly initialized copy of the trial's net (on
its device): a stacked or fold-process fit keeps no per-fold skorch net to ask afterwards.
``fit_seconds`` is the mean over the trial's folds of what each fold's fit took.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import clone

#: Rows predicted by ``predict_ms_per_1000_rows``.
PREDICT_ROWS = 1000


def measure(
    names: Sequence[str], net: Any, X: np.ndarray, fold_seconds: Sequence[float]
) -> dict[str, float]:
    """The measures ``names`` of the trial's unfitted ``net``, with its training rows ``X``
    (for the prediction's input) and its folds' fit seconds."""
    values: dict[str, float] = {}
    initialized = None
    for name in names:
        if name == "fit_seconds":
            values[name] = float(np.mean(fold_seconds)) if len(fold_seconds) else float("nan")
            continue
        if initialized is None:
            initialized = clone(net).initialize()
        if name == "n_parameters":
            values[name] = float(n_parameters(initialized.module_))
        elif name == "predict_ms_per_1000_rows":
            values[name] = predict_ms(initialized, X)
        else:
            raise KeyError(f"no measure named {name!r}")
    return values


def n_parameters(module: torch.nn.Module) -> int:
    """The module's trainable parameters (``requires_grad``), as torch counts elements."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def predict_ms(net: Any, X: np.ndarray) -> float:
    """Milliseconds for ``net`` to predict ``PREDICT_ROWS`` rows of ``X`` (repeated when it has
    fewer), in batches of its ``batch_size``, on its device, results back on the host; after
    one warm-up batch, so that lazy initialisation (cuDNN, allocator) is not counted."""
    rows = np.resize(np.arange(len(X)), PREDICT_ROWS)
    sample = np.asarray(X[rows], dtype=np.float32)
    with torch.inference_mode():
        net.forward(sample[: min(len(sample), net.batch_size)], training=False)
        started = time.perf_counter()
        net.forward(sample, training=False)  # gathered on the host: waits for the device
        return (time.perf_counter() - started) * 1000.0
