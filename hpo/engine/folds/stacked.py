"""A trial's K folds trained as one stacked model: K times the arithmetic in each op, one
op's overhead.

Small nets on a CPU are bound by the cost of each op (dispatch, autograd, a kernel sized for
bigger tensors), not by its arithmetic. The folds of a trial are K fits of the same net, with
the same initial weights (the net's ``random_state`` seeds each fit) and the same
hyperparameters, on different rows. ``StackedFolds`` holds the K copies of every parameter in
one tensor and runs them side by side: a linear layer is one batched matrix product over the
folds (``baddbmm``), a convolution one grouped convolution (fold k's channels are group k),
a batch norm one batch norm over the K folds' channels; activations and pooling act on every
fold's values at once (what it gains is measured in docs/benchmarks.md).

Each fold still computes what its own fit computes (``tests/test_stacked_folds.py``):
- one loss per fold, summed, so each fold's gradients are its own;
- an optimizer that updates every number on its own (every one of ``hpo.engine.nets.OPTIMIZERS``),
  so one step over the stacked tensors is K independent steps;
- fold k's shuffles and dropout masks drawn from a generator of its own, which starts where
  torch's global generator is after the net's seeded initialization, and is drawn from in the
  same order as in the fold's own fit;
- a last batch whose size differs between folds (folds differ by a row) runs fold by fold,
  through the same layers applied to fold k's slice of each parameter.
The sums inside the ops run in a different order, so results agree within float rounding, as
they do between thread counts.

A user's own module (``model: package.module:Class``) is stacked by torch instead:
``hpo.engine.folds.vmapped.VmappedFolds`` runs its forward over the K folds with
``torch.func.vmap``, with the same interface, so ``fit_stacked`` trains either.

``stackable`` says which nets qualify: hpo's MLP and CNN, or a user's module that
``hpo.engine.folds.vmapped.net_refusal`` accepts (no random draws, no buffers that training
changes, no data-dependent control flow, under 4 MFLOP per batch), on the CPU in float32 (no
``mixed_precision``), with one of hpo's optimizers and its default criterion, iterator and
callbacks, no early stopping or early stopping on the data's fixed validation split (each
fold stops, and keeps its best epoch, as skorch's ``EarlyStopping`` would have it), and the
same number of batches in every fold.
``fit_stacked`` trains; ``fold_net`` gives fold k's skorch net, which ``hpo.engine.objective``
scores as ``cross_val_score`` would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import clone
from skorch.callbacks import EarlyStopping
from skorch.dataset import Dataset
from torch import nn

from hpo.engine.augment import augment
from hpo.engine.data import DataSplits
from hpo.engine.device import device_kind
from hpo.engine.folds.fold import (
    FoldResult,
    WorkerStopped,
    check_finite,
    resident_training_data,
    score_fold,
)
from hpo.engine.folds.vmapped import VmappedFolds, net_refusal
from hpo.engine.models import ACTIVATIONS, CNN, MLP, MODELS, Dropout, keep_mask
from hpo.engine.nets import OPTIMIZERS, TensorBatches, lr_scheduler
from hpo.engine.preprocess import Scaling, fit_scaling
from hpo.engine.threads import torch_threads
from hpo.spec.study_spec import StudySpec


class _Folds:
    """What the stacked layers share within one forward pass: the fold generators."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators

    def __len__(self) -> int:
        return len(self.generators)


class _StackedLinear(nn.Module):
    def __init__(self, layer: nn.Linear, folds: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(layer.weight.detach().expand(folds, -1, -1).clone())
        self.bias = nn.Parameter(layer.bias.detach().expand(folds, -1).clone())

    def stacked(self, h: torch.Tensor, folds: _Folds) -> torch.Tensor:  # h: (K, N, F)
        return torch.baddbmm(self.bias.unsqueeze(1), h, self.weight.transpose(1, 2))

    def single(self, h: torch.Tensor, fold: int, folds: _Folds) -> torch.Tensor:
        return F.linear(h, self.weight[fold], self.bias[fold])

    def fold_state(self, fold: int) -> dict[str, torch.Tensor]:
        return {"weight": self.weight[fold], "bias": self.bias[fold]}


class _StackedConv2d(nn.Module):
    def __init__(self, layer: nn.Conv2d, folds: int) -> None:
        super().__init__()
        self.out_channels = layer.out_channels
        self.options = {
            "stride": layer.stride,
            "padding": layer.padding,
            "dilation": layer.dilation,
        }
        self.weight = nn.Parameter(layer.weight.detach().repeat(folds, 1, 1, 1))
        self.bias = nn.Parameter(layer.bias.detach().repeat(folds))

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


class _StackedBatchNorm(nn.Module):
    """BatchNorm1d over (K, N, F) or BatchNorm2d over (N, K*C, H, W): fold k's channels are
    normalized by fold k's statistics, as in its own fit."""

    def __init__(self, layer: nn.BatchNorm1d | nn.BatchNorm2d, folds: int) -> None:
        super().__init__()
        self.channels = layer.num_features
        self.momentum = layer.momentum
        self.eps = layer.eps
        self.images = isinstance(layer, nn.BatchNorm2d)
        self.weight = nn.Parameter(layer.weight.detach().repeat(folds))
        self.bias = nn.Parameter(layer.bias.detach().repeat(folds))
        self.register_buffer("running_mean", layer.running_mean.repeat(folds))
        self.register_buffer("running_var", layer.running_var.repeat(folds))
        self.register_buffer("num_batches_tracked", layer.num_batches_tracked.clone())

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


class _StackedDropout(nn.Module):
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


class _Elementwise(nn.Module):
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


class _Flatten(nn.Module):
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
        for layer in self.layers:
            h = layer.stacked(h, self.folds)
        return h

    def _single(self, h: torch.Tensor, fold: int) -> torch.Tensor:
        for layer in self.layers:
            h = layer.single(h, fold, self.folds)
        return h

    def fold_state_dict(self, fold: int) -> dict[str, torch.Tensor]:
        """Fold k's weights and buffers, under the names of the module it was stacked from."""
        return {
            f"{name}.{key}": value.detach().clone()
            for name, layer in zip(self.names, self.layers, strict=True)
            for key, value in layer.fold_state(fold).items()
        }


def spec_stacks_folds(spec: StudySpec, validation: bool) -> bool:
    """Whether ``spec``'s trials will be stacked on the CPU (``stackable`` decides per
    trial): hpo's models and a user's own (which ``stackable`` probes per trial), trained
    without early stopping or with it on the data's fixed validation split (``validation``)."""
    patience = "early_stopping_patience"
    early_stopping = spec.fixed.get(patience) is not None or patience in spec.space
    if spec.fixed.get("mixed_precision") is True:
        return False
    # Every model but hpo's built-ins is a user's module; whether it stacks depends on its
    # constructor's arguments (dropout, batch norm), so only a trial's net can tell.
    return validation or not early_stopping


def stacking_depends_on_trial(spec: StudySpec) -> bool:
    """Whether only a trial's net can tell if its folds stack: a user's module, which
    ``net_refusal`` probes with the trial's arguments (dropout or batch norm may be searched),
    where hpo's MLP and CNN stack whenever ``spec_stacks_folds`` says so."""
    return spec.model not in MODELS


def _is_default(net: Any, prefix: str) -> bool:
    return not net.get_params_for(prefix)


def stackable(net: Any, train_sizes: list[int], device: str, validation: bool = False) -> bool:
    """Whether ``net``'s folds (of ``train_sizes`` rows) can be fitted as ``StackedFolds``
    (hpo's MLP and CNN) or ``VmappedFolds`` (a user's module that ``net_refusal`` accepts).

    ``validation``: the data has a fixed validation split, which ``hpo.engine.build.build_net``
    gives a net with early stopping as its ``train_split`` (a split drawn from each fold's
    rows is not stacked).
    """
    if device_kind(device) != "cpu" or len(train_sizes) < 2:
        return False
    if net.callbacks not in (None, []) or net.mixed_precision:
        return False
    if net.early_stopping_patience is None:
        if net.train_split is not None:
            return False
    elif net.train_split is None or not validation:
        return False
    if net.criterion is not net.default_criterion or not _is_default(net, "criterion"):
        return False
    if net.iterator_train is not TensorBatches or not _is_default(net, "iterator_train"):
        return False
    optimizer = net.optimizer
    if optimizer not in OPTIMIZERS and optimizer not in OPTIMIZERS.values():
        return False
    if "param_groups" in net.get_params_for("optimizer"):
        return False
    batch_size = net.batch_size if net.batch_size != -1 else max(train_sizes)
    batches = {math.ceil(size / batch_size) for size in train_sizes}
    if len(batches) > 1 or (net.batch_size == -1 and len(set(train_sizes)) > 1):
        return False
    # Last: the probe builds the module and runs it.
    return net.module in (MLP, CNN) or net_refusal(net) is None


class StackedFit:
    """What ``fit_stacked`` trained: the stacked module, each fold's epochs and losses, and
    each fold's ``preprocess`` scaling (fitted on its own training rows)."""

    def __init__(
        self,
        net: Any,
        module: StackedFolds | VmappedFolds,
        data: tuple[list[torch.Tensor], list[torch.Tensor]],
        losses: torch.Tensor,
        stopping: list[_FoldEarlyStopping] | None,
        scalings: list[Scaling | None] | None = None,
    ) -> None:
        self.net = net
        self.module = module
        self.data = data
        self._losses = losses
        self._stopping = stopping
        self.scalings = scalings if scalings is not None else [None] * len(data[0])

    def epochs(self, fold: int) -> int:
        """The epochs fold k trained, as its own fit's ``len(history)``."""
        return len(self._losses) if self._stopping is None else self._stopping[fold].epochs

    def losses(self, fold: int) -> list[float]:
        """Fold k's mean training loss per epoch, as skorch's history has it."""
        return self._losses[: self.epochs(fold), fold].tolist()

    def fold_net(self, fold: int) -> Any:
        """Fold k's net: a fitted clone of ``net`` with fold k's weights (with early stopping,
        those of its best epoch, as ``EarlyStopping(load_best=True)`` restores) and fold k's
        scaling (``scaling_``, so it predicts on raw rows as its own fit would), in eval mode."""
        fold_net = clone(self.net).initialize()
        X, y = self.data
        fold_net.check_data(X[fold], y[fold])  # as fit does: a classifier learns its classes
        fold_net.scaling_ = self.scalings[fold]
        best = None if self._stopping is None else self._stopping[fold].best_state
        # No best epoch (a validation loss that was never finite): skorch restores nothing.
        fold_net.module_.load_state_dict(best or self.module.fold_state_dict(fold))
        fold_net.module_.eval()
        return fold_net


class _FoldEarlyStopping:
    """skorch's ``EarlyStopping(load_best=True)`` on the validation loss, for one fold."""

    def __init__(self, rule: EarlyStopping) -> None:
        self.rule = rule
        self.misses = 0
        self.threshold = math.inf
        self.best_state: dict[str, torch.Tensor] = {}
        self.epochs = 0
        self.stopped = False

    def end_epoch(self, valid_loss: float, module: StackedFolds | VmappedFolds, fold: int) -> None:
        """What ``EarlyStopping.on_epoch_end`` does after an epoch (lower is better)."""
        self.epochs += 1
        if valid_loss < self.threshold:
            self.misses = 0
            change = self.rule.threshold
            if self.rule.threshold_mode == "rel":
                change *= valid_loss
            self.threshold = valid_loss - change
            self.best_state = module.fold_state_dict(fold)
        else:
            self.misses += 1
        self.stopped = self.misses == self.rule.patience


def fit_stacked(
    net: Any,
    X: list[torch.Tensor],
    y: list[torch.Tensor],
    after_batch: Callable[[], None] | None = None,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> StackedFit:
    """Fit ``net`` on each fold's rows (``X[k]``, ``y[k]``) at once, as ``StackedFolds``.

    ``net`` is an unfitted hpo net that ``stackable`` accepts; it is not changed.
    ``after_batch`` is called after every training step; what it raises ends the fit.
    With early stopping, ``validation`` is the fixed validation split (X, y): each fold
    stops, and keeps its best epoch's weights, as its own fit would; the fit ends when every
    fold has stopped (a stopped fold trains on until then, unused).
    ``X`` and ``validation`` are raw features: as in its own fit, fold k's training rows and
    its copy of the validation split are scaled by ``net.preprocess`` fitted on the rows it
    trains on: ``X[k]`` with ``net.augment``'s copies of them.
    """
    base = clone(net).initialize()  # seeds torch and builds the module each fold starts from
    after_init = torch.get_rng_state()
    folds = len(X)
    stacking = StackedFolds if type(base.module_) in (MLP, CNN) else VmappedFolds
    module = stacking(base.module_, folds)
    options = {
        key: value
        for key, value in net.get_params().items()
        if not key.startswith(("module__", "callbacks__")) and key != "module"
    }
    trainer = type(net)(module, **{**options, "random_state": None}).initialize()
    generators = [torch.Generator().set_state(after_init) for _ in X]
    module.set_generators(generators)
    module.train()
    criterion = type(trainer.criterion_)(reduction="none")
    # As a fold's own fit: augment's copies of its rows added, the scaling fitted on them all.
    fits = [augment(net.augment, rows, targets) for rows, targets in zip(X, y, strict=True)]
    X_fit, y_fit = [rows for rows, _ in fits], [targets for _, targets in fits]
    scalings = [fit_scaling(net.preprocess, rows) for rows in X_fit]
    X_scaled = [_scaled(rows, scaling) for rows, scaling in zip(X_fit, scalings, strict=True)]
    batch_size = net.batch_size if net.batch_size != -1 else max(len(rows) for rows in X_fit)
    sizes = torch.tensor([len(rows) for rows in X_fit], dtype=torch.float32)
    stopping = None
    fold_validation = None
    if net.early_stopping_patience is not None:
        if validation is None:
            raise ValueError("early stopping needs the data's fixed validation split")
        rule = dict(base.callbacks_)["early_stopping"]
        stopping = [_FoldEarlyStopping(rule) for _ in X]
        X_valid, y_valid = validation
        fold_validation = ([_scaled(X_valid, scaling) for scaling in scalings], y_valid)
    schedule = None
    if net.lr_schedule != "none":  # as the fold's own fit: skorch's LRScheduler, every epoch
        schedule = lr_scheduler(net.lr_schedule, net.max_epochs).initialize()
        schedule.on_train_begin(trainer)
    losses = []
    for _ in range(net.max_epochs):
        orders = [
            torch.randperm(len(rows), generator=g)
            for rows, g in zip(X_scaled, generators, strict=True)
        ]
        X_epoch = [rows[order] for rows, order in zip(X_scaled, orders, strict=True)]
        y_epoch = [rows[order] for rows, order in zip(y_fit, orders, strict=True)]
        epoch_loss = torch.zeros(folds)
        for start in range(0, int(sizes.max()), batch_size):
            Xb = [rows[start : start + batch_size] for rows in X_epoch]
            yb = [rows[start : start + batch_size] for rows in y_epoch]
            batch_rows = torch.tensor([len(batch) for batch in Xb], dtype=torch.float32)
            epoch_loss += _train_step(trainer, criterion, Xb, yb) * batch_rows
            if after_batch is not None:
                after_batch()
        losses.append(epoch_loss / sizes)
        if schedule is not None:
            schedule.lr_scheduler_.step()
        if stopping is not None and fold_validation is not None:
            valid_losses = _validation_losses(trainer, criterion, fold_validation).tolist()
            for fold, fold_stopping in enumerate(stopping):
                if not fold_stopping.stopped:
                    fold_stopping.end_epoch(valid_losses[fold], module, fold)
            if all(fold_stopping.stopped for fold_stopping in stopping):
                break
    module.eval()
    return StackedFit(net, module, (X, y), torch.stack(losses), stopping, scalings)


def _scaled(X: torch.Tensor, scaling: Scaling | None) -> torch.Tensor:
    """``X`` as a net with ``scaling_ = scaling`` feeds it to its module (``infer``)."""
    return X if scaling is None else scaling(X)


def _validation_losses(
    trainer: Any, criterion: nn.Module, validation: tuple[list[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Each fold's mean loss on the validation split in eval mode, in the batches skorch's
    validation uses (``get_iterator``), averaged by batch size as its history does.

    ``validation`` holds one copy of the split's features per fold, scaled as that fold's
    own fit scales them, and the targets they share.
    """
    X, y = validation
    module = trainer.module_
    total = torch.zeros(len(X))
    module.eval()
    with torch.no_grad():
        iterators = [trainer.get_iterator(Dataset(rows, y), training=False) for rows in X]
        for batches in zip(*iterators, strict=True):
            Xb = [rows for rows, _ in batches]
            yb = [targets for _, targets in batches]
            total += _fold_losses(criterion, module(Xb), yb) * len(yb[0])
    module.train()
    return total / len(y)


def _train_step(
    trainer: Any, criterion: nn.Module, X: list[torch.Tensor], y: list[torch.Tensor]
) -> torch.Tensor:
    """One optimizer step of every fold, with the trainer net's optimizer (built as a fold's
    own fit builds it: fused or foreach, with the same options); each fold's loss."""
    optimizer = trainer.optimizer_
    optimizer.zero_grad(set_to_none=True)
    fold_losses = _fold_losses(criterion, trainer.module_(X), y)
    fold_losses.sum().backward()
    optimizer.step()
    return fold_losses.detach()


def _fold_losses(
    criterion: nn.Module, outputs: torch.Tensor | list[torch.Tensor], targets: list[torch.Tensor]
) -> torch.Tensor:
    """Each fold's mean loss over its batch, as the net's criterion computes it."""
    if isinstance(outputs, list):
        pairs = zip(outputs, targets, strict=True)
        return torch.stack([criterion(out, target).mean() for out, target in pairs])
    K, N = outputs.shape[:2]
    per_row = criterion(outputs.reshape(K * N, *outputs.shape[2:]), torch.cat(targets))
    return per_row.reshape(K, -1).mean(1)


def fold_groups(folds: int, first_prunable_fold: int | None) -> list[list[int]]:
    """The folds fitted together: all at once, or, when the trial may be pruned after fold
    ``first_prunable_fold`` (0-based), the folds up to it and then the rest, so a pruned
    trial fits no fold past it."""
    if first_prunable_fold is None:
        return [list(range(folds))]
    first = min(first_prunable_fold + 1, folds)
    return [group for group in (list(range(first)), list(range(first, folds))) if group]


def fit_and_score_stacked(
    net: Any,
    data: DataSplits,
    folds: list[int],
    splits: list[tuple[np.ndarray, np.ndarray]],
    scoring: str | Sequence[str],
    threads: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[FoldResult]:
    """``hpo.engine.folds.fold.fit_and_score_fold`` for several folds at once, trained as one
    ``StackedFolds``; the results come in fold order, each with an equal share of the fit's
    seconds. A fold whose loss stopped being finite raises ``FloatingPointError`` in its
    place, after the folds before it.

    Args:
        net: the trial's unfitted net, which ``stackable`` accepts.
        data: the worker's data.
        folds: which of ``splits`` to fit.
        splits: every fold's (train, test) row indices.
        scoring: a scikit-learn scorer name, or several (``fold.score_fold``).
        threads: torch CPU threads for the fit; None keeps the current count.
        should_stop: polled after every batch; true ends the fit with ``WorkerStopped``.
    """
    X, y = resident_training_data(data, str(net.device))
    train_rows = [torch.as_tensor(splits[fold][0], device=X.device) for fold in folds]

    def stop_check() -> None:
        if should_stop is not None and should_stop():
            raise WorkerStopped

    validation = None
    if data.X_valid is not None and net.early_stopping_patience is not None:
        validation = (
            torch.as_tensor(data.X_valid, device=X.device),
            torch.as_tensor(data.y_valid, device=X.device),
        )
    outcomes: list[FoldResult | FloatingPointError] = []
    with torch_threads(threads):
        started = time.perf_counter()
        fit = fit_stacked(
            net, [X[r] for r in train_rows], [y[r] for r in train_rows], stop_check, validation
        )
        seconds = (time.perf_counter() - started) / len(folds)
        for index, fold in enumerate(folds):
            try:
                check_finite(fit.losses(index), fold)
            except FloatingPointError as error:
                outcomes.append(error)
                break
            test = splits[fold][1]
            test_rows = torch.as_tensor(test, device=X.device)
            score, extra = score_fold(
                scoring, fit.fold_net(index), X[test_rows], data.y_train[test]
            )
            outcomes.append(FoldResult(score, seconds, fit.epochs(index), extra))
    for outcome in outcomes:
        if isinstance(outcome, FloatingPointError):
            raise outcome
        yield outcome
