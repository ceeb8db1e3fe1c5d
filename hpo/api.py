"""hpo from Python: run a study, get its best net, load its refit, hand its parameters to skorch.

Everything here is also reachable from the ``hpo`` command; these functions are its library
face, importable as ``hpo.run``, ``hpo.best_net``, ``hpo.refit``, ``hpo.load_refit`` and
``hpo.skorch_params``::

    import hpo

    study = hpo.run("studies/digits-mlp-tpe.yaml", workers=2)   # an optuna.Study
    net = hpo.best_net(study.study_name)                        # unfitted skorch net
    hpo.refit(study.study_name)                                 # fit on train, score on test
    fitted = hpo.load_refit(study.study_name)                   # here or on another machine

``load_refit`` is ``hpo.results.load.load_refit``. Storage: ``storage=None`` means
``$HPO_STORAGE``, else ``sqlite:///hpo.db``, as for the command; a URL or an
``optuna.storages.BaseStorage`` works too.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from hpo.errors import HpoError
from hpo.results.load import load_refit
from hpo.spec.study_spec import StudySpec, load_spec, parse_spec

if TYPE_CHECKING:
    from skorch import NeuralNet

    from hpo.results.refit import RefitResult

__all__ = ["best_net", "load_refit", "refit", "run", "skorch_params"]

#: Columns of ``best_params.csv`` (and of ``trials.csv``) that describe a trial, not a net.
META_COLUMNS = frozenset(
    {"study", "trial", "value", "number", "state", "fold_scores", "score_std", "duration_s"}
    | {"device", "threads", "fail_reason"}
)


def run(
    spec: str | Path | Mapping[str, Any] | StudySpec,
    workers: int = 2,
    storage: str | None = None,
    trials: int | None = None,
    *,
    allow_modules: Sequence[str] = (),
    results_dir: str | Path = "results",
    threads: int | None = None,
) -> optuna.Study:
    """Register a study and run it to its budget with ``workers`` local worker processes.

    What ``hpo run`` does: the study resumes if it is already registered with the same spec,
    and ``<results_dir>/<name>/best_params.csv`` is written when a trial completed.

    Args:
        spec: a study file, the same keys as a mapping, or a ``StudySpec``.
        workers: worker processes on this machine. Default: 2.
        storage: a storage URL, which the workers open too (PostgreSQL for many machines).
            Default: ``$HPO_STORAGE``, else ``sqlite:///hpo.db``.
        trials: the study's budget instead of the spec's.
        allow_modules: module prefixes whose code (``model:``, ``criterion:``) this process
            and the workers may import, as ``hpo run --allow-module``: a spec file, like one
            in a storage, may come from anyone, so its code is trusted only when listed here
            (or in ``$HPO_ALLOW_MODULES``).
        results_dir: where ``<name>/best_params.csv`` goes. Default: ``results``.
        threads: torch CPU threads of each worker. Default: the CPUs this process may use
            and other processes leave idle, shared out (``hpo.service.cpus``).

    Returns:
        The ``optuna.Study``, loaded from the storage after the workers are done.

    Raises:
        SpecError: the spec is invalid (every problem listed).
        HpoError: a worker failed to start, or no trial completed.
    """
    from hpo.service.runner import run_study

    study_spec = _as_spec(spec)
    from hpo.service.storage import resolve_storage_url

    url = resolve_storage_url(storage)
    result = run_study(
        study_spec,
        url,
        workers=workers,
        trials=trials,
        results_dir=results_dir,
        allow_modules=allow_modules,
        threads=threads,
    )
    if any(code != 0 for code in result.worker_exit_codes):
        raise HpoError(
            f"study {result.study}: worker exit codes {result.worker_exit_codes}; run one with "
            f"hpo worker --study {result.study} to see why"
        )
    return optuna.load_study(study_name=result.study, storage=_open(url))


def best_net(
    name: str,
    storage: str | optuna.storages.BaseStorage | None = None,
    *,
    allow_modules: Sequence[str] = (),
    device: str | None = None,
) -> NeuralNet:
    """An unfitted skorch net holding the best configuration of study ``name``: the module,
    its input shape and outputs, the fixed and the best searched parameters.

    ``net.fit(X, y)`` trains it as ``hpo refit`` does (which also scores it on the test
    split). The study's dataset is loaded to size the module.

    Args:
        name: a study with a completed trial.
        storage: as for ``run``.
        allow_modules: module prefixes whose code the study's spec may name; the spec comes
            from the storage, so its code is imported only when trusted (or
            ``$HPO_ALLOW_MODULES``).
        device: ``cuda`` or ``cpu``. Default: ``cuda`` when a GPU is visible.
    """
    from hpo.engine.build import build_net
    from hpo.engine.device import resolve_device
    from hpo.engine.scorer import study_data
    from hpo.engine.user_code import admit_user_code
    from hpo.service.study import load_study, result_trial

    study, spec = load_study(_open(storage), name)
    admit_user_code(spec, allow_modules, f"study {name}")
    best = result_trial(study, spec)
    data = study_data(spec)
    return build_net(spec, data, spec.configuration(best.params), resolve_device(device))


def refit(
    name: str,
    storage: str | optuna.storages.BaseStorage | None = None,
    *,
    artifacts: str | Path | None = None,
    allow_modules: Sequence[str] = (),
    device: str | None = None,
    results_dir: str | Path = "results",
) -> RefitResult:
    """``hpo refit``: the best configuration fitted on the whole training split, scored once
    on the held-out test split, and stored as the study's artifacts (``load_refit`` reads
    them back). The study's own code is imported only when trusted.

    The test score then stands beside the CV score in optuna-dashboard: on top of the
    study's note, and in the refit trial's note (``hpo.service.notes``).

    Args:
        name: a study with a completed trial.
        storage: as for ``run``.
        artifacts: the artifact folder. Default: ``$HPO_ARTIFACTS``, else ``results``.
        allow_modules: as for ``best_net``.
        device: ``cuda`` or ``cpu``. Default: ``cuda`` when a GPU is visible.
        results_dir: where the human-readable files go, under ``<name>/``. Default:
            ``results``.
    """
    from hpo.engine.user_code import admit_user_code
    from hpo.results.refit import refit_study
    from hpo.service.notes import write_refit_notes
    from hpo.service.study import load_spec_from_storage
    from hpo.service.tracking import open_trackers

    opened = _open(storage)
    spec = load_spec_from_storage(opened, name)
    admit_user_code(spec, allow_modules, f"study {name}")
    result = refit_study(opened, name, results_dir=results_dir, artifacts=artifacts, device=device)
    if result.warning:  # as hpo refit prints it, and the report says it
        warnings.warn(result.warning, stacklevel=2)
    trackers = open_trackers(spec)
    if trackers:  # the test metrics and the refit's files, beside the trials' runs
        trackers.log_refit(result.metrics, result.folder, result.trial)
    write_refit_notes(
        opened,
        spec,
        trial=result.trial,
        test=result.metrics["score"],  # the spec's scorer, as the CV score
        test_metrics={key: value for key, value in result.metrics.items() if key != "score"},
    )
    return result


def skorch_params(row: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments that plain ``skorch.NeuralNetClassifier`` / ``NeuralNetRegressor``
    accept, from a row of ``best_params.csv`` as pandas reads it.

    ``NeuralNetClassifier(MyModule, module__input_shape=..., module__n_outputs=...,
    **hpo.skorch_params(row))`` then trains what hpo trained:

    - meta columns (``study``, ``trial``, ``value``, ...) and empty cells are left out;
    - ``optimizer`` names become torch classes, ``criterion`` names torch losses (a
      ``package.module:Name`` is imported);
    - ``early_stopping_patience`` becomes an ``EarlyStopping(load_best=True)`` callback on
      a ``ValidSplit`` of ``validation_fraction``; without it, ``train_split=None`` (hpo
      trains on every row, where skorch's default holds out a fifth);
    - list values written as text (``"[0.9, 0.999]"``) are read back, and text the CSV export
      quoted against spreadsheet formulas (``'=...``) loses its quote;
    - ``preprocess`` (a scaler hpo fits inside each fit) and ``mixed_precision`` have no
      plain skorch parameter and are left out, with a warning when they are not ``none`` /
      false: put ``StandardScaler()`` (or ``MinMaxScaler()``) before the net in a
      scikit-learn ``Pipeline``.
    """
    from skorch.callbacks import EarlyStopping
    from skorch.dataset import ValidSplit

    from hpo.engine.nets import resolve_optimizer
    from hpo.engine.user_code import criterion_class
    from hpo.results.export import csv_value

    params: dict[str, Any] = {
        str(csv_value(key)): _plain(csv_value(value))
        for key, value in row.items()
        if key not in META_COLUMNS and not _is_empty(value)
    }
    kwargs: dict[str, Any] = {}
    patience = params.pop("early_stopping_patience", None)
    fraction = params.pop("validation_fraction", 0.2)
    preprocess = params.pop("preprocess", "none")
    mixed_precision = params.pop("mixed_precision", False)
    dropped = [
        f"{key}={value!r}"
        for key, value in (("preprocess", preprocess), ("mixed_precision", mixed_precision))
        if value not in ("none", False)
    ]
    if dropped:
        warnings.warn(
            f"{', '.join(dropped)} has no plain skorch parameter and is left out; scale the "
            "features in a Pipeline before the net (StandardScaler / MinMaxScaler)",
            stacklevel=2,
        )
    if "optimizer" in params:
        kwargs["optimizer"] = resolve_optimizer(params.pop("optimizer"))
    if "criterion" in params:
        kwargs["criterion"] = criterion_class(params.pop("criterion"))
    if patience is None:
        kwargs["train_split"] = None
    else:
        kwargs["train_split"] = ValidSplit(float(fraction))
        kwargs["callbacks"] = [EarlyStopping(patience=int(patience), load_best=True)]
    return {**params, **kwargs}


def _plain(value: Any) -> Any:
    """A pandas/NumPy cell as a plain Python value; list text read back."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, str) and value[:1] in "[(":
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _as_spec(spec: str | Path | Mapping[str, Any] | StudySpec) -> StudySpec:
    if isinstance(spec, StudySpec):
        return spec
    if isinstance(spec, Mapping):
        return parse_spec(dict(spec), source="<spec mapping>")
    return load_spec(spec)


def _open(storage: str | optuna.storages.BaseStorage | None) -> optuna.storages.BaseStorage:
    from hpo.service.storage import as_storage

    return as_storage(storage)
