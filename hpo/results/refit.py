"""Refit: the best configuration retrained on the whole training split, judged once on the test.

``refit_study`` takes the study's best trial, merges its parameters over the spec's ``fixed``
ones, fits one net on every training row (a validation split is used only for early stopping:
the dataset's fixed one where it has one, else skorch's ``ValidSplit``), and scores it once on
the held-out test split the search never saw. With ``refit: {include_validation: true}`` that
fit only chooses the epochs, and the net scored is fitted again on the training and
validation rows together for that many epochs (``_fit``). It writes under ``results/<study>/``:

- ``model.pt``: the weights, from skorch ``save_params``;
- ``params.json``: everything that rebuilds the net without the dataset: the study's
  ``model``, ``task``, ``input_shape``, ``n_outputs``, ``n_classes`` (and the ``classes`` the
  net predicts), the ``configuration`` (skorch ``set_params`` keys), the fitted feature
  ``scaling`` (``Scaling.state()``, or null), the ``trial`` and the ``hpo_version``;
- ``metrics.json``: the test metrics, the CV score they stand beside, epochs and seconds;
- ``history.json``: train and validation loss per epoch (the learning curves);
- ``confusion_matrix.csv``: true classes in rows, predicted in columns (classification only);
- ``predictions.csv``: one row per test row: ``y_true`` and ``y_pred`` (the class codes the
  confusion matrix counts, or the regression target), led by the input ``x`` when the inputs
  are one number (what the report's predicted-vs-true and residual plots draw);
- ``curve.json``: a regression on one input only: the net's prediction on an even grid of
  ``CURVE_POINTS`` x over the training and test range, the noise-free function where the
  dataset has one (``synthetic_regression``), and the training points (at most
  ``CURVE_TRAIN_POINTS``, a seeded sample beyond), so the report can draw the fitted curve
  over the data on a machine without the dataset.

The same files are uploaded as Optuna artifacts of the study (``hpo.results.artifacts``) to
the artifact folder (``--artifacts``, ``HPO_ARTIFACTS``, default ``results``), which is what
``hpo.results.load.load_refit`` reads on any machine and optuna-dashboard shows.

The test metrics also go into the study's user_attrs (``test_accuracy``, ``test_log_loss``;
``test_mse``, ``test_r2``; and ``test_score``, the spec's own scorer), so optuna-dashboard shows
them beside the CV score.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    get_scorer,
    log_loss,
    mean_squared_error,
    r2_score,
)

from hpo.engine.augment import augmented_rows
from hpo.engine.build import build_net, outputs_of
from hpo.engine.data import DataSplits, synthetic_function
from hpo.engine.device import resolve_device
from hpo.engine.folds.plan import fit_threads, forward_flops
from hpo.engine.scorer import study_data
from hpo.engine.threads import torch_threads
from hpo.errors import HpoError
from hpo.results.artifacts import open_artifact_store, resolve_artifacts_dir, upload_refit
from hpo.results.gap import gap_sentence
from hpo.results.paths import study_folder
from hpo.service.study import hpo_version, load_study, result_trial
from hpo.spec.objectives import metric_name
from hpo.spec.study_spec import StudySpec

MODEL_FILE = "model.pt"
PARAMS_FILE = "params.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
CONFUSION_FILE = "confusion_matrix.csv"
PREDICTIONS_FILE = "predictions.csv"
CURVE_FILE = "curve.json"
#: Points of ``curve.json``'s grid: a smooth line at a few kilobytes.
CURVE_POINTS = 200
#: The most training points ``curve.json`` keeps; a larger training split is sampled.
CURVE_TRAIN_POINTS = 2000
#: The noise-free function behind a dataset, by dataset name: its formula and the function,
#: drawn beside the fitted curve.
KNOWN_FUNCTIONS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "synthetic_regression": ("sin(2πx)(1 + x)", synthetic_function),
}

#: Prefix of the study user_attrs that hold the test metrics.
TEST_ATTR_PREFIX = "test_"


@dataclass(frozen=True)
class RefitResult:
    """What ``refit_study`` trained, how it scored on the test split, and where it saved it.

    Attributes:
        study: The study's name.
        trial: Number of the best trial whose configuration was refit.
        cv_score: That trial's mean cross-validation score.
        params: The configuration (fixed merged with searched), skorch ``set_params`` keys.
        metrics: Test metrics: ``accuracy`` and ``log_loss`` (classification) or ``mse`` and
            ``r2`` (regression), and ``score``, the spec's scorer on the test split.
        epochs: Epochs the final fit ran.
        n_train: Rows the final fit trained on (before ``augment``'s copies): the training
            split, with ``refit.include_validation`` and the validation split.
        seconds: Wall time of the final fit.
        folder: Where the files went.
        files: Each file written, by kind (``model``, ``params``, ``metrics``, ``history``,
            ``predictions``; ``confusion_matrix`` for a classification, ``curve`` for a
            regression on one input).
        artifacts_dir: The artifact folder the files were uploaded to.
        artifacts: The artifact id of each file, by kind.
        net: The fitted net (in this process only; ``load_refit`` rebuilds it anywhere).
        warning: The sentence the report gives when the test score strays far from the CV
            score (``hpo.results.gap``), else "".
    """

    study: str
    trial: int
    cv_score: float
    params: dict[str, Any]
    metrics: dict[str, float]
    epochs: int
    seconds: float
    folder: Path
    n_train: int = 0
    files: dict[str, Path] = field(default_factory=dict)
    artifacts_dir: Path | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    net: Any = field(default=None, repr=False, compare=False)
    warning: str = ""


def refit_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    results_dir: str | Path = "results",
    artifacts: str | Path | None = None,
    device: str | None = None,
) -> RefitResult:
    """Retrain the best configuration of study ``name`` and score it once on the test split.

    The spec's own code (a ``package.module:Name`` model or loss) is imported as it is; a
    caller with a spec from a shared storage checks it first
    (``hpo.engine.user_code.admit_user_code``), as ``hpo refit`` does.

    Args:
        storage: The storage the study lives in.
        name: A registered study with at least one completed trial.
        results_dir: Parent folder; files go to ``<results_dir>/<name>/``. Default ``results``.
        artifacts: The artifact folder the files are uploaded to, made when missing. Default:
            ``$HPO_ARTIFACTS``, else ``results``.
        device: ``cuda`` or ``cpu``. Default: ``cuda`` when a GPU is visible.

    Returns:
        The metrics, the paths written, the artifact ids and the fitted net.

    Raises:
        StudyError: No such study.
        DeviceError: ``device`` cannot be used here.
        HpoError: No trial has completed, the study's name cannot be a folder inside
            ``results_dir`` (``hpo.results.paths.study_folder``), the dataset cannot be
            loaded, the fit diverged, or the artifact folder is not a folder.
    """
    device = resolve_device(device)
    study, spec = load_study(storage, name)
    best = result_trial(study, spec)
    folder = study_folder(results_dir, name)
    params = spec.configuration(best.params)
    data = study_data(spec)
    # Before minutes of training, not after: the artifact folder can be written (made only
    # once the data has loaded, so a refit refused for its data leaves no folder behind).
    artifacts_dir = resolve_artifacts_dir(artifacts)
    open_artifact_store(artifacts_dir, create=True)

    started = time.perf_counter()
    net = build_net(spec, data, params, device)
    # As a trial's fold would fit the net (hpo.engine.folds.plan.fit_threads).
    train_rows = augmented_rows(net.augment, len(data.X_train))  # a batch_size of -1 holds
    flops = forward_flops(net, tuple(data.input_shape), train_rows)
    threads = fit_threads(flops, torch.get_num_threads())
    with torch_threads(threads):
        net, rows = _fit(spec, data, net, params, f"refit of {name!r} (trial {best.number})")
    seconds = time.perf_counter() - started
    history = _history(net)

    metrics = {"score": float(get_scorer(spec.scoring)(net, data.X_test, data.y_test))}
    confusion: pd.DataFrame | None = None
    curve: dict[str, Any] | None = None
    if data.task == "classification":
        more, confusion, predicted = _classification_metrics(net, data)
        metrics.update(more)
    else:
        predicted = np.asarray(net.predict(data.X_test)).reshape(-1)
        metrics.update(_regression_metrics(data, predicted))
        if data.input_shape == (1,):
            curve = _curve(net, data)

    n_test = len(data.X_test)
    files = _write_files(
        folder,
        net,
        rebuild=_rebuild_params(spec, data, net, params, best.number),
        history=history,
        summary={
            "study": name,
            "trial": best.number,
            "scoring": spec.scoring,
            "cv_score": best.values[0],
            "test": metrics,
            **rows,
            "n_test": n_test,
            "epochs": len(history),
            "fit_seconds": round(seconds, 3),
        },
        confusion=confusion,
        predictions=_predictions(data, predicted),
        curve=curve,
    )

    artifact_ids = upload_refit(study, artifacts_dir, files)
    for key, value in metrics.items():
        study.set_user_attr(f"{TEST_ATTR_PREFIX}{key}", value)
    study.set_user_attr("refit_trial", best.number)
    summary = {"test": metrics, "trial": best.number, "cv_score": float(best.values[0])}
    warning = gap_sentence(study, spec, metric_name(study, spec), {**summary, "n_test": n_test})

    return RefitResult(
        study=name,
        trial=best.number,
        cv_score=float(best.values[0]),
        params=params,
        metrics=metrics,
        epochs=len(history),
        seconds=seconds,
        folder=folder,
        n_train=rows["n_train"],
        files=files,
        artifacts_dir=artifacts_dir,
        artifacts=artifact_ids,
        net=net,
        warning=warning,
    )


def _fit(
    spec: StudySpec, data: DataSplits, net: Any, params: dict[str, Any], what: str
) -> tuple[Any, dict[str, Any]]:
    """``net`` (unfitted, of configuration ``params``) fitted as the refit fits it, or the
    fresh net that replaces it, and what ``metrics.json`` says of its rows: ``n_train``, the
    training rows; ``n_valid``, the dataset's validation rows (or None); with
    ``refit.include_validation``, that flag and ``early_stopping_epochs`` (or None).

    Without ``refit.include_validation``: one fit on the training split, early stopping (when
    the configuration has it) on the dataset's validation split, else on
    ``validation_fraction`` of the training rows. With it: that fit chooses the epochs (its
    best epoch, whose weights early stopping kept), then a fresh net of the same seed trains
    on every row the first one saw, the training and validation rows together, for that
    many epochs. Without early stopping only that second fit runs, for ``max_epochs``.

    Raises:
        HpoError: a fit's training loss stopped being finite.
    """
    early_stopping = params.get("early_stopping_patience") is not None
    n_valid = None if data.X_valid is None else len(data.X_valid)
    chosen: dict[str, int] = {}
    if early_stopping or not spec.refit.include_validation:
        net.fit(data.X_train, data.y_train)
        _check_finite(net, what)
        if not spec.refit.include_validation:
            return net, {"n_train": len(data.X_train), "n_valid": n_valid}
        chosen = {"max_epochs": _best_epoch(net)}
    X, y = data.X_train, data.y_train
    if data.X_valid is not None:
        X, y = np.concatenate([X, data.X_valid]), np.concatenate([y, data.y_valid])
    final = build_net(
        spec, data, {**params, **chosen, "early_stopping_patience": None}, str(net.device)
    )
    final.fit(X, y)
    _check_finite(final, what)
    return final, {
        "n_train": len(X),
        "n_valid": n_valid,
        "include_validation": True,
        "early_stopping_epochs": chosen.get("max_epochs"),
    }


def _best_epoch(net: Any) -> int:
    """The epoch whose weights skorch's ``EarlyStopping(load_best=True)`` kept (its fitted
    ``best_epoch_``); every epoch when none was better than the start."""
    stopping = dict(net.callbacks_)["early_stopping"]
    return int(stopping.best_epoch_) or len(net.history)


def _check_finite(net: Any, what: str) -> None:
    losses = net.history[:, "train_loss"]
    if not all(math.isfinite(loss) for loss in losses):
        raise HpoError(
            f"{what} diverged: the training loss became {losses[-1]}; the configuration was "
            "unstable on the whole training split"
        )


def _write_files(
    folder: Path,
    net: Any,
    *,
    rebuild: dict[str, Any],
    history: list[dict[str, float]],
    summary: dict[str, Any],
    confusion: pd.DataFrame | None,
    predictions: pd.DataFrame,
    curve: dict[str, Any] | None,
) -> dict[str, Path]:
    """The refit's files in ``folder``, by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "model": folder / MODEL_FILE,
        "params": folder / PARAMS_FILE,
        "metrics": folder / METRICS_FILE,
        "history": folder / HISTORY_FILE,
    }
    net.save_params(f_params=str(files["model"]))
    _write_json(files["params"], rebuild)
    _write_json(files["history"], history)
    _write_json(files["metrics"], summary)
    if confusion is not None:
        files["confusion_matrix"] = folder / CONFUSION_FILE
        confusion.to_csv(files["confusion_matrix"])
    files["predictions"] = folder / PREDICTIONS_FILE
    predictions.to_csv(files["predictions"], index=False)
    if curve is not None:
        files["curve"] = folder / CURVE_FILE
        _write_json(files["curve"], curve, indent=None)  # a few hundred numbers: one line
    return files


def _rebuild_params(
    spec: StudySpec, data: DataSplits, net: Any, configuration: dict[str, Any], trial: int
) -> dict[str, Any]:
    """``params.json``: what ``hpo.engine.build.net_for`` needs to rebuild the fitted net
    without the dataset, and what the net learned besides its weights (the feature scaling,
    the classes)."""
    scaling = getattr(net, "scaling_", None)
    classes = getattr(net, "classes_", None) if data.task == "classification" else None
    return {
        "study": spec.name,
        "trial": trial,
        "hpo_version": hpo_version(),
        "model": spec.model,
        "task": data.task,
        "input_shape": list(data.input_shape),
        "n_outputs": outputs_of(data),
        "n_classes": data.n_classes,
        "classes": None if classes is None else np.asarray(classes).tolist(),
        "configuration": configuration,
        "scaling": None if scaling is None else scaling.state(),
    }


def _history(net: Any) -> list[dict[str, float]]:
    """Per epoch: the epoch number, train loss, validation loss (when there was validation
    data) and seconds."""
    rows = []
    for entry in net.history:
        row = {"epoch": int(entry["epoch"]), "train_loss": float(entry["train_loss"])}
        if "valid_loss" in entry:
            row["valid_loss"] = float(entry["valid_loss"])
        row["seconds"] = round(float(entry["dur"]), 4)
        rows.append(row)
    return rows


def _classification_metrics(
    net: Any, data: DataSplits
) -> tuple[dict[str, float], pd.DataFrame, np.ndarray]:
    """The test accuracy and log loss, the confusion matrix and the predicted class codes."""
    assert data.n_classes is not None
    classes = list(range(data.n_classes))
    # float64 rows summing to 1, which log_loss checks more strictly than float32 softmax gives.
    proba = np.asarray(net.predict_proba(data.X_test), dtype=np.float64)
    proba /= proba.sum(axis=1, keepdims=True)
    predicted = proba.argmax(axis=1)
    metrics = {
        "accuracy": float(accuracy_score(data.y_test, predicted)),
        "log_loss": float(log_loss(data.y_test, proba, labels=classes)),
    }
    matrix = confusion_matrix(data.y_test, predicted, labels=classes)
    frame = pd.DataFrame(
        matrix,
        index=pd.Index(classes, name="true"),
        columns=pd.Index(classes, name="predicted"),
    )
    return metrics, frame, predicted


def _regression_metrics(data: DataSplits, predicted: np.ndarray) -> dict[str, float]:
    y_true = np.asarray(data.y_test).reshape(-1)
    return {
        "mse": float(mean_squared_error(y_true, predicted)),
        "r2": float(r2_score(y_true, predicted)),
    }


def _predictions(data: DataSplits, predicted: np.ndarray) -> pd.DataFrame:
    """``predictions.csv``: each test row's target and prediction, after its ``x`` when the
    inputs are one number. Regression values as float32 give their 7 digits, not 17."""
    columns: dict[str, np.ndarray] = {}
    if data.input_shape == (1,):
        columns["x"] = np.asarray(data.X_test).reshape(-1)
    columns["y_true"] = np.asarray(data.y_test).reshape(-1)
    columns["y_pred"] = np.asarray(predicted).reshape(-1)
    if data.task == "regression":
        columns["y_pred"] = columns["y_pred"].astype(np.float32)
    return pd.DataFrame(columns)


def _curve(net: Any, data: DataSplits) -> dict[str, Any]:
    """``curve.json`` of a regression on one input: the net on an even grid over the range of
    the training and test x, the dataset's noise-free function there (or null), and the
    training points it was fitted to."""
    x_train = np.asarray(data.X_train, dtype=np.float32).reshape(-1)
    y_train = np.asarray(data.y_train, dtype=np.float32).reshape(-1)
    every_x = np.concatenate([x_train, np.asarray(data.X_test, dtype=np.float32).reshape(-1)])
    grid = np.linspace(every_x.min(), every_x.max(), CURVE_POINTS, dtype=np.float32)
    fitted = np.asarray(net.predict(grid.reshape(-1, 1)), dtype=np.float32).reshape(-1)
    formula, function = KNOWN_FUNCTIONS.get(data.name, (None, None))
    if len(x_train) > CURVE_TRAIN_POINTS:
        keep = np.sort(
            np.random.default_rng(0).choice(len(x_train), CURVE_TRAIN_POINTS, replace=False)
        )
        x_train, y_train = x_train[keep], y_train[keep]
    return {
        "x": _rounded(grid),
        "y_pred": _rounded(fitted),
        "function": formula,
        "y_function": None if function is None else _rounded(function(grid)),
        "train_x": _rounded(x_train),
        "train_y": _rounded(y_train),
        "n_train": len(data.X_train),
    }


def _rounded(values: np.ndarray) -> list[float]:
    """float32 values to 7 significant digits, what they hold, not float64's 17."""
    return [float(f"{v:.7g}") for v in np.asarray(values, dtype=np.float64)]


def _write_json(path: Path, value: Any, indent: int | None = 2) -> None:
    text = json.dumps(value, indent=indent, default=_jsonable)
    path.write_text(text + "\n", encoding="utf-8")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
