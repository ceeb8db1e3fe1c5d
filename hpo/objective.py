"""One trial: parameters → skorch net → K folds, scored as ``cross_val_score`` scores them.

Each fold fits a ``clone`` of the same net and is scored by the spec's scikit-learn scorer,
exactly what ``sklearn.model_selection.cross_val_score(net, X, y, cv=folds, scoring=...)``
does, but one fold at a time: after each fold the running mean goes to ``trial.report`` so a
median or hyperband pruner can stop a bad trial before its last fold. (optuna-integration's
``SkorchPruningCallback`` would report per epoch, but it breaks ``sklearn.clone``.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import optuna
from sklearn.base import clone
from sklearn.metrics import get_scorer
from sklearn.model_selection import BaseCrossValidator, KFold, StratifiedKFold
from skorch.callbacks import Callback
from skorch.dataset import Dataset
from skorch.helper import predefined_split

from hpo.data import DataSplits
from hpo.errors import HpoError
from hpo.models import MODELS
from hpo.nets import TunedClassifier, TunedRegressor
from hpo.spaces import suggest
from hpo.spec import StudySpec


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


class StopCheck(Callback):
    """Ends a fit at the next batch once ``should_stop()`` turns true."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def on_batch_end(self, net: Any, **kwargs: Any) -> None:
        if self.should_stop():
            raise WorkerStopped


def _fold_scores(
    net: Any,
    X: np.ndarray,
    y: np.ndarray,
    folds: BaseCrossValidator,
    scoring: str,
    should_stop: Callable[[], bool] | None,
) -> Iterator[tuple[float, float, int]]:
    scorer = get_scorer(scoring)
    for fold, (train, test) in enumerate(folds.split(X, y)):
        fold_net = clone(net)
        if should_stop is not None:
            fold_net.set_params(callbacks=[("stop_check", StopCheck(should_stop))])
        started = time.perf_counter()
        fold_net.fit(X[train], y[train])
        seconds = time.perf_counter() - started
        losses = fold_net.history[:, "train_loss"]
        if not all(math.isfinite(loss) for loss in losses):
            raise FloatingPointError(
                f"the training loss became {losses[-1]} in fold {fold}: the configuration "
                "diverged (a lower lr or a smaller init usually helps)"
            )
        yield float(scorer(fold_net, X[test], y[test])), seconds, len(fold_net.history)


def evaluate(
    trial: optuna.Trial,
    spec: StudySpec,
    data: DataSplits,
    device: str,
    should_stop: Callable[[], bool] | None = None,
) -> float:
    """Score one trial's configuration by K-fold cross-validation on the training split.

    Reports the running mean after each fold and raises ``optuna.TrialPruned`` when the
    pruner says so. Fold scores, their std, fit seconds, epochs and the device end in the
    trial's user_attrs.

    Returns:
        The mean fold score (greater is better, as for every scikit-learn scorer).
    """
    params = {**spec.fixed, **suggest(trial, spec.space)}
    net = build_net(spec, data, params, device)
    trial.set_user_attr("device", device)
    scores: list[float] = []
    seconds: list[float] = []
    epochs: list[int] = []
    folds = _fold_scores(
        net, data.X_train, data.y_train, make_folds(spec), spec.scoring, should_stop
    )
    for fold, (score, fit_seconds, fold_epochs) in enumerate(folds):
        scores.append(score)
        seconds.append(round(fit_seconds, 4))
        epochs.append(fold_epochs)
        trial.set_user_attr("fold_scores", scores)
        trial.set_user_attr("fit_seconds", seconds)
        trial.set_user_attr("epochs", epochs)
        trial.report(float(np.mean(scores)), step=fold)
        if fold + 1 < spec.cv.folds and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after fold {fold}: mean {np.mean(scores):.4f}")
    trial.set_user_attr("score_std", float(np.std(scores)))
    return float(np.mean(scores))
