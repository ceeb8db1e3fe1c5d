"""Experiment tracking: every finished trial, and the refit, logged to MLflow or TensorBoard.

A spec's ``tracking:`` names the trackers (``hpo.spec.study_spec.TrackingSpec``); every worker
opens them (``open_trackers``) and logs each trial it finished, whatever its state:

- **MLflow**: one run per trial in the experiment (default: the study's name), named
  ``trial-<number>`` and tagged ``hpo.study`` / ``hpo.trial``; its parameters, its state, its CV
  score under the study's metric name, each fold's score as that metric's steps, the fold
  scores' std and each fold's fit seconds. A trial already logged (by another worker, or
  before a restart) is not logged again, so many workers on many machines share one
  experiment without duplicates. The refit is a run ``refit`` with the test metrics and the
  refit's files as artifacts.
- **TensorBoard**: one event folder per trial, ``dir/<study>/trial-<number>``: its
  parameters and CV score as hparams, the fold scores and fit seconds as scalars by fold; the
  refit's test metrics under ``dir/<study>/refit``. Read them with TensorBoard (``tensorboard
  --logdir dir``) or its ``EventAccumulator``.

A tracker that cannot be reached or written never fails a trial: the first failure is logged
as a warning with what to check, the others go unsaid. Both are optional extras
(``pip install -e '.[mlflow]'``, ``'.[tensorboard]'``); a spec naming one that is not
installed is refused when the worker starts, before any trial.

optuna-integration's ``MLflowCallback`` would log a trial too, but not its folds, and it makes
a run per call: two workers, or a worker restarted after a crash, would log one trial twice;
hpo's runs are keyed by the trial, and optuna-integration is no dependency of hpo.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpo.errors import HpoError
from hpo.spec.objectives import metric_name
from hpo.spec.study_spec import StudySpec

logger = logging.getLogger("hpo.service.tracking")

#: MLflow tags that key a run to its study and trial.
STUDY_TAG, TRIAL_TAG = "hpo.study", "hpo.trial"


class Trackers:
    """The trackers of one study, for one process; ``log_trial`` and ``log_refit`` never
    raise."""

    def __init__(self, spec: StudySpec, writers: list[Any]) -> None:
        self.spec = spec
        self.writers = writers
        self._warned: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.writers)

    def log_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Log a finished trial to every tracker (a failed write is warned of once)."""
        facts = _trial_facts(study, self.spec, trial)
        for writer in self.writers:
            self._guarded(writer, lambda w: w.log_trial(facts))

    def log_refit(self, metrics: Mapping[str, float], folder: Path, trial: int) -> None:
        """Log a refit's test metrics (and, to MLflow, its files) to every tracker."""
        test = {f"test_{key}": float(value) for key, value in metrics.items()}
        for writer in self.writers:
            self._guarded(writer, lambda w: w.log_refit(test, folder, trial))

    def _guarded(self, writer: Any, call: Callable[[Any], None]) -> None:
        try:
            call(writer)
        except Exception as error:  # a tracker's trouble is never the trial's
            if writer.name not in self._warned:
                self._warned.add(writer.name)
                logger.warning(
                    "%s: cannot log to %s (%s: %s); the trials go on, and further failures "
                    "of this tracker are not repeated here",
                    writer.name,
                    writer.where,
                    type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "",
                )


def open_trackers(spec: StudySpec) -> Trackers:
    """The trackers ``spec.tracking`` names, ready to log.

    Raises:
        HpoError: a tracker's package is not installed (with the extra that brings it).
    """
    writers: list[Any] = []
    if spec.tracking.mlflow is not None:
        writers.append(_Mlflow(spec, spec.tracking.mlflow.uri, spec.tracking.mlflow.experiment))
    if spec.tracking.tensorboard is not None:
        writers.append(_Tensorboard(spec, Path(spec.tracking.tensorboard.dir)))
    return Trackers(spec, writers)


def _trial_facts(study: optuna.Study, spec: StudySpec, trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    value = trial.values[0] if trial.values else None
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": dict(trial.params),
        "metric": metric_name(study, spec),
        "value": value,
        "fold_scores": [float(s) for s in attrs.get("fold_scores") or []],
        "fit_seconds": [float(s) for s in attrs.get("fit_seconds") or []],
        "score_std": attrs.get("score_std"),
    }


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _import(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise HpoError(
            f"tracking.{extra}: the {module.split('.')[0]} package is not installed here; "
            f"pip install -e '.[{extra}]' (or remove tracking.{extra} from the spec)"
        ) from None


class _Mlflow:
    name = "tracking.mlflow"

    def __init__(self, spec: StudySpec, uri: str, experiment: str | None) -> None:
        self.mlflow = _import("mlflow", "mlflow")
        from hpo.service.storage import masked_url

        self.spec = spec
        self.uri = uri
        self.where = masked_url(uri)
        self._client: Any = None
        self.experiment = experiment or spec.name
        self._experiment_id: str | None = None

    @property
    def client(self) -> Any:
        # Made at the first write, where a failure is the tracker's and not the worker's (a
        # SQLite store creates its folder and tables here).
        if self._client is None:
            self._client = self.mlflow.tracking.MlflowClient(tracking_uri=self.uri)
        return self._client

    def _experiment(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    self._experiment_id = self.client.create_experiment(
                        self.experiment, artifact_location=_artifact_location(self.uri)
                    )
                except self.mlflow.exceptions.MlflowException:
                    # Another worker created it meanwhile.
                    self._experiment_id = self.client.get_experiment_by_name(
                        self.experiment
                    ).experiment_id
            else:
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def _run(self, key: str) -> tuple[str, bool]:
        """The run tagged ``key`` (a trial's number, or ``refit``), and whether it is new."""
        experiment = self._experiment()
        query = f"tags.`{STUDY_TAG}` = '{self.spec.name}' and tags.`{TRIAL_TAG}` = '{key}'"
        existing = self.client.search_runs([experiment], filter_string=query, max_results=1)
        if existing and key != "refit":
            return existing[0].info.run_id, False
        name = "refit" if key == "refit" else f"trial-{key}"
        run = self.client.create_run(
            experiment, run_name=name, tags={STUDY_TAG: self.spec.name, TRIAL_TAG: key}
        )
        return run.info.run_id, True

    def log_trial(self, facts: dict[str, Any]) -> None:
        run_id, new = self._run(str(facts["number"]))
        if not new:
            return  # logged already: one run per trial
        entities = self.mlflow.entities
        params = [entities.Param(k, str(v)) for k, v in facts["params"].items()]
        metrics = []
        stamp = 0
        if _finite(facts["value"]):
            metrics.append(entities.Metric(facts["metric"], facts["value"], stamp, 0))
        for fold, score in enumerate(facts["fold_scores"]):
            metrics.append(entities.Metric(f"fold_{facts['metric']}", score, stamp, fold))
        for fold, seconds in enumerate(facts["fit_seconds"]):
            metrics.append(entities.Metric("fit_seconds", seconds, stamp, fold))
        if _finite(facts["score_std"]):
            metrics.append(entities.Metric("score_std", float(facts["score_std"]), stamp, 0))
        tags = [entities.RunTag("hpo.state", facts["state"])]
        self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        status = "FINISHED" if facts["state"] == "COMPLETE" else "KILLED"
        if facts["state"] == "FAIL":
            status = "FAILED"
        self.client.set_terminated(run_id, status=status)

    def log_refit(self, test: dict[str, float], folder: Path, trial: int) -> None:
        run_id, _ = self._run("refit")
        entities = self.mlflow.entities
        metrics = [entities.Metric(k, v, 0, 0) for k, v in test.items() if _finite(v)]
        tags = [entities.RunTag("hpo.refit_of_trial", str(trial))]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self.client.log_artifacts(run_id, str(folder))
        self.client.set_terminated(run_id, status="FINISHED")


class _Tensorboard:
    name = "tracking.tensorboard"

    def __init__(self, spec: StudySpec, root: Path) -> None:
        _import("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer_class = SummaryWriter
        self.folder = root / spec.name
        self.where = str(self.folder)

    def log_trial(self, facts: dict[str, Any]) -> None:
        folder = self.folder / f"trial-{facts['number']}"
        if folder.exists():
            return  # logged already: one folder per trial
        metric = facts["metric"]
        with self.writer_class(log_dir=str(folder)) as writer:
            for fold, score in enumerate(facts["fold_scores"]):
                writer.add_scalar(f"fold/{metric}", score, fold)
            for fold, seconds in enumerate(facts["fit_seconds"]):
                writer.add_scalar("fold/fit_seconds", seconds, fold)
            hparams = {k: v if _is_hparam(v) else str(v) for k, v in facts["params"].items()}
            results = {f"hparam/{metric}": facts["value"]} if _finite(facts["value"]) else {}
            writer.add_hparams({**hparams, "state": facts["state"]}, results, run_name=".")

    def log_refit(self, test: dict[str, float], folder: Path, trial: int) -> None:
        with self.writer_class(log_dir=str(self.folder / "refit")) as writer:
            for key, value in test.items():
                if _finite(value):
                    writer.add_scalar(f"refit/{key}", value, trial)


def _artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: for a local SQLite store, ``mlruns``
    beside the database (MLflow's default is ``./mlruns`` in whatever folder the worker runs
    in); for a server, what the server says (None)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return (Path(uri[len(prefix) :]).resolve().parent / "mlruns").as_uri()


def _is_hparam(value: Any) -> bool:
    return isinstance(value, bool | int | float | str)
