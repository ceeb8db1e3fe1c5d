"""The stacked fit: a trial's K folds trained at once as ``StackedFolds`` (or
``VmappedFolds``), each fold ending where its own skorch fit would.

Each fold still computes what its own fit computes (``tests/engine/test_stacked_folds.py``):
- one loss per fold, summed, so each fold's gradients are its own;
- an optimizer that updates every number on its own (every one of
  ``hpo.engine.nets.OPTIMIZERS``), so one step over the stacked tensors is K independent steps;
- fold k's shuffles and dropout masks drawn from a generator of its own, which starts where
  torch's global generator is after the net's seeded initialization, and is drawn from in the
  same order as in the fold's own fit;
- the lr schedule is skorch's own ``LRScheduler`` (``hpo.engine.nets.lr_scheduler``), stepped
  on the stacked optimizer after every epoch as the fold's fit steps it;
- early stopping keeps skorch's ``EarlyStopping`` rule (its patience, threshold and mode) but
  runs it per fold (``_FoldEarlyStopping``): skorch's callback reads one net's history and
  ends the whole fit by raising ``KeyboardInterrupt``, and a stacked fit has K histories whose
  folds stop at different epochs while the others train on.
The sums inside the ops run in a different order, so results agree within float rounding, as
they do between thread counts.

Which nets qualify is the plan's to decide (``hpo.engine.folds.plan.stackable``).
``fit_stacked`` trains; ``StackedFit.fold_net`` gives fold k's skorch net, scored as
``cross_val_score`` would; ``fit_and_score_stacked`` is the runner's unit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import clone
from skorch.callbacks import EarlyStopping
from skorch.dataset import Dataset
from torch import nn

from hpo.engine.augment import augment
from hpo.engine.data import DataSplits
from hpo.engine.folds.fold import (
    EpochListener,
    FoldResult,
    WorkerStopped,
    check_finite,
    held_out_score,
    resident_training_data,
    score_fold,
)
from hpo.engine.folds.stacked_layers import StackedFolds
from hpo.engine.folds.vmapped import VmappedFolds
from hpo.engine.models import CNN, MLP
from hpo.engine.nets import EVAL_BATCH_ROWS, lr_scheduler, seeded_fit
from hpo.engine.preprocess import Scaling, fit_scaling
from hpo.engine.threads import torch_threads


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

    @property
    def stopped(self) -> bool:
        """Every fold has stopped early: the fit trains no further epoch."""
        return self._stopping is not None and all(fold.stopped for fold in self._stopping)

    def fold_stopped(self, fold: int) -> bool:
        """Fold k has stopped early (it trains on, unused, until every fold has)."""
        return self._stopping is not None and self._stopping[fold].stopped

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
        return self.load_fold(fold_net, fold)

    def load_fold(self, fold_net: Any, fold: int) -> Any:
        """``fold_net`` (made by ``fold_net(fold)``) with fold k's weights as they are now."""
        best = None if self._stopping is None else self._stopping[fold].best_state
        # No best epoch (a validation loss that was never finite): skorch restores nothing.
        fold_net.module_.load_state_dict(best or self.module.fold_state_dict(fold))
        fold_net.module_.eval()
        return fold_net


class _FoldNets:
    """Each fold's skorch net of a stacked fit, made once (``StackedFit.fold_net``) and given
    the fold's current weights whenever it is asked for again."""

    def __init__(self) -> None:
        self._nets: dict[int, Any] = {}

    def get(self, fit: StackedFit, fold: int) -> Any:
        """Fold ``fold``'s net (an index into ``fit``'s folds) with its current weights."""
        if fold not in self._nets:
            # Built in the middle of a fit too: its initialization must not move torch's
            # generator, from which nothing of the fit draws but a user's module might.
            with torch.random.fork_rng(devices=[]):
                self._nets[fold] = fit.fold_net(fold)
            return self._nets[fold]
        return fit.load_fold(self._nets[fold], fold)


class _HeldOutScores:
    """Every fold's score on its held-out rows after an epoch of a stacked fit, at the cost
    of one forward of the stacked module and K scorer calls.

    The folds' held-out rows go through the stacked module at once, in eval mode, in
    batches of ``EVAL_BATCH_ROWS``, each fold's rows repeated up to the longest fold's count
    (so they stay stacked: in eval mode a row's output does not depend on the others) and
    scaled once per fit as the fold's own net scales them. Each fold's outputs are then
    scored by the spec's scorer through a copy of the fold's net whose module passes its
    input through (``nn.Identity``): skorch's own ``predict``/``predict_proba`` turn them
    into predictions. A fold that has stopped early trains on unused until the fit ends; it
    is scored once, as its fold ends (its best epoch's weights), and keeps that score; after
    the fit's last epoch every fold is scored so, by its own net, so the last report is the
    folds' final scores. A fold still training is scored with its weights of that epoch, as a
    fold fitted on its own reports them (``fold.EpochScores``: skorch restores the best
    epoch's at the end).
    """

    def __init__(
        self,
        scoring: str | Sequence[str],
        held_out: list[tuple[torch.Tensor, np.ndarray]],
        fold_nets: _FoldNets,
    ) -> None:
        self.scoring = scoring
        self.held_out = held_out
        self.fold_nets = fold_nets
        self._inputs: list[torch.Tensor] | None = None
        self._output_nets: list[Any] = []
        self._stopped: dict[int, float] = {}

    def scores(self, fit: StackedFit, last: bool = False) -> list[float]:
        """Each fold's held-out score now, in ``fit``'s fold order; ``last``: after the fit's
        last epoch."""
        if self._inputs is None:
            with torch.random.fork_rng(devices=[]):
                self._prepare(fit)
        assert self._inputs is not None
        folds = range(len(self.held_out))
        training = [] if last else [index for index in folds if not fit.fold_stopped(index)]
        for index in set(folds) - set(training) - self._stopped.keys():
            net = self.fold_nets.get(fit, index)
            self._stopped[index] = held_out_score(self.scoring, net, *self.held_out[index])
        outputs = self._outputs(fit.module) if training else []
        scores = []
        for index, (_, y) in enumerate(self.held_out):
            if index in self._stopped:
                scores.append(self._stopped[index])
                continue
            fold_outputs = outputs[index][: len(y)]
            scores.append(held_out_score(self.scoring, self._output_nets[index], fold_outputs, y))
        return scores

    def _prepare(self, fit: StackedFit) -> None:
        rows = max(len(y) for _, y in self.held_out)
        self._inputs = []
        for index, (X, _) in enumerate(self.held_out):
            repeats = -(-rows // len(X))
            padded = X.repeat(repeats, *([1] * (X.dim() - 1)))[:rows]
            self._inputs.append(_scaled(padded, fit.scalings[index]))
            net = clone(fit.net).initialize()
            net.check_data(fit.data[0][index], fit.data[1][index])
            net.module_ = nn.Identity()
            self._output_nets.append(net)

    def _outputs(self, module: StackedFolds | VmappedFolds) -> list[torch.Tensor]:
        assert self._inputs is not None
        rows = len(self._inputs[0])
        module.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                chunks = [
                    module([X[start : start + EVAL_BATCH_ROWS] for X in self._inputs])
                    for start in range(0, rows, EVAL_BATCH_ROWS)
                ]
        finally:
            module.train()
        folds = range(len(self._inputs))
        return [torch.cat([chunk[index] for chunk in chunks]) for index in folds]


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
    after_epoch: Callable[[int, StackedFit], None] | None = None,
) -> StackedFit:
    """Fit ``net`` on each fold's rows (``X[k]``, ``y[k]``) at once, as ``StackedFolds``.

    ``net`` is an unfitted hpo net that ``stackable`` accepts; it is not changed.
    ``after_batch`` is called after every training step, ``after_epoch`` after every epoch
    (0-based) with the fit so far; what they raise ends the fit.
    With early stopping, ``validation`` is the fixed validation split (X, y): each fold
    stops, and keeps its best epoch's weights, as its own fit would; the fit ends when every
    fold has stopped (a stopped fold trains on until then, unused).
    ``X`` and ``validation`` are raw features: as in its own fit, fold k's training rows and
    its copy of the validation split are scaled by ``net.preprocess`` fitted on the rows it
    trains on: ``X[k]`` with ``net.augment``'s copies of them.
    """
    # Built as the fold's own fit builds it (``seeded_fit``), the generator state after it
    # is where each fold's shuffles and dropout masks start.
    with seeded_fit(net.random_state, net.device):
        base = clone(net).initialize()
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
    for epoch in range(net.max_epochs):
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
        if after_epoch is not None:
            so_far = StackedFit(net, module, (X, y), torch.stack(losses), stopping, scalings)
            after_epoch(epoch, so_far)
        if stopping is not None and all(fold_stopping.stopped for fold_stopping in stopping):
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
    torch.autograd.backward(fold_losses.sum())
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
    per_row: torch.Tensor = criterion(
        outputs.reshape(K * N, *outputs.shape[2:]), torch.cat(targets)
    )
    return per_row.reshape(K, -1).mean(1)


def fit_and_score_stacked(
    net: Any,
    data: DataSplits,
    folds: list[int],
    splits: list[tuple[np.ndarray, np.ndarray]],
    scoring: str | Sequence[str],
    threads: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_epoch: EpochListener | None = None,
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
        on_epoch: told every fold's held-out score after the epochs it asks for (none while
            a fold's training loss is not finite: such a fit raises at its end).
    """
    X, y = resident_training_data(data, str(net.device))
    train_rows = [torch.as_tensor(splits[fold][0], device=X.device) for fold in folds]
    held_out = [
        (X[torch.as_tensor(splits[fold][1], device=X.device)], data.y_train[splits[fold][1]])
        for fold in folds
    ]
    fold_nets = _FoldNets()
    held_out_scores = _HeldOutScores(scoring, held_out, fold_nets)

    def epoch_scores(epoch: int, fit: StackedFit) -> None:
        if on_epoch is None or not on_epoch.reports_at(epoch):
            return
        if not all(math.isfinite(fit.losses(index)[-1]) for index in range(len(folds))):
            return
        last = epoch + 1 == net.max_epochs
        scores = dict(zip(folds, held_out_scores.scores(fit, last), strict=True))
        on_epoch.epoch_scored(epoch, scores, ended=fit.stopped)

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
            net,
            [X[r] for r in train_rows],
            [y[r] for r in train_rows],
            stop_check,
            validation,
            epoch_scores if on_epoch is not None else None,
        )
        seconds = (time.perf_counter() - started) / len(folds)
        for index, fold in enumerate(folds):
            try:
                check_finite(fit.losses(index), fold)
            except FloatingPointError as error:
                outcomes.append(error)
                break
            score, extra = score_fold(scoring, fold_nets.get(fit, index), *held_out[index])
            outcomes.append(FoldResult(score, seconds, fit.epochs(index), extra))
    for outcome in outcomes:
        if isinstance(outcome, FloatingPointError):
            raise outcome
        yield outcome
