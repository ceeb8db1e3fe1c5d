"""How far one storage carries many workers: trials per second and storage overhead per trial.

Every worker is a real process running hpo's own worker loop (claim lock, heartbeat, budget
count, tell) around a trivial objective that only draws the spec's parameters, so all the time
measured is hpo + Optuna + the database. Two parts:

1. 1, 2, 4 and 8 workers on SQLite, PostgreSQL and the gRPC proxy in front of PostgreSQL:
   trials/s for the whole study, and the overhead per trial (wall time × workers / trials).
   Beside each, plain Optuna on a fresh storage of the same kind: as many processes, each
   ``optuna.load_study(...).optimize`` of the same trivial objective with a ``RandomSampler``
   (as the spec's) and ``MaxTrialsCallback`` for the shared budget, as a user writes it; the
   ratio is hpo's overhead per trial over Optuna's. Each pair runs --repeats times, the order
   alternating, and the table gives medians.
2. One worker, one study growing to --grow-to trials: the time per trial at 100, 1,000 and
   10,000 trials (the claim counts the study's trials, so this shows what that costs).

    python benchmarks/storage_scaling.py                  # everything (the plain Optuna runs
                                                          # about double the first part)
    python benchmarks/storage_scaling.py --trials 100 --grow-to 1000   # a quick look
    python benchmarks/storage_scaling.py --storages sqlite,postgresql --workers 1,2 \
        --trials 200 --repeats 3 --grow-to 0       # docs/benchmarks.md's run, ~7 min on 2 cores
    python benchmarks/storage_scaling.py --quick    # a smoke run: SQLite, 2 workers, 20
                                                    # trials, a study grown to 100

PostgreSQL comes from HPO_TEST_POSTGRES_URL or scripts/postgres.sh (started if needed).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import platform
import socket
import statistics
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


def _plain_worker(url: str, name: str, index: int, trials: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=name, storage=url, sampler=optuna.samplers.RandomSampler(seed=index)
    )
    budget = optuna.study.MaxTrialsCallback(trials, states=(optuna.trial.TrialState.COMPLETE,))
    study.optimize(lambda trial: trivial_objective(trial, lambda: False), callbacks=[budget])


def run_plain_optuna(url: str, workers: int, trials: int) -> tuple[float, int]:
    """Seconds from the first trial's start to the last trial's end, and the trials completed,
    ``workers`` processes of plain Optuna sharing a ``trials``-trial budget on ``url`` (the
    callback stops each process after a trial, so a few more than ``trials`` may complete)."""
    name = f"plain-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=url)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_plain_worker, args=(url, name, i, trials)) for i in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    codes = [process.exitcode for process in processes]
    assert codes == [0] * workers, f"plain Optuna processes exited with {codes}"
    finished = optuna.load_study(study_name=name, storage=url).trials
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= trials, f"{len(complete)} trials complete, expected {trials}"
    return _span(complete), len(complete)


def _span(trials: list[optuna.trial.FrozenTrial]) -> float:
    first = min(t.datetime_start for t in trials if t.datetime_start)
    last = max(t.datetime_complete for t in trials if t.datetime_complete)
    return (last - first).total_seconds()


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
    codes = [process.exitcode for process in processes]
    assert codes == [0] * workers, f"hpo workers exited with {codes}"
    finished = optuna.load_study(study_name=name, storage=open_storage(url)).trials
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == trials, f"{len(complete)} trials complete, expected {trials}"
    SURPLUS[url] = SURPLUS.get(url, 0) + len(finished) - len(complete)
    return _span(complete)


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


def scaling(kinds: list[str], worker_counts: list[int], trials: int, repeats: int) -> None:
    """Per storage kind and worker count, hpo's worker loop and plain Optuna, each on a fresh
    storage, ``repeats`` times in alternating order; the table gives the medians, and the
    range of the ratio over the repeats (each repeat's pair ran back to back)."""
    print(f"\n## Workers ({trials} trials per study, trivial objective, medians of {repeats})\n")
    print(
        "| storage | workers | seconds | trials/s | overhead ms/trial | surplus claims "
        "| plain Optuna ms/trial | hpo / Optuna (range) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ratios = []
    for kind in kinds:
        for workers in worker_counts:
            hpo_s: list[float] = []
            optuna_ms: list[float] = []
            surplus = 0
            for repeat in range(repeats):
                ways = ["hpo", "optuna"] if repeat % 2 == 0 else ["optuna", "hpo"]
                for way in ways:
                    with storage(kind) as url:
                        if way == "hpo":
                            hpo_s.append(run_study(url, workers, trials))
                            surplus += SURPLUS.get(url, 0)
                        else:
                            busy, done = run_plain_optuna(url, workers, trials)
                            optuna_ms.append(1000 * busy * workers / done)
            busy = statistics.median(hpo_s)
            overhead = 1000 * busy * workers / trials
            plain = statistics.median(optuna_ms)
            pairs = zip(hpo_s, optuna_ms, strict=True)
            paired = [1000 * s * workers / trials / o for s, o in pairs]
            ratios.append(overhead / plain)
            print(
                f"| {kind} | {workers} | {busy:.1f} | {trials / busy:.1f} | {overhead:.1f} | "
                f"{surplus} | {plain:.1f} | {overhead / plain:.2f}× "
                f"({min(paired):.2f}–{max(paired):.2f}) |",
                flush=True,
            )
    print(f"\nhpo / Optuna, median over the rows above: {statistics.median(ratios):.2f}×")


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
            filler = drawn_trial()
            done = 0
            for checkpoint in checkpoints:
                # fill up to just below the checkpoint quickly, then time 50 trials there
                fill = max(0, checkpoint - 50 - done)
                if fill:
                    study.add_trials([filler] * fill)
                    done += fill
                budget = done + 50
                timed = run_worker_in_process(url, name, budget)
                done = budget
                cells.append(f"{1000 * timed / 50:.1f}")
        print(f"| {kind} | " + " | ".join(cells) + " |", flush=True)


def drawn_trial() -> optuna.trial.FrozenTrial:
    """A finished trial drawn from ``SPACE`` as the workers draw theirs (a filler trial of
    other distributions would make every later trial fail)."""
    study = optuna.create_study()
    study.optimize(lambda trial: trivial_objective(trial, lambda: False), n_trials=1)
    return study.trials[0]


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
    complete = [t for t in new if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == budget - before, f"{len(complete)} of {budget - before} complete"
    return _span(complete)


DEFAULTS: dict[str, Any] = {
    "storages": "sqlite,postgresql,grpc",
    "workers": "1,2,4,8",
    "trials": 400,
    "grow_to": 10_000,
    "repeats": 1,
}
#: ``--quick``: the same code path at its smallest (SQLite only; both parts).
QUICK: dict[str, Any] = {
    **DEFAULTS,
    "storages": "sqlite",
    "workers": "2",
    "trials": 20,
    "grow_to": 100,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storages", help="comma-separated (default sqlite,postgresql,grpc)")
    parser.add_argument("--workers", help="comma-separated counts (default 1,2,4,8)")
    parser.add_argument("--trials", type=int, help="per study (default 400)")
    parser.add_argument("--grow-to", type=int, help="default 10000; under 100: no growth part")
    parser.add_argument("--repeats", type=int, help="of each hpo / Optuna pair (default 1)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: SQLite, 2 workers, 20 trials, 1 repeat, a study grown to 100; "
        "the options above still apply",
    )
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kinds = args.storages.split(",")
    print(
        f"# Storage scaling on {platform.node()}: {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"optuna {optuna.__version__}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    scaling(kinds, [int(w) for w in args.workers.split(",")], args.trials, args.repeats)
    if args.grow_to >= 100:
        growth([k for k in kinds if k != "grpc"], args.grow_to)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
