"""Modules a user might write, named in test specs as ``tests.user_nets:Name``.

hpo passes ``input_shape`` and ``n_outputs`` to a constructor that takes them
(``hpo.engine.build.net_for``); everything else comes from the spec's ``module__*`` keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class UserMLP(nn.Module):
    """Two hidden layers of plain torch: Linear, ReLU, Linear, Tanh, Linear."""

    def __init__(self, input_shape: Sequence[int], n_outputs: int, hidden: int = 32) -> None:
        super().__init__()
        self.hidden = nn.Linear(math.prod(input_shape), hidden)
        self.second = nn.Linear(hidden, hidden // 2)
        self.out = nn.Linear(hidden // 2, n_outputs)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(X.flatten(1)))
        return self.out(torch.tanh(self.second(h)))


class UserCNN(nn.Module):
    """Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, then Flatten and two Linear layers."""

    def __init__(
        self, input_shape: Sequence[int], n_outputs: int, channels: int = 8, hidden: int = 32
    ) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        flat = 2 * channels * (height // 2) * (width // 2)
        self.head = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(X))


class DropoutMLP(UserMLP):
    """``UserMLP`` with dropout after its first layer: random draws in training."""

    def __init__(self, input_shape: Sequence[int], n_outputs: int, hidden: int = 32) -> None:
        super().__init__(input_shape, n_outputs, hidden)
        self.dropout = nn.Dropout(0.2)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        h = self.dropout(torch.relu(self.hidden(X.flatten(1))))
        return self.out(torch.tanh(self.second(h)))


class BatchNormMLP(UserMLP):
    """``UserMLP`` with batch norm after its first layer: running statistics training moves."""

    def __init__(self, input_shape: Sequence[int], n_outputs: int, hidden: int = 32) -> None:
        super().__init__(input_shape, n_outputs, hidden)
        self.norm = nn.BatchNorm1d(hidden)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.hidden(X.flatten(1))))
        return self.out(torch.tanh(self.second(h)))


class BranchingMLP(UserMLP):
    """``UserMLP`` whose Python control flow depends on the data."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(X.flatten(1)))
        if h.sum() > 0:
            h = h * 2
        return self.out(torch.tanh(self.second(h)))
