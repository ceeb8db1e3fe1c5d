"""The worker's one door into the engine: a scorer, opened once per worker, scores trials.

``open_scorer`` does, once, everything a worker needs before its first trial:

1. holds the spec's own code to the trust rule (``hpo.engine.user_code.admit_user_code``);
2. loads the dataset and checks it against the model (``study_data``, which ``hpo refit`` and
   ``hpo.best_net`` load their data through too);
3. takes the worker's torch threads and device;
4. plans how trials run their folds (``hpo.engine.folds.plan.worker_plans``) and starts the
   fold processes that plan asks for, stopping them when the scorer closes.

``TrialScorer.score(trial, should_stop)`` then runs one trial (``hpo.engine.objective.evaluate``)
with the worker's data, device, threads, options and fold processes; ``plan`` is what the
worker logs and what ``hpo run``'s hint reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import optuna
import torch

from hpo.engine.build import check_compatible
from hpo.engine.data import DataSplits, load_dataset
from hpo.engine.device import resolve_device
from hpo.engine.folds.plan import (
    SMALL_NET_FLOPS,
    FoldOptions,
    FoldPlan,
    worker_fold_plan,
    worker_plans,
)
from hpo.engine.folds.processes import FoldPool, open_fold_pool
from hpo.engine.objective import evaluate
from hpo.engine.user_code import admit_user_code
from hpo.spec.study_spec import StudySpec

__all__ = ["TrialScorer", "open_scorer", "resolve_device", "study_data"]


def study_data(spec: StudySpec) -> DataSplits:
    """The spec's dataset, loaded and checked against its model before any fit.

    Raises:
        DatasetError: the dataset cannot be loaded.
        HpoError: the model cannot work on it (``check_compatible``).
    """
    data = load_dataset(spec.dataset.name, **spec.dataset.options)
    check_compatible(spec, data)
    return data


@dataclass(frozen=True)
class TrialScorer:
    """What a worker scores its trials with; made by ``open_scorer``.

    Attributes:
        spec: the study.
        data: the study's data, loaded once.
        device: where folds train.
        threads: the worker's torch CPU threads, the most a trial uses.
        plan: how the worker's trials run their folds, before any trial (a trial's own plan,
            from its net, is in its ``folds_plan`` user attribute).
        fallback: the plan of the trials whose net does not stack, when the worker keeps
            fold processes for them; else None.
        options: the worker's options for how folds run.
        pool: the worker's fold processes, or None.
    """

    spec: StudySpec
    data: DataSplits
    device: str
    threads: int
    plan: FoldPlan
    fallback: FoldPlan | None
    options: FoldOptions
    pool: FoldPool | None

    @property
    def task(self) -> str:
        """``classification`` or ``regression``, as the data says."""
        return self.data.task

    def describe(self) -> str:
        """The worker's start-up line: ``cpu, 2 torch threads, folds stacked, 2 threads``."""
        threads = f"{self.threads} torch thread{'' if self.threads == 1 else 's'}"
        fallback = f"; else {self.fallback.describe()}" if self.fallback is not None else ""
        return f"{self.device}, {threads}, {self.plan.describe()}{fallback}"

    def idle_cores_hint(self) -> str | None:
        """What to do when a small net would leave the worker's other cores idle, or None."""
        if not self.plan.idles_cores:
            return None
        return (
            f"a net under {SMALL_NET_FLOPS / 1e6:g} MFLOP per batch trains on one of these "
            "threads; for the other cores start more workers, each with --threads 1 (or hpo "
            "run --workers N)"
        )

    def score(
        self, trial: optuna.Trial, should_stop: Callable[[], bool] | None = None
    ) -> float | list[float]:
        """Score ``trial`` by K-fold cross-validation (``hpo.engine.objective.evaluate``).

        Raises:
            optuna.TrialPruned, FloatingPointError, WorkerStopped: as ``evaluate``; any other
            error of the trial's configuration, after the GPU's cached memory is freed.
        """
        try:
            return evaluate(
                trial,
                self.spec,
                self.data,
                self.device,
                should_stop,
                self.pool,
                self.options,
                threads=self.threads,
            )
        except Exception:
            if torch.cuda.is_available():  # a failed trial leaves its tensors' memory cached
                torch.cuda.empty_cache()
            raise


@contextmanager
def open_scorer(
    spec: StudySpec,
    *,
    device: str | None = None,
    threads: int | None = None,
    folds_at_once: int | None = None,
    stack_folds: bool = True,
    allow_modules: Sequence[str] = (),
    source: str = "<spec>",
) -> Iterator[TrialScorer]:
    """Everything a worker needs before its first trial, once; its fold processes stop when
    the block ends.

    Args:
        spec: the study, as the worker loaded it.
        device: ``cuda`` or ``cpu``. Default: ``cuda`` when a GPU is visible.
        threads: torch CPU threads for this process. Default: the current count.
        folds_at_once: as ``hpo worker --folds-at-once`` (``FoldOptions``).
        stack_folds: as ``hpo worker --stack-folds`` (``FoldOptions``).
        allow_modules: module prefixes whose code the spec may name (the trust rule).
        source: where the spec came from, for messages.

    Raises:
        HpoError: untrusted or unusable code, a dataset that cannot be loaded or does not fit
            the model, a device that cannot be used.
    """
    device = resolve_device(device)
    admit_user_code(spec, allow_modules, source)
    data = study_data(spec)
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    options = FoldOptions(folds_at_once=folds_at_once, stack_folds=stack_folds)
    validation = data.X_valid is not None
    plan, pool_plan = worker_plans(
        spec, device=device, threads=threads, validation=validation, options=options
    )
    pool = open_fold_pool(data, pool_plan)
    if pool_plan.processes and pool is None:  # the platform cannot start processes
        plan = worker_fold_plan(
            spec,
            device=device,
            threads=threads,
            validation=validation,
            options=options,
            fold_processes=False,
        )
    fallback = pool_plan if pool is not None and pool_plan != plan else None
    with pool or nullcontext():
        yield TrialScorer(spec, data, device, threads, plan, fallback, options, pool)
