"""Fold processes score folds exactly as the worker does, stop when told, and die with it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from conftest import tiny_spec, wait_for_running_trial
from optuna.trial import TrialState

from hpo.engine.build import build_net
from hpo.engine.data import DataSplits, load_dataset
from hpo.engine.folds.fold import FoldResult, WorkerStopped
from hpo.engine.folds.plan import FoldOptions, FoldPlan
from hpo.engine.folds.processes import FoldPool, open_fold_pool
from hpo.engine.objective import evaluate, make_folds
from hpo.service.storage import open_storage
from hpo.service.study import register_study
from hpo.service.worker import run_worker
from hpo.spec.objectives import scorers
from hpo.spec.study_spec import StudySpec, parse_spec

pytestmark = pytest.mark.slow  # fold processes and worker processes

DIGITS = tiny_spec(
    cv={"folds": 3, "shuffle": True, "seed": 0},
    fixed={"max_epochs": 4, "batch_size": 64, "module__dropout": 0.2},
)
#: How far two fits of the same fold may score apart when float rounding differs (another
#: process, another thread count): MSEs of 0.53 were seen 6e-8 apart.
ROUNDING = 1e-5

REGRESSION = tiny_spec(
    model="regressor",
    dataset={"name": "synthetic_regression"},
    scoring="neg_mean_squared_error",
    cv={"folds": 3, "shuffle": True, "seed": 1},
    fixed={"max_epochs": 3, "batch_size": 16, "optimizer": "sgd"},
    space={"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
)


@pytest.fixture(scope="module")
def digits() -> Iterator[tuple[FoldPool, StudySpec, DataSplits]]:
    spec, data = parse_spec(DIGITS), load_dataset("digits")
    with FoldPool(data, processes=2, threads=1) as pool:
        yield pool, spec, data


def results_of(
    pool: FoldPool,
    spec: StudySpec,
    data: DataSplits,
    params: dict,
    splits: list[tuple[np.ndarray, np.ndarray]],
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[FoldResult]:
    """The pool's results for the net of ``params``, every fold in a fold process."""
    net = build_net(spec, data, params, "cpu")
    return pool.fold_results(net, data, splits, scorers(spec), should_stop, fit_here=False)


def scored_trial(
    spec: StudySpec, data: DataSplits, params: dict, pool: FoldPool | None
) -> optuna.trial.FrozenTrial:
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(params)
    trial = study.ask()
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the thread count of each fold process
    # with the pool, its processes and the worker fit 3 folds at once; without, one by one
    options = FoldOptions(folds_at_once=1 if pool is None else pool.processes + 1)
    try:
        study.tell(trial, evaluate(trial, spec, data, "cpu", pool=pool, options=options))
    finally:
        torch.set_num_threads(before)
    return study.trials[0]


@pytest.mark.parametrize(
    "params",
    [
        {"module__hidden1": 24, "lr": 0.02},
        {"module__hidden1": 12, "lr": 0.005, "early_stopping_patience": 1, "max_epochs": 30},
    ],
)
def test_folds_in_processes_score_as_in_the_worker(
    digits: tuple[FoldPool, StudySpec, DataSplits], params: dict
) -> None:
    pool, spec, data = digits
    here = scored_trial(spec, data, params, pool=None)
    there = scored_trial(spec, data, params, pool=pool)
    assert there.user_attrs["folds_plan"] == "3 folds at once (2 fold processes), 1 thread each"
    assert here.user_attrs["folds_plan"] == "folds one by one, 1 thread"
    # Same net, seed, rows and thread count; but another process may pick other kernels
    # (seen on Intel Xeon: scores 6e-8 apart), so float rounding is allowed for.
    np.testing.assert_allclose(
        there.user_attrs["fold_scores"], here.user_attrs["fold_scores"], rtol=ROUNDING
    )
    assert there.user_attrs["epochs"] == here.user_attrs["epochs"]
    assert there.value == pytest.approx(here.value, rel=ROUNDING)
    assert there.user_attrs["threads"] == 1
    assert there.intermediate_values == pytest.approx(here.intermediate_values, rel=ROUNDING)


def test_regression_folds_match_and_a_diverging_fold_raises_its_reason() -> None:
    spec, data = parse_spec(REGRESSION), load_dataset("synthetic_regression")
    with FoldPool(data, processes=2, threads=1) as pool:
        params = {"lr": 0.004}
        here = scored_trial(spec, data, params, pool=None)
        there = scored_trial(spec, data, params, pool=pool)
        np.testing.assert_allclose(
            there.user_attrs["fold_scores"], here.user_attrs["fold_scores"], rtol=ROUNDING
        )

        splits = list(make_folds(spec).split(data.X_train, data.y_train))
        with pytest.raises(FloatingPointError, match="diverged"):
            list(results_of(pool, spec, data, {**spec.fixed, "lr": 1e7}, splits))
        # the pool goes on with the next trial
        assert len(list(results_of(pool, spec, data, {**spec.fixed, "lr": 0.004}, splits))) == 3


def long_and_short_splits(data: DataSplits) -> list[tuple[np.ndarray, np.ndarray]]:
    """A fold that trains on 16 rows, then two that train on all 1000 (minutes each)."""
    rows = np.arange(len(data.X_train))
    return [(rows[:16], rows[16:32]), (rows, rows[:50]), (rows, rows[:50])]


LONG = {"module__hidden1": 16, "lr": 0.01, "batch_size": 2, "max_epochs": 2000}


def test_closing_a_trial_early_stops_the_folds_still_running(
    digits: tuple[FoldPool, StudySpec, DataSplits],
) -> None:
    pool, spec, data = digits
    results = results_of(pool, spec, data, {**spec.fixed, **LONG}, long_and_short_splits(data))
    first = next(results)  # fold 1, a fit of minutes, is running beside it by now
    assert first.epochs == LONG["max_epochs"]
    started = time.monotonic()
    results.close()  # what a pruned trial does
    # An abandoned fold stops at its next batch (milliseconds); finishing it would take
    # minutes.
    assert time.monotonic() - started < 30
    nothing = results_of(pool, spec, data, {**spec.fixed, "max_epochs": 2}, [])
    assert [r.epochs for r in nothing] == []
    quick = results_of(
        pool, spec, data, {**spec.fixed, "max_epochs": 2}, long_and_short_splits(data)[:1]
    )
    assert [r.epochs for r in quick] == [2]


def test_a_stop_request_ends_the_trial_with_worker_stopped(
    digits: tuple[FoldPool, StudySpec, DataSplits],
) -> None:
    pool, spec, data = digits
    asked: list[float] = []

    def should_stop() -> bool:
        asked.append(time.monotonic())
        return len(asked) > 3

    with pytest.raises(WorkerStopped):
        list(
            results_of(
                pool,
                spec,
                data,
                {**spec.fixed, **LONG},
                long_and_short_splits(data)[1:],
                should_stop,
            )  # fmt: skip
        )
    assert asked[-1] - asked[0] < 30


def test_a_killed_fold_process_fails_the_trial_and_the_next_trial_gets_new_ones() -> None:
    spec, data = parse_spec(DIGITS), load_dataset("digits")
    others = {child.pid for child in multiprocessing.active_children()}
    with FoldPool(data, processes=2, threads=1) as pool:
        results = results_of(
            pool, spec, data, {**spec.fixed, **LONG}, long_and_short_splits(data)[1:]
        )
        # (the executor starts its processes one by one: on a loaded machine the second may
        # not be up yet)
        deadline = time.monotonic() + 60
        while True:
            mine = [c.pid for c in multiprocessing.active_children() if c.pid not in others]
            if len(mine) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(mine) == 2
        # killed while both folds run (an out-of-memory kill looks the same)
        killer = threading.Timer(2.0, os.kill, (mine[0], signal.SIGKILL))
        killer.start()
        with pytest.raises(RuntimeError, match="fold process died"):
            next(results)
        killer.join()
        quick = {**spec.fixed, "max_epochs": 2, "module__hidden1": 8, "lr": 0.01}
        splits = list(make_folds(spec).split(data.X_train, data.y_train))
        assert [r.epochs for r in results_of(pool, spec, data, quick, splits)] == [2, 2, 2]


def test_a_worker_opens_the_fold_processes_its_plan_asks_for() -> None:
    data = load_dataset("digits")
    assert open_fold_pool(data, FoldPlan("stacked", threads=2)) is None
    pool = open_fold_pool(data, FoldPlan("fold processes", threads=1, at_once=2))
    assert pool is not None and pool.processes == 1 and pool.threads == 1
    pool.close()


def test_without_process_support_the_worker_fits_its_folds_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_semaphores() -> None:
        raise OSError(38, "Function not implemented")  # what a platform without sem_open says

    monkeypatch.setattr(multiprocessing.get_context("spawn"), "Event", no_semaphores)
    spec = parse_spec(DIGITS)
    plan = FoldPlan("fold processes", threads=1, at_once=2)
    assert open_fold_pool(load_dataset("digits"), plan) is None
    assert "cannot start fold processes" in caplog.text
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    register_study(spec, open_storage(url))
    summary = run_worker(
        spec.name, url, worker_index=0, heartbeat_seconds=0, threads=2, folds_at_once=2
    )
    assert summary.states == {"COMPLETE": spec.budget.trials}


def test_a_worker_with_a_fold_process_scores_as_one_fitting_its_folds_one_by_one(
    tmp_path: Path,
) -> None:
    spec = parse_spec(DIGITS)
    values = {}
    for threads in (1, 2):
        url = f"sqlite:///{tmp_path / f'threads{threads}.db'}"
        register_study(spec, open_storage(url))
        summary = run_worker(
            spec.name,
            url,
            worker_index=0,
            heartbeat_seconds=0,
            threads=threads,
            device="cpu",
            folds_at_once=threads,
            stack_folds=False,
        )
        assert summary.states == {"COMPLETE": spec.budget.trials}
        trials = optuna.load_study(study_name=spec.name, storage=url).trials
        values[threads] = [(t.params, t.user_attrs["fold_scores"]) for t in trials]
        assert {t.user_attrs["threads"] for t in trials} == {1}
    for (params_2, scores_2), (params_1, scores_1) in zip(values[2], values[1], strict=True):
        assert params_2 == params_1  # the same sampler seed draws the same configurations
        np.testing.assert_allclose(scores_2, scores_1, rtol=ROUNDING)


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def start_worker_with_fold_processes(tmp_path: Path) -> tuple[subprocess.Popen[str], str, str]:
    """An ``hpo worker`` on two threads (so one fold process) whose first trial is running."""
    long_fits = {"batch_size": LONG["batch_size"], "max_epochs": LONG["max_epochs"]}
    spec = parse_spec({**DIGITS, "fixed": {**DIGITS["fixed"], **long_fits}})
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    register_study(spec, open_storage(url))
    worker = subprocess.Popen(
        [sys.executable, "-m", "hpo", "worker", "--study", spec.name, "--storage", url]
        + ["--threads", "2", "--folds-at-once", "2", "--index", "0", "--heartbeat", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_running_trial(spec.name, url, timeout=120, worker=worker)
    time.sleep(1.0)  # the folds are fitting now
    return worker, spec.name, url


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
def test_sigterm_stops_the_worker_and_its_fold_processes_and_requeues_the_trial(
    tmp_path: Path,
) -> None:
    worker, name, url = start_worker_with_fold_processes(tmp_path)
    fold_pids = children_of(worker.pid)
    assert fold_pids  # the fold process (and multiprocessing's resource tracker)
    worker.send_signal(signal.SIGTERM)
    log = worker.communicate(timeout=60)[0]
    assert worker.returncode == 0, log
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert "SIGTERM" in trials[0].user_attrs["fail_reason"]
    assert not [pid for pid in fold_pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
def test_fold_processes_exit_when_their_worker_is_killed(tmp_path: Path) -> None:
    worker, _, _ = start_worker_with_fold_processes(tmp_path)
    try:
        fold_pids = children_of(worker.pid)
        assert fold_pids  # the fold process (and multiprocessing's resource tracker)
    finally:
        worker.kill()
        worker.communicate()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in fold_pids):
        assert time.monotonic() < deadline, "fold processes outlived their worker"
        time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return False
