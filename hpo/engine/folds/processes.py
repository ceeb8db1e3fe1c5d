"""Fold processes: a CPU worker with several cores fits a trial's folds side by side.

The nets a search tries are small, and a small net cannot keep two cores busy: torch splits
each op across its threads, and an op of a few microseconds gains little from that while the
Python around it (skorch's loop, autograd) runs on one core anyway. K folds are K independent
fits, so a worker with T threads fits ``N = min(T, K)`` folds at once, on ``T // N`` threads
each: one itself, the others in N - 1 fold processes, as ``cross_val_score(..., n_jobs=T)``
does with joblib, which on two cores beats fitting the folds one after another on two
threads (measured: docs/benchmarks.md). Stacking the folds in one process
(``hpo.engine.folds.stacked``) gains more, so a worker whose folds are stacked starts no
fold processes unless ``--folds-at-once`` asks for them (``hpo.engine.folds.plan``
decides).

The fold processes start once per worker (``spawn``, so no lock held by one of the worker's
threads is copied into them) and receive the training data once; each fold then sends a
``clone`` of the trial's unfitted net, its row indices and the scorer names, as scikit-learn's
joblib path ships an estimator to ``cross_val_score``'s workers, so a trial's parameters reach
its net by one route wherever a fold runs. Every fold, wherever it runs, computes what
``hpo.engine.folds.fold.fit_and_score_fold`` computes on ``T // N`` threads: same net, same
seed, same rows, so it does not matter which process took it (up to float rounding, which
differs between processes as between thread counts). Results come back in fold order, so
pruning after fold k sees what it sees without the processes; the folds still running for a
pruned, failed or stopped trial are told to stop at their next batch. While the fold processes
start (a few seconds: each imports torch), the worker fits the folds itself.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import torch
from sklearn.base import clone

from hpo.engine.data import DataSplits
from hpo.engine.folds.fold import EpochListener, FoldResult, WorkerStopped, fit_and_score_fold
from hpo.engine.folds.plan import FoldPlan

logger = logging.getLogger("hpo.engine.folds.processes")

#: Seconds between looks at ``should_stop`` while the worker waits for a fold.
STOP_POLL_SECONDS = 0.1


def open_fold_pool(data: DataSplits, plan: FoldPlan) -> FoldPool | None:
    """The fold processes ``plan`` asks for, started; None when it asks for none, or when
    this platform cannot start processes (no ``/dev/shm`` semaphores, say), which is logged:
    the worker then fits its folds one by one."""
    if not plan.processes:
        return None
    try:
        pool = FoldPool(data, processes=plan.processes, threads=plan.threads)
        pool.start()
    except OSError as error:
        logger.warning("cannot start fold processes (%s); fitting folds one at a time", error)
        return None
    return pool


class FoldPool:
    """Processes that fit the folds of a worker's trials beside the worker: the fold runner
    of the ``fold processes`` plan (``hpo.engine.folds.runners``).

    Args:
        data: the worker's data, which every trial it runs is scored on; its test split
            stays behind.
        processes: fold processes, so folds fitted at once besides the worker's own.
        threads: torch threads for each fold, in a fold process or in the worker.

    Use it as a context manager, or call ``start`` and ``close``. The processes start on
    entering (or with the first trial); while they import torch and unpickle the data, the
    worker fits the folds itself.
    """

    def __init__(self, data: DataSplits, processes: int, threads: int) -> None:
        self.processes = processes
        self.threads = threads
        self.data = data
        self._context = multiprocessing.get_context("spawn")
        self._abandon = self._context.Event()
        training_only = dataclasses.replace(data, X_test=data.X_test[:0], y_test=data.y_test[:0])
        self._initargs = (training_only, threads, self._abandon, os.getpid())
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> FoldPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the processes (a fold still running stops at its next batch)."""
        if self._executor is not None:
            self._abandon.set()
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def fold_results(
        self,
        net: Any,
        data: DataSplits,
        splits: Sequence[tuple[np.ndarray, np.ndarray]],
        scoring: str | Sequence[str],
        should_stop: Callable[[], bool] | None = None,
        on_epoch: EpochListener | None = None,
        *,
        fit_here: bool = True,
    ) -> Generator[FoldResult, None, None]:
        """Fit a ``clone`` of ``net`` on every split and score it by ``scoring``; yield the
        results in fold order.

        Each fold process takes the next fold nobody has taken whenever it is free; so does
        this process (unless ``fit_here`` is False), on ``threads`` threads, whenever the fold
        due next is still running elsewhere. Closing the generator early (a pruned trial)
        stops the folds still running in the fold processes.

        Args:
            net: the trial's unfitted net, on the CPU.
            data: the data the pool was opened with (the fold processes hold a copy).
            splits: every fold's (train, test) row indices.
            scoring: a scikit-learn scorer name, or several (``fold.score_fold``).
            should_stop: polled while folds run; true ends the trial with ``WorkerStopped``.
            on_epoch: must be None: a fold process reports nothing before its fold ends, so
                a trial that reports its epochs is planned without them
                (``hpo.engine.folds.plan``).
            fit_here: this process fits folds too. Default: True.

        Raises:
            WorkerStopped: ``should_stop()`` turned true while a fold ran.
            RuntimeError: a fold process died.
            Whatever a fold raised (``FloatingPointError`` for a diverged fit, ...).
        """
        if data is not self.data:
            raise ValueError("a fold pool scores the data it was opened with, and no other")
        if on_epoch is not None:
            raise ValueError("fold processes cannot report a fold's epochs before it ends")
        executor = self.start()
        shipped = clone(net)
        untaken = deque(range(len(splits)))
        submitted: dict[int, Future[FoldResult]] = {}
        fitted_here: dict[int, FoldResult] = {}

        def hand_out() -> None:
            busy = sum(not future.done() for future in submitted.values())
            while untaken and busy < self.processes:
                fold = untaken.popleft()
                train, test = splits[fold]
                submitted[fold] = executor.submit(_fit_fold, shipped, fold, train, test, scoring)
                busy += 1

        def ready(fold: int) -> bool:
            return fold in fitted_here or (fold in submitted and submitted[fold].done())

        try:
            for due in range(len(splits)):
                hand_out()
                while not ready(due):
                    if fit_here and untaken:
                        mine = untaken.popleft()
                        train, test = splits[mine]
                        fitted_here[mine] = fit_and_score_fold(
                            net, data, mine, train, test, scoring, self.threads, should_stop
                        )
                    else:
                        self._wait_for(submitted[due], should_stop)
                    hand_out()
                if due in fitted_here:
                    yield fitted_here.pop(due)
                else:
                    yield submitted.pop(due).result()
        except BrokenProcessPool as error:
            self._executor = None
            executor.shutdown(wait=False, cancel_futures=True)
            raise RuntimeError(
                "a fold process died (killed, or out of memory?); the worker starts new ones "
                "for its next trial"
            ) from error
        finally:
            running = [future for future in submitted.values() if not future.done()]
            if running and self._executor is not None:
                self._abandon.set()
                wait(running)
                self._abandon.clear()

    def start(self) -> ProcessPoolExecutor:
        """Start the processes, unless they run already; they import torch and unpickle the
        data meanwhile, while the worker goes on."""
        if self._executor is not None:
            return self._executor
        self._abandon.clear()
        self._executor = ProcessPoolExecutor(
            self.processes,
            mp_context=self._context,
            initializer=_start_fold_process,
            initargs=self._initargs,
        )
        # The executor starts a process per task while none is idle: one task each starts
        # them all now rather than one by one as folds arrive.
        for _ in range(self.processes):
            self._executor.submit(int)
        return self._executor

    def _wait_for(
        self, future: Future[FoldResult], should_stop: Callable[[], bool] | None
    ) -> None:
        while not future.done():
            if should_stop is not None and should_stop():
                raise WorkerStopped
            wait([future], timeout=STOP_POLL_SECONDS, return_when=FIRST_COMPLETED)


@dataclasses.dataclass
class _FoldProcess:
    """What a fold process keeps between folds."""

    data: DataSplits
    threads: int
    abandon: Any  # a multiprocessing Event


_process: _FoldProcess | None = None


def _start_fold_process(data: DataSplits, threads: int, abandon: Any, worker_pid: int) -> None:
    global _process
    # Ctrl-C reaches every process of the terminal's group; the worker decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _process = _FoldProcess(data, threads, abandon)
    threading.Thread(target=_exit_with_worker, args=(worker_pid,), daemon=True).start()


def _exit_with_worker(worker_pid: int) -> None:
    # A worker killed outright (SIGKILL, out of memory) cannot stop its fold processes; they
    # notice that their parent is gone and exit.
    while os.getppid() == worker_pid:
        time.sleep(1.0)
    os._exit(0)


def _fit_fold(
    net: Any, fold: int, train: np.ndarray, test: np.ndarray, scoring: str | Sequence[str]
) -> FoldResult:
    assert _process is not None, "a fold process runs _start_fold_process first"
    if _process.abandon.is_set():
        raise WorkerStopped
    return fit_and_score_fold(
        net, _process.data, fold, train, test, scoring, _process.threads, _process.abandon.is_set
    )
