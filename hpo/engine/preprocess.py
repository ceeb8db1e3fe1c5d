"""Feature scaling inside each fit: fitted on the fit's training rows, applied to every batch.

A net's ``preprocess`` (``standard``, ``minmax`` or ``none``; the spec's ``preprocess:``) is
fitted when the net is fitted, on the rows it is fitted on (with the copies its ``augment``
adds: ``hpo.engine.augment``), by scikit-learn's
``StandardScaler`` / ``MinMaxScaler``; the net then scales every batch it trains on, validates
on or predicts, on its device. So a fold is scaled by its own training rows' statistics and its
held-out rows never shape them (no leakage across folds), the refit by the training split's,
and a saved net predicts on raw features.

Features of any shape are scaled per value position (a table's column; an image's pixel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from hpo.spec.names import PREPROCESSORS


@dataclass
class Scaling:
    """``(x - center) / spread`` per value position, as a fitted scikit-learn scaler computes.

    Attributes:
        kind: ``standard`` or ``minmax``.
        center: the training rows' mean (standard) or minimum (minmax), shape of one row.
        spread: their standard deviation (standard) or range (minmax); 1 where a feature is
            constant, as scikit-learn has it.
    """

    kind: str
    center: np.ndarray
    spread: np.ndarray
    _on_device: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (a batch of rows) scaled, on its own device and in its own dtype."""
        key = (str(x.device), x.dtype)
        if key not in self._on_device:
            self._on_device[key] = (
                torch.as_tensor(self.center, dtype=x.dtype, device=x.device),
                torch.as_tensor(self.spread, dtype=x.dtype, device=x.device),
            )
        center, spread = self._on_device[key]
        return (x - center) / spread

    def state(self) -> dict[str, Any]:
        """Plain data (lists) for JSON; ``Scaling.from_state`` reads it back."""
        return {
            "kind": self.kind,
            "shape": list(self.center.shape),
            "center": self.center.reshape(-1).tolist(),
            "spread": self.spread.reshape(-1).tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Scaling:
        shape = tuple(state["shape"])
        return cls(
            state["kind"],
            np.asarray(state["center"], dtype=np.float64).reshape(shape),
            np.asarray(state["spread"], dtype=np.float64).reshape(shape),
        )


def fit_scaling(kind: str, X: Any) -> Scaling | None:
    """The scaling ``kind`` fitted on the rows ``X`` (an array or a tensor); None for
    ``none``.

    Raises:
        ValueError: an unknown ``kind``, or ``X`` that is not an array of rows.
    """
    if kind not in PREPROCESSORS:
        raise ValueError(f"preprocess must be one of {', '.join(PREPROCESSORS)}, got {kind!r}")
    if kind == "none":
        return None
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    if not isinstance(X, np.ndarray) or X.ndim < 2:
        raise ValueError(
            f"preprocess: {kind} needs the features as an array of rows (n, ...), got "
            f"{type(X).__name__}; scale them yourself and set preprocess: none"
        )
    rows = X.reshape(len(X), -1)
    if kind == "standard":
        scaler = StandardScaler().fit(rows)
        center, spread = scaler.mean_, scaler.scale_
    else:
        scaler = MinMaxScaler().fit(rows)
        center, spread = scaler.data_min_, 1.0 / scaler.scale_
    shape = X.shape[1:]
    return Scaling(kind, np.asarray(center).reshape(shape), np.asarray(spread).reshape(shape))
