"""One trial: parameters → skorch net → K folds, scored as ``cross_val_score`` scores them.

Each fold fits a ``clone`` of the same net and is scored by the spec's scikit-learn scorer,
exactly what ``sklearn.model_selection.cross_val_score(net, X, y, cv=folds, scoring=...)``
does, but one fold at a time: after each fold the running mean goes to ``trial.report`` so a
median or hyperband pruner can stop a bad trial before its last fold. (optuna-integration's
``SkorchPruningCallback`` would report per epoch, but it breaks ``sklearn.clone``.)

The training arrays become tensors on the trial's device once per worker process
(``resident_training_data``), and each fold is gathered from them there, so no fold copies its
data from the host. Fold scores, fit seconds and epochs go to the storage once per trial, not
once per fold: each write is a round trip to the database.

On the CPU the folds of hpo's MLP and CNN are trained as one stacked model
(``hpo.engine.folds.stacked``, through ``fit_and_score_stacked``), each fold computing what its own
fit would. Nets it cannot stack are fitted fold by fold (``fit_and_score_fold``), several at
once when the worker has fold processes (``hpo.engine.folds.processes.FoldPool``, passed as ``pool``).
Either way ``evaluate`` reads the results in fold order, so what is reported and pruned does
not change.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import torch
from sklearn.base import clone
from sklearn.metrics import get_scorer
from sklearn.model_selection import BaseCrossValidator, KFold, StratifiedKFold
from skorch.callbacks import Callback
from skorch.dataset import Dataset
from skorch.helper import predefined_split

from hpo.engine.data import DataSplits
from hpo.engine.folds.stacked import fit_stacked, stackable
from hpo.engine.models import MODELS
from hpo.engine.nets import TunedClassifier, TunedRegressor
from hpo.errors import HpoError
from hpo.spec.spaces import suggest
from hpo.spec.study_spec import StudySpec

if TYPE_CHECKING:
    from hpo.engine.folds.processes import FoldPool


class WorkerStopped(BaseException):
    """Raised inside a fit when the worker was asked to stop (SIGTERM).

    A ``BaseException`` so that nothing between the signal and the worker loop swallows it.
    """


def check_compatible(spec: StudySpec, data: DataSplits) -> None:
    """Refuse a model, scorer or CV setting that cannot work on this data.

    Raises:
        HpoError: naming the key to change.
    """
    if spec.model == "regressor" and data.task != "regression":
        raise HpoError(
            f"model: regressor needs a regression dataset, but {data.name!r} is a "
            "classification dataset; use model: mlp or cnn"
        )
    if spec.cv.stratified and data.task == "regression":
        raise HpoError(
            f"cv.stratified: stratified folds need class labels, but {data.name!r} "
            "is a regression dataset; remove cv.stratified"
        )
    if spec.model == "cnn" and len(data.input_shape) != 3:
        raise HpoError(
            f"model: cnn needs images (channels, height, width), but {data.name!r} "
            f"has rows of shape {data.input_shape}; use model: mlp"
        )


def build_net(
    spec: StudySpec, data: DataSplits, params: dict[str, Any], device: str
) -> TunedClassifier | TunedRegressor:
    """The skorch net for one configuration; ``params`` are skorch ``set_params`` keys."""
    net_class = TunedRegressor if data.task == "regression" else TunedClassifier
    kwargs: dict[str, Any] = {
        "module__input_shape": tuple(data.input_shape),
        "module__n_outputs": 1 if data.task == "regression" else data.n_classes,
        "device": device,
        **params,
    }
    if data.X_valid is not None and params.get("early_stopping_patience") is not None:
        kwargs["train_split"] = predefined_split(Dataset(data.X_valid, data.y_valid))
    return net_class(MODELS[spec.model], **kwargs)


def make_folds(spec: StudySpec) -> BaseCrossValidator:
    """``KFold`` (or ``StratifiedKFold``) with the spec's folds, shuffle and seed."""
    splitter = StratifiedKFold if spec.cv.stratified else KFold
    seed = spec.cv.seed if spec.cv.shuffle else None
    return splitter(n_splits=spec.cv.folds, shuffle=spec.cv.shuffle, random_state=seed)


#: Forward FLOPs per training batch below which a net trains faster on one CPU thread: its
#: ops are too small for torch to split them profitably (the digits MLPs and the regressors,
#: 0.01 to 1.4 MFLOP, run as fast or faster on one thread; the digits CNNs, from 3.6 MFLOP,
#: and MNIST-sized nets, from 70 MFLOP, gain from a second thread).
SMALL_NET_FLOPS = 2_000_000


#: Forward FLOPs per training batch from which a net's folds are fitted one by one rather than
#: stacked: a bigger net's ops are bound by their arithmetic, and oneDNN's grouped
#: convolutions and batched matrix products are then slower than separate ones. Stacked
#: against one by one, on one thread: digits CNNs of 3.6, 5.9, 11.2 and 11.7 MFLOP 1.4-2.3x;
#: of 23.5 MFLOP 0.8x; an MNIST-shaped MLP of 28 MFLOP 1.0x, of 60 MFLOP 0.9x; an
#: MNIST-shaped CNN of 85 MFLOP 0.65x.
STACKED_NET_FLOPS = 16_000_000


def forward_flops(net: Any, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of ``net``'s module over a training batch (matrix products
    and convolutions, as ``torch.utils.flop_counter`` counts them)."""
    # Imported here: the flop counter pulls in about 75 MiB of torch's compiler stack, which a
    # worker that never asks (a GPU, or folds neither stacked nor on threads) should not carry.
    from torch.utils.flop_counter import FlopCounterMode

    module = net.module(**net.get_params_for("module"))
    batch = torch.zeros(max(1, net.batch_size), *input_shape)
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(batch)
    return int(counter.get_total_flops())


@contextmanager
def cpu_threads_for(net: Any, input_shape: tuple[int, ...], device: str) -> Iterator[int]:
    """Within the block, run a small net on one CPU thread; give the thread count back after.

    The worker's thread count (``--threads``, or the cores shared out by ``hpo run``) is the
    most a trial uses; a net under ``SMALL_NET_FLOPS`` per batch uses one.
    """
    budget = torch.get_num_threads()
    threads = budget
    if budget > 1 and torch.device(device).type == "cpu":
        if forward_flops(net, input_shape) < SMALL_NET_FLOPS:
            threads = 1
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(budget)


class StopCheck(Callback):
    """Ends a fit at the next batch once ``should_stop()`` turns true."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def on_batch_end(self, net: Any, **kwargs: Any) -> None:
        if self.should_stop():
            raise WorkerStopped


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


@dataclass(frozen=True)
class FoldResult:
    """What fitting and scoring one fold gave."""

    score: float
    seconds: float
    epochs: int
    threads: int


def fit_and_score_fold(
    net: Any,
    data: DataSplits,
    device: str,
    fold: int,
    train: np.ndarray,
    test: np.ndarray,
    scoring: str,
    should_stop: Callable[[], bool] | None,
) -> FoldResult:
    """Fit a ``clone`` of ``net`` on the fold's ``train`` rows and score it on its ``test`` rows,
    as ``cross_val_score`` does for one split, on the threads ``cpu_threads_for`` gives it.

    Raises:
        FloatingPointError: the training loss stopped being finite.
        WorkerStopped: ``should_stop()`` turned true during the fit.
    """
    X, y = resident_training_data(data, device)
    fold_net = clone(net)
    if should_stop is not None:
        fold_net.set_params(callbacks=[("stop_check", StopCheck(should_stop))])
    train_rows = torch.as_tensor(train, device=X.device)
    with cpu_threads_for(net, tuple(data.input_shape), device) as threads:
        started = time.perf_counter()
        fold_net.fit(X[train_rows], y[train_rows])
        seconds = time.perf_counter() - started
        _check_finite(fold_net.history[:, "train_loss"], fold)
        # The scorer compares predictions with y on the host, as cross_val_score does.
        test_rows = torch.as_tensor(test, device=X.device)
        score = get_scorer(scoring)(fold_net, X[test_rows], data.y_train[test])
    return FoldResult(float(score), seconds, len(fold_net.history), threads)


def _check_finite(losses: list[float], fold: int) -> None:
    if not all(math.isfinite(loss) for loss in losses):
        raise FloatingPointError(
            f"the training loss became {losses[-1]} in fold {fold}: the configuration "
            "diverged (a lower lr or a smaller init usually helps)"
        )


def fit_and_score_stacked(
    net: Any,
    data: DataSplits,
    device: str,
    folds: list[int],
    splits: list[tuple[np.ndarray, np.ndarray]],
    scoring: str,
    should_stop: Callable[[], bool] | None,
) -> Iterator[FoldResult]:
    """``fit_and_score_fold`` for several folds at once, trained as one
    ``hpo.engine.folds.stacked.StackedFolds``; the results come in fold order, each with an equal
    share of the fit's seconds. A fold whose loss stopped being finite raises
    ``FloatingPointError`` in its place, after the folds before it.
    """
    X, y = resident_training_data(data, device)
    train_rows = [torch.as_tensor(splits[fold][0], device=X.device) for fold in folds]
    scorer = get_scorer(scoring)

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
    with cpu_threads_for(net, tuple(data.input_shape), device) as threads:
        started = time.perf_counter()
        fit = fit_stacked(
            net, [X[r] for r in train_rows], [y[r] for r in train_rows], stop_check, validation
        )
        seconds = (time.perf_counter() - started) / len(folds)
        for index, fold in enumerate(folds):
            try:
                _check_finite(fit.losses(index), fold)
            except FloatingPointError as error:
                outcomes.append(error)
                break
            test = splits[fold][1]
            test_rows = torch.as_tensor(test, device=X.device)
            score = scorer(fit.fold_net(index), X[test_rows], data.y_train[test])
            outcomes.append(FoldResult(float(score), seconds, fit.epochs(index), threads))
    for outcome in outcomes:
        if isinstance(outcome, FloatingPointError):
            raise outcome
        yield outcome


def fold_groups(folds: int, pruner: optuna.pruners.BasePruner | None) -> list[list[int]]:
    """The folds fitted together when they are stacked: all at once, or, when ``pruner`` may
    stop the trial, first the folds up to the first one it can stop the trial after (the
    median pruner's ``n_warmup_steps``: hpo's default 1 means after the second fold)."""
    if pruner is None:
        return [list(range(folds))]
    # Optuna's percentile and median pruners keep n_warmup_steps in a private attribute.
    first = min(getattr(pruner, "_n_warmup_steps", 0) + 1, folds)
    return [group for group in (list(range(first)), list(range(first, folds))) if group]


def _pruner_starting_up(trial: optuna.Trial, pruner: Any) -> bool:
    """Whether ``pruner`` prunes nothing yet: a median or percentile pruner waits for
    ``n_startup_trials`` complete trials (kept in a private attribute), so until then the
    folds are stacked all at once."""
    startup = getattr(pruner, "_n_startup_trials", 0)
    if not startup:
        return False
    complete = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return len(complete) < startup


def evaluate(
    trial: optuna.Trial,
    spec: StudySpec,
    data: DataSplits,
    device: str,
    should_stop: Callable[[], bool] | None = None,
    pool: FoldPool | None = None,
    stack_folds: bool = True,
) -> float:
    """Score one trial's configuration by K-fold cross-validation on the training split.

    The folds are fitted in this process as one stacked model (``hpo.engine.folds.stacked``) where
    the net allows it and ``stack_folds`` is true (in two groups when a pruner may stop the
    trial: see ``fold_groups``); with ``pool``, several at once, here and in the pool's
    processes; otherwise one after another. Either way the running mean goes to
    ``trial.report`` after each fold, in fold order, and ``optuna.TrialPruned`` is raised when
    the pruner says so. Fold scores, their std, fit seconds, epochs, the device and the threads
    per fit end in the trial's user_attrs (the fold lists also when the trial is pruned or
    fails part-way).

    Returns:
        The mean fold score (greater is better, as for every scikit-learn scorer).
    """
    params = {**spec.fixed, **suggest(trial, spec.space)}
    trial.set_user_attr("device", device)
    # Asking a NopPruner costs a storage read per fold and always answers no.
    pruner = getattr(getattr(trial, "study", None), "pruner", None)
    may_prune = not isinstance(pruner, optuna.pruners.NopPruner)
    splits = list(make_folds(spec).split(data.X_train, data.y_train))
    net = build_net(spec, data, params, device)

    def fit_here(fold: int) -> FoldResult:
        train, test = splits[fold]
        return fit_and_score_fold(net, data, device, fold, train, test, spec.scoring, should_stop)

    def fit_groups(groups: list[list[int]]) -> Iterator[FoldResult]:
        for folds in groups:
            if len(folds) == 1:
                yield fit_here(folds[0])
            else:
                yield from fit_and_score_stacked(
                    net, data, device, folds, splits, spec.scoring, should_stop
                )

    train_sizes = [len(train) for train, _ in splits]
    if (
        pool is None
        and stack_folds
        and stackable(net, train_sizes, device, validation=data.X_valid is not None)
        and forward_flops(net, tuple(data.input_shape)) < STACKED_NET_FLOPS
    ):
        # Asked only here: the pruner's start-up count is a storage read.
        prunes_now = may_prune and not _pruner_starting_up(trial, pruner)
        groups = fold_groups(len(splits), pruner if prunes_now else None)
        results: Iterator[FoldResult] = fit_groups(groups)
    elif pool is None:
        results = (fit_here(fold) for fold in range(len(splits)))
    else:
        results = pool.fold_results(params, splits, should_stop, fit_here)
    scores: list[float] = []
    seconds: list[float] = []
    epochs: list[int] = []
    # closing: a pruned or failed trial stops the folds still running at once.
    with closing(results):
        try:
            for fold, result in enumerate(results):
                if not scores:
                    trial.set_user_attr("threads", result.threads)
                scores.append(result.score)
                seconds.append(round(result.seconds, 4))
                epochs.append(result.epochs)
                trial.report(float(np.mean(scores)), step=fold)
                if may_prune and fold + 1 < spec.cv.folds and trial.should_prune():
                    mean = np.mean(scores)
                    raise optuna.TrialPruned(f"pruned after fold {fold}: mean {mean:.4f}")
        finally:
            if scores:
                trial.set_user_attr("fold_scores", scores)
                trial.set_user_attr("fit_seconds", seconds)
                trial.set_user_attr("epochs", epochs)
    trial.set_user_attr("score_std", float(np.std(scores)))
    return float(np.mean(scores))
