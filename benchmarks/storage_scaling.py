"""How far one storage carries many workers: trials per second and storage overhead per trial.

Every worker is a real process running hpo's own worker loop (claim lock, heartbeat, budget
count, tell) around a trivial objective that only draws the spec's parameters, so all the time
measured is hpo + Optuna + the database. Two parts:

1. 1, 2, 4 and 8 workers on SQLite, PostgreSQL and the gRPC proxy in front of PostgreSQL:
   trials/s for the whole study, and the overhead per trial (wall time × workers / trials).
2. One worker, one study growing to --grow-to trials: the time per trial at 100, 1,000 and
   10,000 trials (the claim counts the study's trials, so this shows what that costs).

    python benchmarks/storage_scaling.py                          # everything, ~15 min on 2 cores
    python benchmarks/storage_scaling.py --trials 100 --grow-to 1000   # a quick look

PostgreSQL comes from HPO_TEST_POSTGRES_URL or scripts/postgres.sh (started if needed).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from hpo.service.storage import open_storage
from hpo.service.study import register_study
from hpo.service.worker import run_worker
from hpo.spec.spaces import suggest
from hpo.spec.study_spec import parse_spec

REPO = Path(__file__).resolve().parents[1]
#: Claims that stepped back (no claim lock through the gRPC proxy), per storage URL.
SURPLUS: dict[str, int] = {}


#: The benchmark's search space: two parameters, so a trial's suggest and tell are real.
SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1, "log": True},
    "batch_size": {"type": "int", "low": 1, "high": 10},
}


def trivial_objective(trial: optuna.Trial, should_stop: Callable[[], bool]) -> float:
    """A trial that trains nothing: the storage's and the worker loop's cost alone."""
    params = suggest(trial, make_spec("space", 1).space)
    return float(params["lr"] + params["batch_size"])


def make_spec_raw(name: str, trials: int) -> dict[str, Any]:
    return {
        "name": name,
        "model": "mlp",
        "dataset": {"name": "digits"},
        "sampler": {"name": "random", "seed": 0},
        "scoring": "accuracy",
        "budget": {"trials": trials},
        "space": SPACE,
    }


@functools.cache
def make_spec(name: str, trials: int) -> Any:
    return parse_spec(make_spec_raw(name, trials))


def _worker(url: str, name: str, index: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_worker(name, url, worker_index=index, threads=1, device="cpu", objective=trivial_objective)


def run_study(url: str, workers: int, trials: int) -> float:
    """Seconds from the first trial's start to the last trial's end, ``workers`` processes
    sharing a ``trials``-trial study on ``url`` (process start-up and imports excluded)."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    register_study(make_spec(name, trials), open_storage(url))
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(url, name, i)) for i in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    finished = optuna.load_study(study_name=name, storage=open_storage(url)).trials
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == trials, f"{len(complete)} trials complete, expected {trials}"
    SURPLUS[url] = SURPLUS.get(url, 0) + len(finished) - len(complete)
    first = min(t.datetime_start for t in complete if t.datetime_start)
    last = max(t.datetime_complete for t in complete if t.datetime_complete)
    return (last - first).total_seconds()


@contextmanager
def postgres_database() -> Iterator[str]:
    base = (
        os.environ.get("HPO_TEST_POSTGRES_URL")
        or subprocess.run(
            ["bash", str(REPO / "scripts" / "postgres.sh"), "start"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    name = f"hpo_bench_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))


@contextmanager
def grpc_proxy(database_url: str) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpo",
            "storage-proxy",
            "--storage",
            database_url,
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"grpc://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                optuna.get_all_study_summaries(open_storage(url))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield url
    finally:
        proxy.terminate()
        proxy.wait()


@contextmanager
def storage(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/bench.db"
    elif kind == "postgresql":
        with postgres_database() as url:
            yield url
    else:
        with postgres_database() as url, grpc_proxy(url) as proxy_url:
            yield proxy_url


def scaling(kinds: list[str], worker_counts: list[int], trials: int) -> None:
    print(f"\n## Workers ({trials} trials per study, trivial objective)\n")
    print("| storage | workers | seconds | trials/s | overhead ms/trial | surplus claims |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind in kinds:
        for workers in worker_counts:
            with storage(kind) as url:
                busy = run_study(url, workers, trials)
                surplus = SURPLUS.get(url, 0)
            print(
                f"| {kind} | {workers} | {busy:.1f} | {trials / busy:.1f} | "
                f"{1000 * busy * workers / trials:.1f} | {surplus} |",
                flush=True,
            )


def growth(kinds: list[str], grow_to: int) -> None:
    checkpoints = [n for n in (100, 1_000, 10_000, 100_000) if n <= grow_to]
    print(f"\n## One study growing to {grow_to} trials (1 worker)\n")
    print("| storage | " + " | ".join(f"ms/trial near {n}" for n in checkpoints) + " |")
    print("| --- |" + " ---: |" * len(checkpoints))
    for kind in kinds:
        cells = []
        with storage(kind) as url:
            name = f"grow-{uuid.uuid4().hex[:8]}"
            store = open_storage(url)
            register_study(make_spec(name, grow_to), store)
            study = optuna.load_study(study_name=name, storage=store)
            done = 0
            for checkpoint in checkpoints:
                # fill up to just below the checkpoint quickly, then time 50 trials there
                fill = max(0, checkpoint - 50 - done)
                if fill:
                    study.add_trials(
                        [
                            optuna.trial.create_trial(
                                params={"lr": 0.5, "batch_size": 1},
                                distributions={
                                    "lr": optuna.distributions.FloatDistribution(0, 1),
                                    "batch_size": optuna.distributions.IntDistribution(1, 10),
                                },
                                value=1.5,
                            )
                            for _ in range(fill)
                        ]
                    )
                    done += fill
                budget = done + 50
                timed = run_worker_in_process(url, name, budget)
                done = budget
                cells.append(f"{1000 * timed / 50:.1f}")
        print(f"| {kind} | " + " | ".join(cells) + " |", flush=True)


def run_worker_in_process(url: str, name: str, budget: int) -> float:
    """Run one worker up to ``budget`` trials; seconds its new trials took, start-up excluded."""
    store = open_storage(url)
    before = len(optuna.load_study(study_name=name, storage=store).trials)
    run_worker(
        name,
        url,
        trials=budget,
        worker_index=0,
        threads=1,
        device="cpu",
        objective=trivial_objective,
    )
    new = optuna.load_study(study_name=name, storage=store).trials[before:]
    first = min(t.datetime_start for t in new if t.datetime_start)
    last = max(t.datetime_complete for t in new if t.datetime_complete)
    return (last - first).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storages", default="sqlite,postgresql,grpc")
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--grow-to", type=int, default=10_000)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kinds = args.storages.split(",")
    print(
        f"# Storage scaling on {platform.node()}: {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"optuna {optuna.__version__}"
    )
    scaling(kinds, [int(w) for w in args.workers.split(",")], args.trials)
    growth([k for k in kinds if k != "grpc"], args.grow_to)


if __name__ == "__main__":
    main()
