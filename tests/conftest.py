"""Shared fixtures: real storages in temporary folders, and small specs that train in seconds."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> Iterator[None]:
    """A test that runs a worker in-process (``run_worker(threads=1)``) sets torch's thread
    count for the process; the next test starts from the count this one started with."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if threads is not None and torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid``, nearest first: the kernel's children lists of each of its
    threads (``/proc/PID/task/TID/children``), followed down."""
    found: list[int] = []
    parents = [pid]
    while parents:
        for children in Path(f"/proc/{parents.pop(0)}/task").glob("*/children"):
            with contextlib.suppress(OSError):  # the thread or the process has ended
                pids = [int(child) for child in children.read_text().split()]
                found.extend(pids)
                parents.extend(pids)
    return found


#: Set on a test whose timer is the one below, so only that one is cancelled here.
_OWN_TIMER = pytest.StashKey[bool]()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's ``timeout`` ([tool.pytest.ini_options]) ends a hung test as a failure
    that names it, and the run goes on. Its own signal method raises in the test, which then
    waits again in ``Popen.__exit__`` on the process it hung on; so here the processes under
    the test's pytest process (its module fixtures' too) are killed first, so that what it
    waits on returns, every thread's stack is printed, and then it fails."""
    if settings.timeout <= 0 or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own thread method

    def stop(signum: int, frame: Any) -> None:
        __tracebackhide__ = True
        killed = _descendants(os.getpid())
        for pid in killed:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        faulthandler.dump_traceback(all_threads=True)
        pytest.fail(
            f"{item.nodeid} ran past {settings.timeout:g} s (pytest-timeout): killed its "
            f"{len(killed)} processes; every thread's stack is on stderr above"
        )

    signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    item.stash[_OWN_TIMER] = True
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool | None:
    if not item.stash.get(_OWN_TIMER, False):
        return None  # pytest-timeout's own timer, or none: it cancels its own
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    return True


#: ``make test-fast`` sets it: a test not marked ``slow`` that trains a net (an optimizer step)
#: or starts a process then fails, naming itself, so the fast tier stays what it says.
FAST_TIER = os.environ.get("HPO_FAST_TIER") == "1"


@pytest.fixture(autouse=True)
def _fast_tier_trains_nothing(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not FAST_TIER or request.node.get_closest_marker("slow") is not None:
        return

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(
                f"{request.node.nodeid} {what}, so it belongs to the slow tier: mark it "
                "@pytest.mark.slow (make test-fast runs only tests that train nothing and "
                "start no process)"
            )

        return refused

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("starts a process"))
    import multiprocessing.process

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse("starts a process"))
    if "torch" in sys.modules:  # every optimizer's step, whatever trains (skorch, a stacked fit)
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        hook = register_optimizer_step_pre_hook(refuse("trains a net"))
        request.addfinalizer(hook.remove)


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A digits MLP study small enough to run a trial in about a second on one core."""
    spec: dict[str, Any] = {
        "name": "tiny-digits",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "sampler": {"name": "random", "seed": 0},
        "scoring": "accuracy",
        "cv": {"folds": 2, "shuffle": True, "seed": 0},
        "budget": {"trials": 4},
        "fixed": {"max_epochs": 3, "batch_size": 128},
        "space": {
            "module__hidden1": {"type": "int", "low": 8, "high": 32},
            "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        },
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hpo.db'}"


def _started_postgres_url() -> str | None:
    """The URL of the cluster scripts/postgres.sh started, or None."""
    found = subprocess.run(
        ["bash", str(REPO / "scripts" / "postgres.sh"), "url"], capture_output=True, text=True
    )
    return found.stdout.strip() or None if found.returncode == 0 else None


#: What ``_started_postgres_url`` said at the session's start (a process, so not in a test).
_SESSION_POSTGRES_URL: list[str | None] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    if not os.environ.get("HPO_TEST_POSTGRES_URL"):
        _SESSION_POSTGRES_URL.append(_started_postgres_url())


def postgres_base_url() -> str | None:
    """The test cluster's URL: ``HPO_TEST_POSTGRES_URL``, else the one scripts/postgres.sh
    started. In CI a missing server is an error, never a skip."""
    url = os.environ.get("HPO_TEST_POSTGRES_URL")
    if not url:
        url = _SESSION_POSTGRES_URL[0] if _SESSION_POSTGRES_URL else _started_postgres_url()
    if not url:
        if os.environ.get("CI"):
            pytest.fail(
                "CI must run the PostgreSQL tests: run them with `make test`, which "
                "starts the server (scripts/postgres.sh start)"
            )
        return None
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    base = postgres_base_url()
    if base is None:
        pytest.skip("no PostgreSQL: run `make test` or scripts/postgres.sh start")
    import sqlalchemy

    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}"
    finally:
        drop = sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for attempt in range(10):
            try:
                with admin.connect() as connection:
                    connection.execute(drop)
                break
            except sqlalchemy.exc.ProgrammingError:
                # FORCE ends the test's own sessions, but not a server process of another role
                # (an autovacuum worker visiting the new database): wait for it to leave.
                if attempt == 9:
                    raise
                time.sleep(0.5)
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest) -> str:
    """Each storage kind hpo supports for many workers: a test using this runs on both."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(fixture)


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec (``tiny_spec`` with overrides, or a given mapping) to a YAML file."""

    def write(
        spec: dict[str, Any] | None = None, name: str = "study.yaml", **overrides: Any
    ) -> Path:
        path = tmp_path / name
        path.write_text(
            yaml.safe_dump(spec if spec is not None else tiny_spec(**overrides), sort_keys=False)
        )
        return path

    return write


def run_hpo(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real ``hpo`` command in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served(command: list[str], **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """A server process for the block, interrupted (as Ctrl-C would) afterwards."""
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )
    try:
        yield server
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def get_json(url: str, timeout: float = 60) -> Any:
    """GET ``url`` until the server answers (it may still be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.load(response)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_for_running_trial(
    name: str, url: str, timeout: float = 60, worker: subprocess.Popen[str] | None = None
) -> None:
    """Wait until a trial of study ``name`` is RUNNING; fail early, with its output, if
    ``worker`` exits meanwhile."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=name, storage=url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        if worker is not None:
            assert worker.poll() is None, worker.communicate()[0]
        time.sleep(0.2)
    raise AssertionError("no trial started running")
