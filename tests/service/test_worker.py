"""Real worker processes on real SQLite and PostgreSQL storages: a shared budget, a grid run
once, failures, SIGTERM, SIGKILL and a database restart."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from conftest import (
    REPO,
    free_port,
    postgres_base_url,
    run_hpo,
    tiny_spec,
    wait_for_running_trial,
)
from optuna.trial import TrialState

from hpo.service.storage import open_storage
from hpo.service.study import register_study
from hpo.spec.study_spec import load_spec

pytestmark = pytest.mark.slow  # every test starts worker processes


def register(path: Path, url: str) -> str:
    spec = load_spec(path)
    register_study(spec, open_storage(url))
    return spec.name


def start_worker(name: str, url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpo",
            "worker",
            "--study",
            name,
            "--storage",
            url,
            "--threads",
            "1",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def states(name: str, url: str) -> Counter[TrialState]:
    study = optuna.load_study(study_name=name, storage=url)
    return Counter(t.state for t in study.get_trials(deepcopy=False))


def test_four_workers_run_exactly_the_studys_budget(
    write_spec: Callable[..., Path], storage_url: str
) -> None:
    name = register(
        write_spec(budget={"trials": 20}, fixed={"max_epochs": 1, "batch_size": 256}), storage_url
    )
    workers = [start_worker(name, storage_url, "--index", str(i)) for i in range(4)]
    logs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0, 0], logs
    assert states(name, storage_url) == {TrialState.COMPLETE: 20}
    # the workers really shared the budget: more than one of them ran trials
    assert sum("COMPLETE" in log for log in logs) >= 2, logs
    # and they did not replay each other's seeded samples
    trials = optuna.load_study(study_name=name, storage=storage_url).trials
    assert len({(t.params["module__hidden1"], t.params["lr"]) for t in trials}) == 20


def test_a_grid_runs_every_point_exactly_once_with_four_workers(
    write_spec: Callable[..., Path], storage_url: str
) -> None:
    space = {
        "module__hidden1": {"type": "int", "low": 8, "high": 24, "step": 8},
        "lr": {"type": "categorical", "choices": [0.01, 0.03, 0.1]},
    }
    name = register(
        write_spec(
            sampler={"name": "grid"},
            budget={},
            space=space,
            fixed={"max_epochs": 1, "batch_size": 256},
        ),
        storage_url,
    )
    workers = [start_worker(name, storage_url, "--index", str(i)) for i in range(4)]
    for w in workers:
        w.communicate(timeout=240)
    trials = optuna.load_study(study_name=name, storage=storage_url).trials
    points = Counter(
        (t.params["module__hidden1"], t.params["lr"])
        for t in trials
        if t.state == TrialState.COMPLETE
    )
    assert points == Counter({(h, lr): 1 for h in (8, 16, 24) for lr in (0.01, 0.03, 0.1)})
    assert len(trials) == 9


def test_a_failing_trial_is_marked_fail_with_its_reason_and_the_worker_goes_on(
    write_spec: Callable[..., Path], storage_url: str
) -> None:
    spec = tiny_spec(
        model="regressor",
        dataset={"name": "synthetic_regression"},
        scoring="neg_mean_squared_error",
        sampler={"name": "grid"},
        budget={},
        fixed={"max_epochs": 3, "batch_size": 16, "optimizer": "sgd"},
        space={"lr": {"type": "categorical", "choices": [1.0e7, 0.01, 1.0e8]}},
    )
    name = register(write_spec(spec), storage_url)
    result = run_hpo("worker", "--study", name, "--storage", storage_url, "--index", "0")
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name=name, storage=storage_url).trials
    by_lr = {t.params["lr"]: t for t in trials}
    assert by_lr[0.01].state == TrialState.COMPLETE
    for lr in (1.0e7, 1.0e8):
        assert by_lr[lr].state == TrialState.FAIL
        assert "diverged" in by_lr[lr].user_attrs["fail_reason"]
    assert "Traceback" not in result.stderr


def test_sigterm_stops_the_worker_and_requeues_its_trial(
    write_spec: Callable[..., Path], storage_url: str
) -> None:
    name = register(
        write_spec(budget={"trials": 2}, fixed={"max_epochs": 2000, "batch_size": 16}), storage_url
    )
    worker = start_worker(name, storage_url, "--index", "0")
    wait_for_running_trial(name, storage_url)
    time.sleep(1.0)
    sent = time.time()
    worker.send_signal(signal.SIGTERM)
    log = worker.communicate(timeout=120)[0]
    assert worker.returncode == 0, log
    # The fit stopped at its next batch, not after its 2000 epochs: the worker logged it
    # within seconds (by its log's clock; the process's exit after it is slow on a busy
    # machine, torch's teardown).
    stopped = re.search(r"^(\S+ \S+) WARNING worker 0: trial 0 stopped by SIGTERM", log, re.M)
    assert stopped, log
    logged = datetime.strptime(stopped.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
    assert logged - sent < 10, log
    trials = optuna.load_study(study_name=name, storage=storage_url).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert "SIGTERM" in trials[0].user_attrs["fail_reason"]
    assert trials[1].params == trials[0].params
    assert "fail_reason" not in trials[1].user_attrs  # the retry has not failed


def test_a_killed_workers_trial_is_detected_by_heartbeat_and_rerun(
    write_spec: Callable[..., Path], storage_url: str
) -> None:
    name = register(
        write_spec(budget={"trials": 3}, fixed={"max_epochs": 150, "batch_size": 32}), storage_url
    )
    victim = start_worker(name, storage_url, "--index", "0", "--heartbeat", "1")
    wait_for_running_trial(name, storage_url)
    time.sleep(1.0)  # let it draw its parameters, so the re-run can be checked against them
    victim.kill()
    victim.communicate()
    running = [
        t.number
        for t in optuna.load_study(study_name=name, storage=storage_url).trials
        if t.state == TrialState.RUNNING
    ]
    assert len(running) == 1  # (the one the worker was killed in, whichever number it has)

    rescuer = start_worker(name, storage_url, "--index", "1", "--heartbeat", "1")
    log = rescuer.communicate(timeout=240)[0]
    assert rescuer.returncode == 0, log
    trials = optuna.load_study(study_name=name, storage=storage_url).trials
    final = Counter(t.state for t in trials)
    assert final[TrialState.COMPLETE] == 3
    assert final[TrialState.RUNNING] == 0
    killed = trials[running[0]]
    assert killed.state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert killed.params
    assert len(retried) == 1 and retried[0].params == killed.params
    assert killed.user_attrs["fail_reason"].startswith("worker gone: no heartbeat for over 2 s")
    assert "fail_reason" not in retried[0].user_attrs


def started_log(worker: subprocess.Popen[str]) -> str:
    """The worker's output up to its start-up line (storage open, data loaded, folds planned)."""
    return log_until(worker, "torch thread")


def log_until(worker: subprocess.Popen[str], text: str) -> str:
    """The worker's output up to the first line holding ``text``."""
    assert worker.stdout is not None
    lines = []
    for line in worker.stdout:
        lines.append(line)
        if text in line:
            return "".join(lines)
    raise AssertionError(f"the worker exited before it logged {text!r}: " + "".join(lines))


@pytest.fixture
def private_postgres() -> Iterator[Callable[[str], str]]:
    """A PostgreSQL cluster of the test's own (``scripts/postgres.sh`` on a free port), which it
    may stop and start while other tests, in other pytest-xdist workers, use the shared one.

    Yields ``postgres(command)``: runs ``scripts/postgres.sh COMMAND`` on it (``url``,
    ``stop``, ``start``) and returns what it printed.
    """
    if postgres_base_url() is None:
        pytest.skip("no PostgreSQL: run `make test` or scripts/postgres.sh start")
    port = free_port()
    environment = {**os.environ, "HPO_PG_PORT": str(port)}

    def postgres(command: str) -> str:
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "postgres.sh"), command],
            capture_output=True,
            text=True,
            timeout=120,
            env=environment,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    postgres("start")
    try:
        yield postgres
    finally:
        postgres("remove")  # stops the server and deletes its folder


def test_workers_ride_out_a_postgresql_outage(
    write_spec: Callable[..., Path], private_postgres: Callable[[str], str]
) -> None:
    url = private_postgres("url")
    name = register(
        write_spec(budget={"trials": 12}, fixed={"max_epochs": 100, "batch_size": 64}), url
    )
    workers = [start_worker(name, url, "--index", str(i), "--heartbeat", "2") for i in range(2)]
    # Both have opened the storage.
    started = [started_log(worker) for worker in workers]
    wait_for_running_trial(name, url)
    # Down for longer than a trial takes, so every worker meets the outage when it tells its
    # result (a restart of a second or two could fall between two writes and go unseen).
    private_postgres("stop")
    stopped = time.monotonic()
    # A worker started while the server is down waits for it (a minute at most) to start;
    # the server comes back once it has found it down (on a busy machine, importing torch
    # alone can take longer than the 5 s outage).
    late = start_worker(name, url, "--index", "2", "--heartbeat", "2")
    late_head = log_until(late, "storage unreachable")
    time.sleep(max(0.0, 5.0 - (time.monotonic() - stopped)))
    private_postgres("start")
    logs = [head + w.communicate(timeout=300)[0] for head, w in zip(started, workers, strict=True)]
    late_log = late_head + late.communicate(timeout=300)[0]
    assert [w.returncode for w in workers] == [0, 0], logs
    assert late.returncode == 0 and "storage unreachable" in late_log, late_log
    final = states(name, url)
    assert final[TrialState.COMPLETE] == 12, (final, logs)
    assert final[TrialState.RUNNING] == 0
    assert any("storage unreachable" in log for log in logs), logs


@pytest.mark.parametrize("sampler", ["random", "grid"])
def test_workers_through_the_grpc_proxy_keep_the_budget(
    write_spec: Callable[..., Path], postgres_url: str, sampler: str
) -> None:
    port = free_port()
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpo",
            "storage-proxy",
            "--storage",
            postgres_url,
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    grpc_url = f"grpc://127.0.0.1:{port}"
    try:
        overrides: dict = {"budget": {"trials": 8}}
        if sampler == "grid":
            overrides = {
                "sampler": {"name": "grid"},
                "budget": {},
                "space": {
                    "module__hidden1": {"type": "int", "low": 8, "high": 32, "step": 8},
                    "lr": {"type": "categorical", "choices": [0.01, 0.1]},
                },
            }
        path = write_spec(fixed={"max_epochs": 1, "batch_size": 256}, **overrides)
        registered = run_hpo("register", str(path), "--storage", grpc_url)
        assert registered.returncode == 0, registered.stderr
        workers = [start_worker("tiny-digits", grpc_url, "--index", str(i)) for i in range(3)]
        logs = [w.communicate(timeout=240)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0, 0], logs
    finally:
        proxy.terminate()
        proxy.communicate(timeout=30)
    trials = optuna.load_study(study_name="tiny-digits", storage=postgres_url).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8
    # anything else is a surplus claim that stepped back, never a second run of a point
    assert all(
        "surplus" in t.user_attrs.get("fail_reason", "")
        for t in trials
        if t.state != TrialState.COMPLETE
    )
    if sampler == "grid":
        assert len({(t.params["module__hidden1"], t.params["lr"]) for t in complete}) == 8


@pytest.mark.slow
def test_a_worker_whose_trials_keep_failing_gives_up_with_a_non_zero_exit(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    url = f"sqlite:///{tmp_path / 'failing.db'}"
    diverging = {"max_epochs": 2, "batch_size": 128, "optimizer": "sgd", "lr": 1.0e12}
    space = {"module__hidden1": {"type": "int", "low": 8, "high": 32}}
    path = write_spec(
        tiny_spec(name="diverges", fixed=diverging, space=space, budget={"trials": 2})
    )
    assert run_hpo("register", str(path), "--storage", url).returncode == 0

    worker = run_hpo("worker", "--study", "diverges", "--storage", url, "--threads", "1")

    assert worker.returncode == 1, worker.stderr
    assert "gave up: stopping: 10 trials failed" in worker.stderr
    assert "Traceback" not in worker.stderr
    trials = optuna.load_study(study_name="diverges", storage=url).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 10


def test_a_worker_whose_trial_another_swept_as_stale_goes_on(
    write_spec: Callable[..., Path], sqlite_url: str
) -> None:
    """Under load a live worker's heartbeat can be late; another worker then fails its trial
    and queues a retry. The first worker must not die on its next write to that trial."""
    from hpo.service.worker import run_worker

    name = register(write_spec(budget={"trials": 2}), sqlite_url)
    storage = open_storage(sqlite_url)
    study_id = storage.get_study_id_from_name(name)
    swept: list[int] = []

    def objective(trial: optuna.Trial, *_: object) -> float:
        if not swept:  # what another worker's sweep does meanwhile
            swept.append(trial.number)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        trial.set_user_attr("fold_scores", [0.5])
        return 0.5

    summary = run_worker(
        name, sqlite_url, worker_index=0, heartbeat_seconds=0, objective=objective
    )
    assert summary.states == Counter({"COMPLETE": 2, "FAIL": 1}) and not summary.gave_up
    trials = optuna.load_study(study_name=name, storage=sqlite_url).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].user_attrs == {}  # nothing of the swept run was written


def test_budget_timeout_is_the_whole_studys_time_not_each_workers(
    write_spec: Callable[..., Path], sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from hpo.service.worker import STARTED_ATTR, run_worker

    caplog.set_level(logging.INFO, logger="hpo")
    name = register(write_spec(budget={"trials": 1000, "timeout": 1.0}), sqlite_url)

    def objective(trial: optuna.Trial, *_: object) -> float:
        time.sleep(0.2)
        return 0.5

    first = run_worker(name, sqlite_url, worker_index=0, heartbeat_seconds=0, objective=objective)
    ran = first.states["COMPLETE"]
    assert 2 <= ran < 1000 and not first.gave_up  # stopped by the clock, not by the budget
    assert "budget.timeout of 1 s has passed" in caplog.text
    study = optuna.load_study(study_name=name, storage=sqlite_url)
    assert study.user_attrs[STARTED_ATTR] <= study.trials[0].datetime_start.timestamp() + 1.0

    # a worker started later (another machine, a restart) finds the study's time spent
    second = run_worker(name, sqlite_url, worker_index=1, heartbeat_seconds=0, objective=objective)
    assert sum(second.states.values()) == 0
    assert len(optuna.load_study(study_name=name, storage=sqlite_url).trials) == ran
