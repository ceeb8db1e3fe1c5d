"""Augmentation inside each fit: more training rows, made from the fit's own training rows.

A net's ``augment`` (the spec's ``augment:``) adds, when the net is fitted, altered copies of
the rows it trains on; never of its validation rows, nor of a fold's held-out rows, which the
fold's net never sees. So cross-validation scores a configuration on rows that no copy of
came from (no leakage across folds), and the refit augments the training split only.

- ``none``: the rows as they are.
- ``shifts``: each image (rows of shape ``(C, H, W)``) and four copies of it, shifted by one
  pixel up, down, left and right, the vacated edge filled with zeros: five times the rows,
  so an epoch takes five times the steps. Copies come in blocks (every row shifted down, then
  every row shifted up, ...), deterministically: no random draw changes what a seeded fit
  computes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hpo.spec.names import AUGMENTATIONS

#: (rows, columns) each ``shifts`` copy moves its image by: down, up, right, left.
SHIFTS: tuple[tuple[int, int], ...] = ((1, 0), (-1, 0), (0, 1), (0, -1))


def check_augmentation(kind: str, input_shape: tuple[int, ...]) -> None:
    """Refuse an ``augment`` that is unknown or cannot alter rows of ``input_shape``.

    Raises:
        ValueError: saying what to change.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {kind!r}")
    if kind == "shifts" and len(input_shape) != 3:
        raise ValueError(
            f"augment: shifts moves images (rows of shape (channels, height, width)), but the "
            f"rows have shape {tuple(input_shape)}; remove augment or use augment: none"
        )


def augmented_rows(kind: str, rows: int) -> int:
    """How many rows a fit on ``rows`` rows trains on once ``kind`` has added its copies."""
    return rows * (1 + len(SHIFTS)) if kind == "shifts" else rows


def augment(kind: str, X: Any, y: Any) -> tuple[Any, Any]:
    """The rows ``X`` and targets ``y`` (or None) with ``kind``'s copies after them.

    ``X`` and ``y`` come back unchanged for ``none``; for ``shifts`` as tensors on ``X``'s
    device (arrays are turned into tensors first).

    Raises:
        ValueError: ``kind`` is unknown or cannot alter rows of ``X``'s shape.
    """
    check_augmentation(kind, tuple(X.shape[1:]))
    if kind == "none":
        return X, y
    X = torch.as_tensor(X)
    copies = [X, *(shifted(X, down, right) for down, right in SHIFTS)]
    if y is not None:
        y = torch.cat([torch.as_tensor(y, device=X.device)] * len(copies))
    return torch.cat(copies), y


def shifted(X: torch.Tensor, down: int, right: int) -> torch.Tensor:
    """Images ``X`` (n, C, H, W) moved ``down`` rows and ``right`` columns (negative: up or
    left, at most one pixel), zeros where nothing moved in."""
    height, width = X.shape[-2:]
    padded = F.pad(X, (1, 1, 1, 1))
    return padded[..., 1 - down : 1 - down + height, 1 - right : 1 - right + width]
