"""A residual MLP: an ordinary ``torch.nn.Module``, tuned by hpo from ``custom-module.yaml``.

hpo passes ``input_shape`` and ``n_outputs`` from the data because the constructor takes
arguments of those names; ``width`` and ``blocks`` are searched as ``module__width`` and
``module__blocks``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """``blocks`` residual blocks ``x + W2 relu(W1 x)`` of ``width`` units between a linear
    input layer and a linear output layer.

    Args:
        input_shape: shape of one sample; flattened first.
        n_outputs: classes (logits out) or 1 for a regression.
        width: units of every block. Default 64.
        blocks: residual blocks. Default 2.
    """

    def __init__(
        self, input_shape: tuple[int, ...], n_outputs: int, width: int = 64, blocks: int = 2
    ) -> None:
        super().__init__()
        self.input = nn.Linear(math.prod(input_shape), width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
            for _ in range(blocks)
        )
        self.output = nn.Linear(width, n_outputs)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.input(X.flatten(1)))
        for block in self.blocks:
            h = torch.relu(h + block(h))
        return self.output(h)
