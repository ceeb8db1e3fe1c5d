"""Modules as a user writes them, for ``benchmarks/trial_speed.py``'s user-module cases.

Named in a spec as ``benchmarks.user_nets:MLP`` and ``benchmarks.user_nets:CNN`` (imported
from the repository root; workers are started with ``--allow-module benchmarks``). Plain torch
layers, no dropout or batch norm, so hpo stacks their folds (``hpo.engine.folds.vmapped``);
hpo passes ``input_shape`` and ``n_outputs``, the spec the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten, two hidden Linear layers with LeakyReLU, a Linear layer to the outputs."""

    def __init__(
        self, input_shape: Sequence[int], n_outputs: int, hidden1: int = 128, hidden2: int = 64
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden1),
            nn.LeakyReLU(),
            nn.Linear(hidden1, hidden2),
            nn.LeakyReLU(),
            nn.Linear(hidden2, n_outputs),
        )

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)


class CNN(nn.Module):
    """Two blocks of 3x3 Conv2d, ReLU and 2x2 max pooling, then a hidden Linear layer."""

    def __init__(
        self,
        input_shape: Sequence[int],
        n_outputs: int,
        conv1: int = 16,
        conv2: int = 32,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, conv1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(conv1, conv2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = conv2 * (height // 4) * (width // 4)
        self.head = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(X))
