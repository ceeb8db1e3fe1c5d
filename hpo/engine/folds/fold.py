"""One fold: fit a ``clone`` of the trial's net on its training rows, score it on the rest.

What every fold strategy shares: the result of a fold (``FoldResult``), the exception that
ends a fit when the worker is told to stop (``WorkerStopped``), what hears a fit's epochs'
held-out scores (``EpochListener``), the training data kept on the trial's device once per
process, and ``fit_and_score_fold``, the unit that the one-by-one and the fold-process
strategies run.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from sklearn import config_context
from sklearn.base import clone
from sklearn.metrics import get_scorer
from skorch.callbacks import Callback

from hpo.engine.data import DataSplits
from hpo.engine.threads import torch_threads
from hpo.errors import WorkerStopped

__all__ = [
    "EpochListener",
    "EpochScores",
    "FoldResult",
    "StopCheck",
    "WorkerStopped",
    "check_finite",
    "fit_and_score_fold",
    "resident_training_data",
    "score_fold",
]


@dataclass(frozen=True)
class FoldResult:
    """What fitting and scoring one fold gave."""

    score: float
    seconds: float
    epochs: int
    #: The fold's scores by the spec's other scorers (``objectives.extra_scorers``), in order.
    extra_scores: tuple[float, ...] = ()


def score_fold(
    scoring: str | Sequence[str], fold_net: Any, X: Any, y: Any
) -> tuple[float, tuple[float, ...]]:
    """The fitted fold net's score by ``scoring`` (a scorer name, or several: the first is
    the score, the others the extra scores), as ``cross_val_score`` scores a split."""
    names = [scoring] if isinstance(scoring, str) else list(scoring)
    scores = [float(get_scorer(name)(fold_net, X, y)) for name in names]
    return scores[0], tuple(scores[1:])


class StopCheck(Callback):
    """Ends a fit at the next batch once ``should_stop()`` turns true."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def on_batch_end(self, net: Any, **kwargs: Any) -> None:
        if self.should_stop():
            raise WorkerStopped


class EpochListener(Protocol):
    """Hears the held-out scores of a fit's folds after its epochs (a trial that reports its
    epochs to its pruner: ``hpo.engine.reports``); what it raises ends the fit."""

    def reports_at(self, epoch: int) -> bool:
        """Whether the folds are scored after epoch ``epoch`` (0-based) of a fit."""
        ...

    def epoch_scored(self, epoch: int, scores: Mapping[int, float], ended: bool = False) -> None:
        """After epoch ``epoch`` of a fit: each of its folds' score on its held-out rows, by
        fold number; ``ended``: the fit trains no further epoch (every fold stopped early).

        Raises:
            optuna.TrialPruned: the pruner stopped the trial.
        """
        ...


def held_out_score(scoring: str | Sequence[str], fold_net: Any, X: Any, y: Any) -> float:
    """``score_fold``'s score in the middle of a fit, which it leaves as it was: scoring
    draws nothing from torch's generator (a ``DataLoader`` would), and the net trains on
    after it.

    Scored after every reported epoch, so without scikit-learn's checks of the metric's
    arguments and of finite inputs (``skip_parameter_validation``, ``assume_finite``): they
    cost as much as the prediction itself on a small net (measured: docs/benchmarks.md) and
    change no score; a fold's final score (``score_fold``) keeps them.
    """
    with (
        torch.random.fork_rng(devices=[]),
        config_context(skip_parameter_validation=True, assume_finite=True),
    ):
        return score_fold(scoring, fold_net, X, y)[0]


class EpochScores(Callback):
    """Scores a fold's net on its held-out rows after the epochs ``listener`` asks for, and
    tells it (the one-by-one fit's side of ``EpochListener``)."""

    def __init__(
        self, listener: EpochListener, fold: int, scoring: str | Sequence[str], X: Any, y: Any
    ) -> None:
        self.listener = listener
        self.fold = fold
        self.scoring = scoring
        self.X = X
        self.y = y

    def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
        epoch = len(net.history) - 1
        # A diverged fit is not scored (its predictions are not numbers): it raises at its end.
        if self.listener.reports_at(epoch) and math.isfinite(net.history[-1, "train_loss"]):
            score = held_out_score(self.scoring, net, self.X, self.y)
            self.listener.epoch_scored(epoch, {self.fold: score})


#: The last ``resident_training_data``: (the data it was made from, device, tensors).
_resident: tuple[weakref.ref[DataSplits], str, tuple[torch.Tensor, torch.Tensor]] | None = None


def resident_training_data(data: DataSplits, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``X_train`` and ``y_train`` as tensors on ``device``, made once per worker process.

    A worker scores every trial on the same data, so it is moved to the device once (on the
    CPU the tensors share the arrays' memory) and each fold is indexed from it in place.
    """
    global _resident
    if _resident is not None:
        source, resident_device, tensors = _resident
        if source() is data and resident_device == device:
            return tensors
    tensors = (
        torch.as_tensor(data.X_train, device=device),
        torch.as_tensor(data.y_train, device=device),
    )
    _resident = (weakref.ref(data), device, tensors)
    return tensors


def check_finite(losses: list[float], fold: int) -> None:
    """Raise ``FloatingPointError`` when fold ``fold``'s training loss stopped being finite."""
    if not all(math.isfinite(loss) for loss in losses):
        raise FloatingPointError(
            f"the training loss became {losses[-1]} in fold {fold}: the configuration "
            "diverged (a lower lr or a smaller init usually helps)"
        )


def fit_and_score_fold(
    net: Any,
    data: DataSplits,
    fold: int,
    train: np.ndarray,
    test: np.ndarray,
    scoring: str | Sequence[str],
    threads: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_epoch: EpochListener | None = None,
) -> FoldResult:
    """Fit a ``clone`` of ``net`` on the fold's ``train`` rows and score it on its ``test``
    rows, as ``cross_val_score`` does for one split.

    Args:
        net: the trial's unfitted skorch net; its ``device`` says where the fold trains.
        data: the worker's data; the rows index ``X_train``/``y_train``.
        fold: the fold's number, for messages.
        train, test: the fold's row indices.
        scoring: a scikit-learn scorer name, or several (``score_fold``).
        threads: torch CPU threads for the fit; None keeps the current count.
        should_stop: polled after every batch; true ends the fit with ``WorkerStopped``.
        on_epoch: told the fold's held-out score after the epochs it asks for.

    Raises:
        FloatingPointError: the training loss stopped being finite.
        WorkerStopped: ``should_stop()`` turned true during the fit.
        optuna.TrialPruned: ``on_epoch`` stopped the trial.
    """
    X, y = resident_training_data(data, str(net.device))
    fold_net = clone(net)
    test_rows = torch.as_tensor(test, device=X.device)
    callbacks: list[tuple[str, Callback]] = []
    if should_stop is not None:
        callbacks.append(("stop_check", StopCheck(should_stop)))
    if on_epoch is not None:
        scores = EpochScores(on_epoch, fold, scoring, X[test_rows], data.y_train[test])
        callbacks.append(("epoch_scores", scores))
    if callbacks:
        fold_net.set_params(callbacks=callbacks)
    train_rows = torch.as_tensor(train, device=X.device)
    with torch_threads(threads):
        started = time.perf_counter()
        fold_net.fit(X[train_rows], y[train_rows])
        seconds = time.perf_counter() - started
        check_finite(fold_net.history[:, "train_loss"], fold)
        # The scorer compares predictions with y on the host, as cross_val_score does.
        score, extra = score_fold(scoring, fold_net, X[test_rows], data.y_train[test])
    return FoldResult(score, seconds, len(fold_net.history), extra)
