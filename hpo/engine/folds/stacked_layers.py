"""A trial's K folds as one stacked module: K times the arithmetic in each op, one op's
overhead.

Small nets on a CPU are bound by the cost of each op (dispatch, autograd, a kernel sized for
bigger tensors), not by its arithmetic. The folds of a trial are K fits of the same net, with
the same initial weights and hyperparameters, on different rows. ``StackedFolds`` holds the K
copies of every parameter of hpo's MLP or CNN in one tensor and runs them side by side: a
linear layer is one batched matrix product over the folds (``baddbmm``), a convolution one
grouped convolution (fold k's channels are group k), a batch norm one batch norm over the K
folds' channels; activations and pooling act on every fold's values at once (what it gains is
measured in docs/benchmarks.md). Fold k's dropout masks come from a generator of its own
(``set_generators``); a batch whose size differs between folds runs fold by fold, through the
same layers applied to fold k's slice of each parameter.

A user's own module is stacked by torch instead (``hpo.engine.folds.vmapped.VmappedFolds``,
the same interface). ``hpo.engine.folds.stacked_fit`` trains either.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from hpo.engine.models import ACTIVATIONS, CNN, Dropout, keep_mask


class _Folds:
    """What the stacked layers share within one forward pass: the fold generators."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators

    def __len__(self) -> int:
        return len(self.generators)


class _StackedLayer(nn.Module):
    """One layer of ``StackedFolds``: the K folds' copies of a layer, applied stacked or to
    one fold's slice."""

    def stacked(self, h: torch.Tensor, folds: _Folds) -> torch.Tensor:
        """The layer of every fold at once, on the folds' stacked activations."""
        raise NotImplementedError

    def single(self, h: torch.Tensor, fold: int, folds: _Folds) -> torch.Tensor:
        """Fold ``fold``'s layer alone, on its own activations."""
        raise NotImplementedError

    def fold_state(self, fold: int) -> dict[str, torch.Tensor]:
        """Fold ``fold``'s parameters and buffers, under the layer's own names."""
        raise NotImplementedError


def _bias(layer: nn.Linear | nn.Conv2d | nn.BatchNorm1d | nn.BatchNorm2d) -> torch.Tensor:
    """A layer's bias (or batch norm's shift), which ``_unsupported`` made sure it has."""
    if layer.bias is None:
        raise ValueError(f"cannot stack a {type(layer).__name__} without a bias")
    return layer.bias


class _StackedLinear(_StackedLayer):
    def __init__(self, layer: nn.Linear, folds: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(layer.weight.detach().expand(folds, -1, -1).clone())
        self.bias = nn.Parameter(_bias(layer).detach().expand(folds, -1).clone())

    def stacked(self, h: torch.Tensor, folds: _Folds) -> torch.Tensor:  # h: (K, N, F)
        return torch.baddbmm(self.bias.unsqueeze(1), h, self.weight.transpose(1, 2))

    def single(self, h: torch.Tensor, fold: int, folds: _Folds) -> torch.Tensor:
        return F.linear(h, self.weight[fold], self.bias[fold])

    def fold_state(self, fold: int) -> dict[str, torch.Tensor]:
        return {"weight": self.weight[fold], "bias": self.bias[fold]}


class _StackedConv2d(_StackedLayer):
    def __init__(self, layer: nn.Conv2d, folds: int) -> None:
        super().__init__()
        self.out_channels = layer.out_channels
        self.options: dict[str, Any] = {
            "stride": layer.stride,
            "padding": layer.padding,
            "dilation": layer.dilation,
        }
        self.weight = nn.Parameter(layer.weight.detach().repeat(folds, 1, 1, 1))
        self.bias = nn.Parameter(_bias(layer).detach().repeat(folds))

    def _rows(self, fold: int) -> slice:
        return slice(fold * self.out_channels, (fold + 1) * self.out_channels)

    def stacked(self, h: torch.Tensor, folds: _Folds) -> torch.Tensor:  # h: (N, K*C, H, W)
        return F.conv2d(h, self.weight, self.bias, groups=len(folds), **self.options)

    def single(self, h: torch.Tensor, fold: int, folds: _Folds) -> torch.Tensor:
        rows = self._rows(fold)
        return F.conv2d(h, self.weight[rows], self.bias[rows], **self.options)

    def fold_state(self, fold: int) -> dict[str, torch.Tensor]:
        rows = self._rows(fold)
        return {"weight": self.weight[rows], "bias": self.bias[rows]}


class _StackedBatchNorm(_StackedLayer):
    """BatchNorm1d over (K, N, F) or BatchNorm2d over (N, K*C, H, W): fold k's channels are
    normalized by fold k's statistics, as in its own fit."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(self, layer: nn.BatchNorm1d | nn.BatchNorm2d, folds: int) -> None:
        super().__init__()
        if layer.momentum is None or layer.running_mean is None or layer.running_var is None:
            raise ValueError("cannot stack a batch norm without running statistics and momentum")
        self.channels = layer.num_features
        self.momentum: float = layer.momentum
        self.eps = layer.eps
        self.images = isinstance(layer, nn.BatchNorm2d)
        self.weight = nn.Parameter(layer.weight.detach().repeat(folds))
        self.bias = nn.Parameter(_bias(layer).detach().repeat(folds))
        self.register_buffer("running_mean", layer.running_mean.repeat(folds))
        self.register_buffer("running_var", layer.running_var.repeat(folds))
        tracked = layer.num_batches_tracked
        self.register_buffer("num_batches_tracked", torch.as_tensor(tracked).clone())

    def _normalize(self, h: torch.Tensor, rows: slice) -> torch.Tensor:
        return F.batch_norm(
            h,
            self.running_mean[rows],
            self.running_var[rows],
            self.weight[rows],
            self.bias[rows],
            self.training,
            self.momentum,
            self.eps,
        )

    def _rows(self, fold: int) -> slice:
        return slice(fold * self.channels, (fold + 1) * self.channels)

    def _count_batch(self) -> None:
        if self.training:
            self.num_batches_tracked.add_(1)

    def stacked(self, h: torch.Tensor, folds: _Folds) -> torch.Tensor:
        self._count_batch()
        every = slice(None)
        if self.images:
            return self._normalize(h, every)
        K, N, F_ = h.shape
        out = self._normalize(h.transpose(0, 1).reshape(N, K * F_), every)
        return out.view(N, K, F_).transpose(0, 1)

    def single(self, h: torch.Tensor, fold: int, folds: _Folds) -> torch.Tensor:
        if fold == 0:
            self._count_batch()
        return self._normalize(h, self._rows(fold))

    def fold_state(self, fold: int) -> dict[str, torch.Tensor]:
        rows = self._rows(fold)
        return {
            "weight": self.weight[rows],
            "bias": self.bias[rows],
            "running_mean": self.running_mean[rows],
            "running_var": self.running_var[rows],
            "num_batches_tracked": self.num_batches_tracked,
        }


class _StackedDropout(_StackedLayer):
    """hpo's CPU ``Dropout``, with fold k's mask drawn from fold k's generator."""

    def __init__(self, layer: Dropout) -> None:
        super().__init__()
        self.p = layer.p

    def stacked(self, h: torch.Tensor, folds: _Folds) -> torch.Tensor:  # h: (K, N, F)
        if not self.training:
            return h
        uniform = torch.stack([torch.rand(h.shape[1:], generator=g) for g in folds.generators])
        return h * keep_mask(uniform, self.p)

    def single(self, h: torch.Tensor, fold: int, folds: _Folds) -> torch.Tensor:
        if not self.training:
            return h
        return h * keep_mask(torch.rand(h.shape, generator=folds.generators[fold]), self.p)

    def fold_state(self, fold: int) -> dict[str, torch.Tensor]:
        return {}


class _Elementwise(_StackedLayer):
    """An activation or a pooling: it acts on each fold's values as on one fold's."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def stacked(self, h: torch.Tensor, folds: _Folds) -> torch.Tensor:
        return self.layer(h)  # type: ignore[no-any-return]

    def single(self, h: torch.Tensor, fold: int, folds: _Folds) -> torch.Tensor:
        return self.layer(h)  # type: ignore[no-any-return]

    def fold_state(self, fold: int) -> dict[str, torch.Tensor]:
        return {}


class _Flatten(_StackedLayer):
    """From images (N, K*C, H, W) to rows (K, N, C*H*W); or rows (K, N, *shape) flattened."""

    def __init__(self, images: bool) -> None:
        super().__init__()
        self.images = images

    def stacked(self, h: torch.Tensor, folds: _Folds) -> torch.Tensor:
        if not self.images:
            return h.flatten(2)
        N, _, H, W = h.shape
        K = len(folds)
        return h.reshape(N, K, -1, H, W).transpose(0, 1).reshape(K, N, -1)

    def single(self, h: torch.Tensor, fold: int, folds: _Folds) -> torch.Tensor:
        return h.flatten(1)

    def fold_state(self, fold: int) -> dict[str, torch.Tensor]:
        return {}


_ELEMENTWISE = (*ACTIVATIONS.values(), nn.MaxPool2d, nn.AvgPool2d)


def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """hpo's MLP and CNN apply their leaf modules one after another, in registration order."""
    return [(name, m) for name, m in module.named_modules() if not list(m.children())]


def _unsupported(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot be stacked, or None."""
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or layer.padding_mode != "zeros" or layer.bias is None:
            return "a grouped, bias-free or non-zero-padded convolution"
    elif isinstance(layer, nn.Linear):
        if layer.bias is None:
            return "a linear layer without bias"
    elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if not (layer.affine and layer.track_running_stats) or layer.momentum is None:
            return "a batch norm without affine weights, running statistics or momentum"
    elif isinstance(layer, Dropout):
        if layer.inplace:
            return "an in-place dropout"
    elif not isinstance(layer, (nn.Flatten, *_ELEMENTWISE)):
        return f"a {type(layer).__name__} layer"
    return None


def _stacked_layer(layer: nn.Module, folds: int, images: bool) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return _StackedLinear(layer, folds)
    if isinstance(layer, nn.Conv2d):
        return _StackedConv2d(layer, folds)
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _StackedBatchNorm(layer, folds)
    if isinstance(layer, Dropout):
        return _StackedDropout(layer)
    if isinstance(layer, nn.Flatten):
        return _Flatten(images)
    return _Elementwise(layer)


class StackedFolds(nn.Module):
    """K copies of ``module`` (an hpo MLP or CNN), trained side by side.

    Args:
        module: the initialized module every fold starts from.
        folds: K.

    Its forward takes a list of K batches, one per fold, and returns K outputs stacked in one
    tensor (``(K, N, outputs)``) when the batches have the same size, else a list of K.
    ``set_generators`` gives it the folds' generators before training.
    """

    def __init__(self, module: nn.Module, folds: int) -> None:
        super().__init__()
        self.images = isinstance(module, CNN)
        self.names: list[str] = []
        layers: list[nn.Module] = []
        images = self.images
        for name, layer in _leaves(module):
            reason = _unsupported(layer)
            if images and isinstance(layer, (Dropout, nn.BatchNorm1d)):
                reason = f"a {type(layer).__name__} before its Flatten"
            if reason is not None:
                raise ValueError(f"cannot stack folds of a module with {reason} ({name})")
            layers.append(_stacked_layer(layer, folds, images))
            self.names.append(name)
            images = images and not isinstance(layer, nn.Flatten)
        self.layers = nn.ModuleList(layers)
        self.folds = _Folds([torch.Generator() for _ in range(folds)])

    def set_generators(self, generators: list[torch.Generator]) -> None:
        self.folds = _Folds(generators)

    def forward(self, batches: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if len({len(batch) for batch in batches}) > 1:
            return [self._single(batch, fold) for fold, batch in enumerate(batches)]
        if self.images:
            N, C, H, W = batches[0].shape
            h = torch.stack(batches, 1).view(N, len(batches) * C, H, W)
            h = h.contiguous(memory_format=torch.channels_last)
        else:
            h = torch.stack(batches)
        for layer in self._layers():
            h = layer.stacked(h, self.folds)
        return h

    def _single(self, h: torch.Tensor, fold: int) -> torch.Tensor:
        for layer in self._layers():
            h = layer.single(h, fold, self.folds)
        return h

    def _layers(self) -> Iterable[_StackedLayer]:
        # An nn.ModuleList, so that the parameters are registered; its items are these.
        return cast("Iterable[_StackedLayer]", self.layers)

    def fold_state_dict(self, fold: int) -> dict[str, torch.Tensor]:
        """Fold k's weights and buffers, under the names of the module it was stacked from."""
        return {
            f"{name}.{key}": value.detach().clone()
            for name, layer in zip(self.names, self._layers(), strict=True)
            for key, value in layer.fold_state(fold).items()
        }
