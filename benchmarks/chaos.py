"""A chaos soak: does a study lose or repeat anything when its workers and database are hurt?

Everything is a real process running the real ``hpo`` CLI. For each storage (a SQLite file,
and a private PostgreSQL server started on its own port by ``scripts/postgres.sh``):

1. calm: a grid study (--grid-points, default 100) and a TPE study (--tpe-trials, default
   200) at once, run by --workers ``hpo worker`` processes (``--threads 1 --heartbeat 2``)
   shared out between them, untouched;
2. chaos: the same two studies under new names, each registered by several ``hpo register``
   processes at once (and twice more every fifth signal while workers run), then run by as
   many workers while, every --kill-every seconds (jittered ±50%), a random worker past its
   start-up gets SIGKILL (or, one time in four, SIGTERM) and a replacement starts. Signals
   pause while fewer than half the workers are up (--min-up), so that on a few loaded cores
   the replacements (seconds of CPU each to import torch) still get going. On PostgreSQL
   the server is restarted once, when a third of the chaos grid is done.

Trials are made cheap (an MLP of 8-32 units on digits, 2 epochs, 3 folds: 0.1-0.5 s), so
the soak is about the storage, the claim lock, heartbeats and re-queueing, not training.

When the workers have all exited on their own (or --deadline passes), the study is read
back with Optuna and must pass: COMPLETE + PRUNED equals the budget; nothing RUNNING or
WAITING; every grid point has exactly one COMPLETE/PRUNED trial; every FAIL trial was a
killed or stopped run and has a retry; no worker or registration exited with an error or
printed a traceback; exactly one of the racing registrations created the study. Any failure
is printed and the exit status is 1.

Figures: wall time calm and under chaos (and their ratio), kills, SIGTERMs, restarts,
registrations raced, trials by state, and for the runs that were hit: the seconds from the
signal until the trial was failed and until its retry started (the signal is matched to the
trial by the trial's last heartbeat), and what the PostgreSQL restart cost.

    python benchmarks/chaos.py          # both storages at the defaults
    python benchmarks/chaos.py --grid-points 40 --tpe-trials 80   # ~2 min a storage, 2 quiet cores
    python benchmarks/chaos.py --quick   # a smoke run: SQLite only, 2 workers, 8 + 8 trials,
                                         # 2 signals

PostgreSQL is a private cluster (scripts/postgres.sh with HPO_PG_PORT=--pg-port, default
54341, in a fresh folder), stopped at the end; never the test suite's. Figures and findings:
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import yaml
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
SIGTERM_REASON = "worker stopped by SIGTERM; re-queued"
#: How hpo's stale sweep explains a trial whose worker stopped beating (older hpo: no reason).
STALE_REASON = "worker gone: no heartbeat"
#: The line a worker logs once past its start-up (torch imported, data loaded, plan made);
#: hpo/service/worker.py's "started on %s: %s".
STARTED = "started on {study}: "


def signal_reason(reason: str | None) -> bool:
    """Whether a FAIL trial's reason is a worker that was stopped or went away."""
    return reason is None or reason == SIGTERM_REASON or reason.startswith(STALE_REASON)


# ----------------------------------------------------------------------------- the studies


def grid_choices(points: int) -> dict[str, list[Any]]:
    """2 widths x 2 batch sizes x enough learning rates for at least ``points`` points."""
    n_lr = max(1, math.ceil(points / 4))
    lrs = sorted({float(f"{x:.3g}") for x in _logspace(1e-3, 1e-1, n_lr)})
    while len(lrs) < n_lr:  # rounding merged two: spread them wider
        lrs = sorted({float(f"{x:.4g}") for x in _logspace(1e-3, 3e-1, n_lr)})
    return {"module__hidden1": [8, 16], "batch_size": [128, 256], "lr": lrs}


def _logspace(low: float, high: float, n: int) -> list[float]:
    if n == 1:
        return [low]
    return [low * (high / low) ** (i / (n - 1)) for i in range(n)]


def grid_spec(name: str, points: int) -> dict[str, Any]:
    choices = grid_choices(points)
    return {
        "name": name,
        "model": "mlp",
        "dataset": {"name": "digits"},
        "sampler": {"name": "grid"},
        "scoring": "accuracy",
        "cv": {"folds": 3, "shuffle": True, "seed": 0},
        "fixed": {"max_epochs": 2, "module__hidden2": 8},
        "space": {k: {"type": "categorical", "choices": v} for k, v in choices.items()},
    }


def tpe_spec(name: str, trials: int) -> dict[str, Any]:
    return {
        "name": name,
        "model": "mlp",
        "dataset": {"name": "digits"},
        "sampler": {"name": "tpe", "seed": 0},
        "pruner": {"name": "median"},
        "scoring": "accuracy",
        "cv": {"folds": 3, "shuffle": True, "seed": 0},
        "budget": {"trials": trials},
        "fixed": {"max_epochs": 2},
        "space": {
            "module__hidden1": {"type": "int", "low": 8, "high": 32, "log": True},
            "module__hidden2": {"type": "int", "low": 4, "high": "module__hidden1", "log": True},
            "lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
            "batch_size": {"type": "categorical", "choices": [64, 128, 256]},
        },
    }


def expected_grid(spec: dict[str, Any]) -> list[tuple[tuple[str, Any], ...]]:
    keys = sorted(spec["space"])
    values = [spec["space"][k]["choices"] for k in keys]
    return [tuple(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


# ----------------------------------------------------------------------------- processes


def hpo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpo", *args]


@dataclass
class Signal:
    at: float  # time.time()
    kind: str  # "KILL" or "TERM"
    pid: int


@dataclass
class Phase:
    """One study of a run: its spec, and what happened to it."""

    backend: str
    study: str
    kind: str  # "grid" or "tpe"
    chaos: bool
    budget: int
    spec: dict[str, Any]
    wall: float = 0.0  # from the workers' start until the study's last worker exited
    signals: list[Signal] = field(default_factory=list)
    workers_started: int = 0
    registrations: int = 0
    created: int = 0
    restarts: list[tuple[float, float]] = field(default_factory=list)  # (start, end) time()
    states: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    detect: list[float] = field(default_factory=list)  # signal -> trial FAIL, s
    pickup: list[float] = field(default_factory=list)  # signal -> retry started, s
    restart_fails: int = 0
    restart_gap: float | None = None  # restart start -> next trial finished, s


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path
    phase: Phase
    up: bool = False
    signalled: str = ""  # "KILL" or "TERM" once we sent it


class Fleet:
    """The worker processes of a run, each logging to a file of its own."""

    def __init__(self, env: dict[str, str], logs: Path, heartbeat: float) -> None:
        self.env, self.logs, self.heartbeat = env, logs, heartbeat
        self.live: dict[int, Worker] = {}
        self.exited: list[Worker] = []
        self.index = itertools.count()

    def start(self, phase: Phase) -> None:
        index = next(self.index)
        log = self.logs / f"{phase.study}-worker-{index}.log"
        command = hpo_command(
            "worker",
            "--study",
            phase.study,
            "--threads",
            "1",
            "--heartbeat",
            f"{self.heartbeat:g}",
            "--device",
            "cpu",
            "--index",
            str(index),
        )
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                command, env=self.env, stdout=handle, stderr=subprocess.STDOUT
            )
        self.live[process.pid] = Worker(process, log, phase)
        phase.workers_started += 1

    def reap(self) -> list[Worker]:
        gone = [w for w in self.live.values() if w.process.poll() is not None]
        for worker in gone:
            del self.live[worker.process.pid]
            self.exited.append(worker)
        return gone

    def serving(self, phase: Phase) -> int:
        return sum(w.phase is phase for w in self.live.values())

    def ready(self, phases: list[Phase]) -> list[Worker]:
        """Live workers of ``phases`` past their start-up (torch imported, data loaded):
        those that have logged their plan (``STARTED``). Hurting a worker that is still
        starting costs only the CPU of its restart, and on a few cores a replacement every few
        seconds would never get going."""
        for worker in self.live.values():
            if not worker.up:
                started = STARTED.format(study=worker.phase.study)
                worker.up = started in worker.log.read_text("utf-8", "replace")
        return [w for w in self.live.values() if w.up and not w.signalled and w.phase in phases]

    def hurt(self, worker: Worker, kind: str) -> None:
        os.kill(worker.process.pid, signal.SIGTERM if kind == "TERM" else signal.SIGKILL)
        worker.signalled = kind
        worker.phase.signals.append(Signal(time.time(), kind, worker.process.pid))

    def stop_all(self) -> None:
        for worker in self.live.values():
            worker.process.kill()
        for worker in self.live.values():
            worker.process.wait()
        self.reap()

    def check(self) -> None:
        """A worker nobody signalled must exit 0, and no worker may print a traceback."""
        for worker in self.exited:
            text = worker.log.read_text("utf-8", "replace")
            code = worker.process.returncode
            if "Traceback" in text or (not worker.signalled and code != 0):
                tail = "\n    ".join(text.strip().splitlines()[-6:])
                worker.phase.problems.append(
                    f"worker pid {worker.process.pid} exited {code}"
                    f"{' after our SIG' + worker.signalled if worker.signalled else ''}"
                    f" ({worker.log}); its log ends:\n    {tail}"
                )


def register(
    spec_file: Path, env: dict[str, str], copies: int, logs: Path, tag: str
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """Start ``copies`` ``hpo register`` processes of one file at once (not waited for)."""
    started = []
    for i in range(copies):
        log = logs / f"register-{tag}-{i}.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                hpo_command("register", str(spec_file)),
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        started.append((process, log))
    return started


def collect_registrations(
    phase: Phase, started: list[tuple[subprocess.Popen[bytes], Path]]
) -> None:
    for process, log in started:
        code = process.wait(timeout=600)
        text = log.read_text("utf-8", "replace")
        phase.registrations += 1
        if any(line.startswith("registered ") for line in text.splitlines()):
            phase.created += 1
        elif code != 0 or "Traceback" in text or "already registered with this spec" not in text:
            phase.problems.append(f"hpo register exited {code} ({log}): {text.strip()[-800:]}")


# ----------------------------------------------------------------------------- PostgreSQL


class Postgres:
    """A private server on its own port and folder, so that its restart hurts no one else."""

    def __init__(self, port: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="hpo-chaos-pg-")
        os.chmod(self.dir, 0o700)
        self.env = {**os.environ, "HPO_PG_PORT": str(port), "HPO_PG_DIR": self.dir}
        self.url = ""

    def _script(self, command: str) -> str:
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "postgres.sh"), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"scripts/postgres.sh {command} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def start(self) -> str:
        self.url = self._script("start").splitlines()[-1]
        return self.url

    def restart(self) -> None:
        self._script("restart")

    def stop(self) -> None:
        try:
            self._script("stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------- one run


def state_counts(engine: sqlalchemy.Engine, study: str) -> Counter[str] | None:
    """Trials per state, or None while the database cannot answer (a restart)."""
    query = sqlalchemy.text(
        "SELECT t.state, count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
        "WHERE s.study_name = :name GROUP BY t.state"
    )
    try:
        with engine.connect() as connection:
            return Counter({str(s): n for s, n in connection.execute(query, {"name": study})})
    except sqlalchemy.exc.SQLAlchemyError:
        return None


def run(
    phases: list[Phase],
    url: str,
    tmp: Path,
    args: argparse.Namespace,
    rng: random.Random,
    postgres: Postgres | None,
) -> None:
    """Register the studies (racing, under chaos), run them at once, check them."""
    env = {**os.environ, "HPO_STORAGE": url, "PYTHONWARNINGS": "ignore"}
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    chaos = phases[0].chaos
    copies = args.registrations if chaos else 1
    racing = []
    for phase in phases:
        spec_file = tmp / f"{phase.study}.yaml"
        spec_file.write_text(yaml.safe_dump(phase.spec, sort_keys=False))
        racing.append(register(spec_file, env, copies, logs, phase.study))
    for phase, started in zip(phases, racing, strict=True):
        collect_registrations(phase, started)
        if phase.created != 1:
            phase.problems.append(
                f"{phase.created} of {copies} racing registrations created the study (want 1)"
            )
    engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
    fleet = Fleet(env, logs, args.heartbeat)
    late: dict[str, list[tuple[subprocess.Popen[bytes], Path]]] = {p.study: [] for p in phases}
    try:
        drive(phases, fleet, engine, tmp, args, rng, postgres, late)
    except BaseException:
        for process, _ in itertools.chain(*late.values()):
            process.kill()
        raise
    finally:
        fleet.stop_all()  # nobody is left after a run; only after an error
        engine.dispose()
    fleet.check()
    if chaos and not any(phase.signals for phase in phases):
        phases[0].problems.append(
            "no signal was sent: no worker was seen past its start-up (a line "
            f"{STARTED.format(study='STUDY')!r} in its log) while trials were left; give "
            "more trials (--grid-points, --tpe-trials) or a shorter --kill-every"
        )
    for phase in phases:
        before = phase.created
        collect_registrations(phase, late[phase.study])
        if phase.created != before:
            phase.problems.append("a registration during the run created the study again")
        verify(phase, url, args.heartbeat, [r for p in phases for r in p.restarts])


def drive(
    phases: list[Phase],
    fleet: Fleet,
    engine: sqlalchemy.Engine,
    tmp: Path,
    args: argparse.Namespace,
    rng: random.Random,
    postgres: Postgres | None,
    late: dict[str, list[tuple[subprocess.Popen[bytes], Path]]],
) -> None:
    """Start the workers (shared out between the studies), hurt them under chaos until the
    budgets are done, and wait until every worker has exited; the registrations started
    meanwhile go into ``late``, by study.

    A signal goes to a random worker past its start-up (logged its plan) of a study not yet
    done, and only while at least --min-up workers are up: a replacement takes seconds of CPU
    to import torch, so on a few loaded cores a fixed rate would kill every worker as soon
    as it is up and the study would never end. The rate actually reached is reported."""
    started = time.monotonic()
    for i in range(args.workers):
        fleet.start(phases[i % len(phases)])
    next_hurt = started + args.kill_every * rng.uniform(0.5, 1.5)
    grid = next(p for p in phases if p.kind == "grid")
    restart_due = postgres is not None and grid.chaos
    counts: dict[str, Counter[str]] = {}
    while fleet.live:
        time.sleep(0.25)
        now = time.monotonic()
        fleet.reap()
        for phase in phases:
            if not phase.wall and not fleet.serving(phase):
                phase.wall = now - started
        for phase in phases:
            counts[phase.study] = state_counts(engine, phase.study) or counts.get(
                phase.study, Counter()
            )
        open_ = [
            p for p in phases if counts[p.study]["COMPLETE"] + counts[p.study]["PRUNED"] < p.budget
        ]
        sent = sum(len(p.signals) for p in phases)
        more = args.max_signals is None or sent < args.max_signals
        if grid.chaos and more and now >= next_hurt:
            ready = fleet.ready(open_)
            min_up = args.min_up if args.min_up is not None else max(1, args.workers // 2)
            if ready and len(fleet.ready(phases)) >= min_up:
                victim = rng.choice(sorted(ready, key=lambda w: w.process.pid))
                fleet.hurt(victim, "TERM" if rng.random() < args.term_share else "KILL")
                fleet.start(victim.phase)
                next_hurt = now + args.kill_every * rng.uniform(0.5, 1.5)
                signals = len(victim.phase.signals)
                if signals % 5 == 0:  # duplicate registrations while workers run
                    spec_file = tmp / f"{victim.phase.study}.yaml"
                    tag = f"{victim.phase.study}-late{signals}"
                    late[victim.phase.study] += register(spec_file, fleet.env, 2, fleet.logs, tag)
        grid_done = counts[grid.study]["COMPLETE"] + counts[grid.study]["PRUNED"]
        if restart_due and grid_done >= grid.budget / 3:
            assert postgres is not None
            began = time.time()
            postgres.restart()
            grid.restarts.append((began, time.time()))
            restart_due = False
        if now > started + args.deadline:
            for phase in phases:
                phase.problems.append(
                    f"deadline: {fleet.serving(phase)} workers still running after "
                    f"{args.deadline:.0f} s (trials by state: {dict(counts[phase.study])}); "
                    "killed"
                )
            break
    fleet.stop_all()
    for phase in phases:
        phase.wall = phase.wall or time.monotonic() - started


# ----------------------------------------------------------------------------- the checks


def verify(phase: Phase, url: str, heartbeat: float, restarts: list[tuple[float, float]]) -> None:
    """Read the study back with Optuna alone and hold it to the pass conditions."""
    storage = optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name=phase.study, storage=storage)
    trials = study.get_trials(deepcopy=False)
    phase.states = Counter(t.state.name for t in trials)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    problems = phase.problems
    if len(finished) != phase.budget:
        problems.append(f"{len(finished)} trials COMPLETE or PRUNED, budget {phase.budget}")
    for state in ("RUNNING", "WAITING"):
        if phase.states[state]:
            numbers = [t.number for t in trials if t.state.name == state]
            problems.append(f"{phase.states[state]} trials left {state}: {numbers}")
    if phase.kind == "grid":
        want = Counter(expected_grid(phase.spec))
        got = Counter(tuple(sorted(t.params.items())) for t in finished)
        for point in want:
            if got[point] != 1:
                runs = [t.number for t in finished if tuple(sorted(t.params.items())) == point]
                problems.append(f"grid point {dict(point)} finished {got[point]} times {runs}")
        for point in set(got) - set(want):
            problems.append(f"a trial outside the grid finished: {dict(point)}")

    retried: dict[int, optuna.trial.FrozenTrial] = {}
    for t in trials:
        history = t.system_attrs.get("retry_history", [])
        if history:
            retried[history[-1]] = t
    fails = [t for t in trials if t.state == TrialState.FAIL]
    for t in fails:
        reason = t.user_attrs.get("fail_reason")
        if not signal_reason(reason):
            problems.append(f"trial {t.number} FAIL: {reason}")
        elif t.number not in retried:
            problems.append(f"trial {t.number} FAIL ({reason or 'stale'}) was never retried")
    timings(phase, storage, fails, retried, heartbeat, restarts)


def timings(
    phase: Phase,
    storage: optuna.storages.RDBStorage,
    fails: list[optuna.trial.FrozenTrial],
    retried: dict[int, optuna.trial.FrozenTrial],
    heartbeat: float,
    restarts: list[tuple[float, float]],
) -> None:
    """Match each FAIL trial to the signal that hit it, by its last heartbeat."""
    with storage.engine.connect() as connection:
        query = "SELECT trial_id, heartbeat FROM trial_heartbeats"
        rows = connection.execute(sqlalchemy.text(query))
        beats = {trial_id: beat for trial_id, beat in rows}
        db_now = connection.execute(sqlalchemy.text("SELECT CURRENT_TIMESTAMP")).scalar_one()
    if isinstance(db_now, str):  # SQLite
        db_now = datetime.fromisoformat(db_now)
    db_now = db_now.replace(tzinfo=None) if db_now.tzinfo is None else _local(db_now)
    # The database's clock may be UTC and trials' local: shift by whole quarter hours.
    offset = timedelta(minutes=15 * round((db_now - datetime.now()).total_seconds() / 900))
    unclaimed = list(phase.signals)
    for t in sorted(fails, key=lambda t: t.datetime_complete or datetime.max):
        beat = beats.get(t._trial_id)
        if beat is None or t.datetime_complete is None:
            continue
        if isinstance(beat, str):
            beat = datetime.fromisoformat(beat)
        last = beat - offset
        kind = "TERM" if t.user_attrs.get("fail_reason") == SIGTERM_REASON else "KILL"
        hits = [
            s
            for s in unclaimed
            if s.kind == kind
            and last - timedelta(seconds=1) <= _at(s) <= last + timedelta(seconds=heartbeat + 1)
            and _at(s) <= t.datetime_complete
        ]
        if not hits:
            if any(b - heartbeat - 1 <= last.timestamp() <= e + 1 for b, e in restarts):
                phase.restart_fails += 1
            continue
        hit = min(hits, key=lambda s: abs((_at(s) - last).total_seconds()))
        unclaimed.remove(hit)
        phase.detect.append((t.datetime_complete - _at(hit)).total_seconds())
        retry = retried.get(t.number)
        if retry is not None and retry.datetime_start is not None:
            phase.pickup.append((retry.datetime_start - _at(hit)).total_seconds())
    for began, _ in restarts:
        done = [
            t.datetime_complete
            for t in optuna.load_study(study_name=phase.study, storage=storage).get_trials(
                deepcopy=False
            )
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and t.datetime_complete is not None
            and t.datetime_complete.timestamp() > began
        ]
        if done:
            phase.restart_gap = min(done).timestamp() - began


def _at(s: Signal) -> datetime:
    return datetime.fromtimestamp(s.at)


def _local(moment: datetime) -> datetime:
    return moment.astimezone().replace(tzinfo=None)


# ----------------------------------------------------------------------------- the report


def median_max(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} / {max(values):.1f}"


def report(phases: list[Phase]) -> None:
    print("\n## Runs (the grid and the TPE study at once, the workers shared out)\n")
    print(
        "| storage | study (budget) | run | wall s | workers started | SIGKILL | SIGTERM "
        "| registrations (created) | COMPLETE | PRUNED | FAIL | RUNNING | WAITING | pass |"
    )
    print("| --- | --- | --- |" + " ---: |" * 10 + " --- |")
    for p in phases:
        kills = sum(s.kind == "KILL" for s in p.signals)
        terms = sum(s.kind == "TERM" for s in p.signals)
        print(
            f"| {p.backend} | {p.kind} ({p.budget}) | {'chaos' if p.chaos else 'calm'} "
            f"| {p.wall:.1f} | {p.workers_started} | {kills} | {terms} "
            f"| {p.registrations} ({p.created}) | {p.states['COMPLETE']} | {p.states['PRUNED']} "
            f"| {p.states['FAIL']} | {p.states['RUNNING']} | {p.states['WAITING']} "
            f"| {'yes' if not p.problems else 'NO'} |"
        )
    print("\n## What the chaos cost\n")
    print(
        "| storage | study | calm s | chaos s | ratio | one signal every s "
        "| signals that hit a trial | signal → trial FAIL s (median / max) "
        "| signal → retry started s (median / max) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for chaos in (p for p in phases if p.chaos):
        same = (chaos.backend, chaos.kind)
        calm = next((p for p in phases if not p.chaos and (p.backend, p.kind) == same), None)
        calm_wall = calm.wall if calm else float("nan")
        print(
            f"| {chaos.backend} | {chaos.kind} | {calm_wall:.1f} | {chaos.wall:.1f} "
            f"| {chaos.wall / calm_wall:.2f} | {chaos.wall / max(1, len(chaos.signals)):.1f} "
            f"| {len(chaos.detect)} of {len(chaos.signals)} "
            f"| {median_max(chaos.detect)} | {median_max(chaos.pickup)} |"
        )
    for p in phases:
        for began, ended in p.restarts:
            run = [q for q in phases if q.backend == p.backend and q.chaos == p.chaos]
            gaps = [q.restart_gap for q in run if q.restart_gap is not None]
            gap = f"{min(gaps):.1f}" if gaps else "-"
            print(
                f"\nPostgreSQL restart ({p.backend} chaos run): pg_ctl restart -m fast took "
                f"{ended - began:.1f} s; the next trial finished {gap} s after it began; "
                f"{sum(q.restart_fails for q in run)} running trials were failed by it "
                "(their heartbeat stopped) and retried."
            )


DEFAULTS: dict[str, Any] = {
    "backend": "both",
    "workers": 8,
    "grid_points": 100,
    "tpe_trials": 200,
    "kill_every": 3.0,
    "registrations": 4,
    "deadline": 900.0,
}
#: ``--quick``: every check at its smallest, on SQLite (no private PostgreSQL server to start).
QUICK: dict[str, Any] = {
    "backend": "sqlite",
    "workers": 2,
    "grid_points": 8,
    "tpe_trials": 8,
    "kill_every": 2.0,
    "max_signals": 2,
    "registrations": 2,
    "deadline": 300.0,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], help="default both")
    parser.add_argument("--workers", type=int, help="on the storage, shared out (default 8)")
    parser.add_argument("--grid-points", type=int, help="at least this many (default 100)")
    parser.add_argument("--tpe-trials", type=int, help="default 200")
    parser.add_argument("--kill-every", type=float, help="seconds, jittered ±50%% (default 3)")
    parser.add_argument(
        "--min-up",
        type=int,
        help="signal only while this many workers are past start-up (default: half)",
    )
    parser.add_argument(
        "--max-signals", type=int, help="per chaos run, at most this many (default: no limit)"
    )
    parser.add_argument("--term-share", type=float, default=0.25, help="signals that are TERM")
    parser.add_argument("--registrations", type=int, help="racing, per study (default 4)")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="hpo worker --heartbeat")
    parser.add_argument("--deadline", type=float, help="seconds per run (default 900)")
    parser.add_argument("--pg-port", type=int, default=54341)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temp folder and logs")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: SQLite only (--backend postgresql or both for the private "
        "server), 2 workers, a grid of 8 points and 8 TPE trials, 2 signals ~2 s apart, 2 "
        "racing registrations, a 300 s deadline; the options above still apply",
    )
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    # Ctrl-C or a SIGTERM unwinds through the finally blocks: workers and the server stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rng = random.Random(args.seed)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    tmp = Path(tempfile.mkdtemp(prefix="hpo-chaos-"))
    print(
        f"# chaos soak: {args.workers} workers, grid ≥{args.grid_points} points and TPE "
        f"{args.tpe_trials} trials at once, a signal every ~{args.kill_every:g} s, heartbeat "
        f"{args.heartbeat:g} s, seed {args.seed}\n# {cpu_name()}, {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.1f} at start; Python {platform.python_version()}, optuna "
        f"{optuna.__version__}; logs in {tmp}"
    )
    phases: list[Phase] = []
    started = time.monotonic()
    for backend in backends:
        postgres = Postgres(args.pg_port) if backend == "postgresql" else None
        try:
            for chaos in (False, True):
                mode = "chaos" if chaos else "calm"
                url = postgres.url or postgres.start() if postgres else ""
                url = url or f"sqlite:///{tmp / f'{mode}.db'}"
                grid = grid_spec(f"chaos-grid-{mode}", args.grid_points)
                tpe = tpe_spec(f"chaos-tpe-{mode}", args.tpe_trials)
                pair = [
                    Phase(backend, grid["name"], "grid", chaos, len(expected_grid(grid)), grid),
                    Phase(backend, tpe["name"], "tpe", chaos, args.tpe_trials, tpe),
                ]
                print(f"- {backend} {mode} ...", end=" ", flush=True)
                run(pair, url, tmp, args, rng, postgres if chaos else None)
                print(
                    ", ".join(f"{p.kind} {p.wall:.0f} s {dict(p.states)}" for p in pair),
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                phases += pair
        finally:
            if postgres is not None:
                postgres.stop()
    print(
        f"\nwhole soak: {time.monotonic() - started:.0f} s, load {os.getloadavg()[0]:.1f} at end"
    )
    report(phases)
    problems = [(p, problem) for p in phases for problem in p.problems]
    if problems:
        print("\n## FAILED\n")
        for p, problem in problems:
            print(f"- {p.backend} {p.kind} {'chaos' if p.chaos else 'calm'}: {problem}")
        print(f"\nlogs kept in {tmp}")
        return 1
    print("\nall passed: budgets exact, every grid point once, nothing RUNNING or WAITING")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
