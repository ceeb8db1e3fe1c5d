"""Fold runners: the three ways a trial's folds run, peers behind one protocol.

A runner takes the trial's unfitted net, the worker's data, every fold's (train, test) rows and
the scorer names, and yields each fold's ``FoldResult`` in fold order, whatever runs the fold:

- ``OneByOne``: one fold after another in the worker (``fold.fit_and_score_fold``);
- ``Stacked``: the plan's groups of folds, each trained as one stacked model
  (``stacked_fit.fit_and_score_stacked``), a group of one as its own fit;
- ``hpo.engine.folds.processes.FoldPool``: several folds at once, in the worker and in fold
  processes.

``fold_runner`` is the one place that maps a plan (``hpo.engine.folds.plan``) to its runner.
Closing a runner's generator early (a pruned trial) stops what still runs.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hpo.engine.data import DataSplits
from hpo.engine.folds.fold import EpochListener, FoldResult, fit_and_score_fold
from hpo.engine.folds.plan import FoldPlan
from hpo.engine.folds.processes import FoldPool
from hpo.engine.folds.stacked_fit import fit_and_score_stacked

Splits = Sequence[tuple[np.ndarray, np.ndarray]]


class FoldRunner(Protocol):
    """Fits and scores a trial's folds; what every strategy offers the objective."""

    def fold_results(
        self,
        net: Any,
        data: DataSplits,
        splits: Splits,
        scoring: str | Sequence[str],
        should_stop: Callable[[], bool] | None = None,
        on_epoch: EpochListener | None = None,
    ) -> Generator[FoldResult, None, None]:
        """Each fold's result, in fold order, as ``cross_val_score`` would score it; with
        ``on_epoch``, each fit's folds' held-out scores after the epochs it asks for.

        Raises:
            FloatingPointError: a fold's training loss stopped being finite.
            WorkerStopped: ``should_stop()`` turned true.
            optuna.TrialPruned: ``on_epoch`` stopped the trial.
        """
        ...


@dataclass(frozen=True)
class OneByOne:
    """One fold after another in this process, on ``threads`` torch threads."""

    threads: int

    def fold_results(
        self,
        net: Any,
        data: DataSplits,
        splits: Splits,
        scoring: str | Sequence[str],
        should_stop: Callable[[], bool] | None = None,
        on_epoch: EpochListener | None = None,
    ) -> Generator[FoldResult, None, None]:
        for fold, (train, test) in enumerate(splits):
            yield fit_and_score_fold(
                net, data, fold, train, test, scoring, self.threads, should_stop, on_epoch
            )


@dataclass(frozen=True)
class Stacked:
    """The folds of each of ``groups`` trained as one stacked model (all folds as one group
    when ``groups`` is empty), on ``threads`` torch threads."""

    threads: int
    groups: tuple[tuple[int, ...], ...] = ()

    def fold_results(
        self,
        net: Any,
        data: DataSplits,
        splits: Splits,
        scoring: str | Sequence[str],
        should_stop: Callable[[], bool] | None = None,
        on_epoch: EpochListener | None = None,
    ) -> Generator[FoldResult, None, None]:
        for group in self.groups or (tuple(range(len(splits))),):
            if len(group) == 1:
                (fold,) = group
                train, test = splits[fold]
                yield fit_and_score_fold(
                    net, data, fold, train, test, scoring, self.threads, should_stop, on_epoch
                )
            else:
                yield from fit_and_score_stacked(
                    net,
                    data,
                    list(group),
                    list(splits),
                    scoring,
                    self.threads,
                    should_stop,
                    on_epoch,
                )


def fold_runner(plan: FoldPlan, pool: FoldPool | None = None) -> FoldRunner:
    """The runner of ``plan``: stacked, the worker's fold processes (``pool``), or one by one
    (also for a plan of fold processes when the worker has none)."""
    if plan.strategy == "stacked":
        return Stacked(plan.threads, plan.groups)
    if plan.strategy == "fold processes" and pool is not None:
        return pool
    return OneByOne(plan.threads)
