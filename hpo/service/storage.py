"""Where studies live: URL resolution, engine settings, the claim lock and trial heartbeats.

Precedence for the storage URL: the ``--storage`` flag, else ``HPO_STORAGE``, else
``sqlite:///hpo.db`` in the working directory.

Workers claim trials under ``claim_lock``: a file lock beside a SQLite database, a session
advisory lock on PostgreSQL. Optuna's own pop of a WAITING trial is not atomic on SQLite
(optuna#4002) and a budget checked outside a lock overshoots with parallel workers; under the
lock, counting and claiming are one step.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from hpo.errors import StorageError

DEFAULT_STORAGE = "sqlite:///hpo.db"
DEFAULT_HEARTBEAT = 30.0
#: How many times a trial whose worker died is run again before it stays FAIL.
MAX_RETRY = 3


def resolve_storage_url(flag: str | None = None) -> str:
    """The storage URL: ``flag``, else ``$HPO_STORAGE``, else ``sqlite:///hpo.db``."""
    return flag or os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE


def resolve_heartbeat(flag: float | None = None) -> float:
    """Seconds between a running trial's heartbeats: ``flag``, else ``$HPO_HEARTBEAT``, else 30.

    A trial whose heartbeat is older than twice this is taken as abandoned and run again.
    """
    if flag is not None:
        return flag
    value = os.environ.get("HPO_HEARTBEAT")
    try:
        return float(value) if value else DEFAULT_HEARTBEAT
    except ValueError:
        raise StorageError(f"HPO_HEARTBEAT must be a number of seconds, got {value!r}") from None


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, or None for any other storage."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def open_storage(url: str, heartbeat: float | None = None) -> optuna.storages.BaseStorage:
    """Open an Optuna storage with settings that survive many workers and long trials.

    SQLite gets WAL journaling, commits without an fsync each (``synchronous=NORMAL``, safe
    with WAL) and a 60 s busy timeout; server databases get
    ``pool_pre_ping`` and hourly connection recycling, so a worker reconnects after the
    server restarts. With ``heartbeat`` (seconds), stale trials are failed and re-queued.

    ``grpc://host:port`` connects to an ``hpo storage-proxy``; heartbeats do not pass through
    it, so a trial whose worker is killed there stays RUNNING (see README).

    Raises:
        StorageError: the URL is malformed, its driver is missing, or the database cannot be
            opened (a server down or unreachable, a wrong password, no such database).
    """
    if url.startswith("grpc://"):
        return _open_grpc(url)
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise StorageError(
            f"cannot parse storage URL {url!r}; expected e.g. sqlite:///hpo.db or "
            "postgresql+psycopg://user:password@host/db"
        ) from None
    if backend == "sqlite":
        engine_kwargs: dict[str, object] = {"connect_args": {"timeout": 60}}
        path = sqlite_path(url)
        if path is not None:
            _enable_wal(path)
    else:
        engine_kwargs = {"pool_pre_ping": True, "pool_recycle": 3600}
    heartbeat_kwargs: dict[str, object] = {}
    if heartbeat:
        heartbeat_kwargs = {
            "heartbeat_interval": max(1, round(heartbeat)),
            "grace_period": max(2, round(2 * heartbeat)),
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_RETRY
            ),
        }
    try:
        storage = RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat_kwargs)
    except ImportError as error:
        raise StorageError(f"cannot open {backend} storage: {error}") from None
    except (OperationalError, sqlite3.OperationalError) as error:
        # The database's own first line says what is wrong: refused, a password, no such db.
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        shown = make_url(url).render_as_string(hide_password=True)
        raise StorageError(
            f"cannot open the storage {shown}: {reason}. Check that the database server is "
            "running and reachable, and the URL's host, port, user, password and database."
        ) from None
    if backend == "sqlite" and sqlite_path(url) is not None:
        # (An in-memory database lives in its one connection: it must not be closed.)
        _commit_without_fsync(storage.engine)
    return storage


def _open_grpc(url: str) -> optuna.storages.BaseStorage:
    address = urlsplit(url)
    if not address.hostname or not address.port:
        raise StorageError(
            f"a gRPC storage URL needs a host and a port, e.g. grpc://127.0.0.1:13000; got {url!r}"
        )
    try:
        from optuna.storages import GrpcStorageProxy
    except ImportError as error:
        raise StorageError(f"cannot use {url}: {error}") from None
    return GrpcStorageProxy(host=address.hostname, port=address.port)


def serve_storage_proxy(storage_url: str, host: str = "127.0.0.1", port: int = 13000) -> None:
    """Serve ``storage_url`` (PostgreSQL, usually) to workers as ``grpc://host:port``.

    One proxy holds a few database connections on behalf of any number of workers, for
    studies with more workers than one database serves comfortably. Blocks until stopped.

    Raises:
        StorageError: the storage cannot be opened, or the port cannot be listened on.
    """
    from optuna.storages import run_grpc_proxy_server

    if storage_url.startswith("grpc://"):
        raise StorageError("the proxy needs a database URL to serve, not another proxy")
    storage = open_storage(storage_url)
    try:
        run_grpc_proxy_server(storage, host=host, port=port)
    except RuntimeError as error:
        if "Failed to bind" not in str(error):
            raise
        raise StorageError(
            f"cannot listen on {host}:{port} (in use, or not this machine's address); pick "
            "another with --port (or --host)"
        ) from None


def has_claim_lock(storage: optuna.storages.BaseStorage) -> bool:
    """Whether ``claim_lock`` really serialises workers for this storage (not through gRPC)."""
    backend = rdb_backend(storage)
    if backend is None:
        return False
    return (
        backend.engine.dialect.name == "postgresql"
        or sqlite_path(str(backend.engine.url)) is not None
    )


def _enable_wal(path: Path) -> None:
    # WAL lets readers (the dashboard, progress polling) run beside a writer; the mode is
    # stored in the file, so setting it once per process is enough.
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=60)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()


def _commit_without_fsync(engine: Engine) -> None:
    # With WAL, synchronous=NORMAL syncs the log at checkpoints instead of at every commit:
    # about 1 ms less per write on our machines, and a trial writes twenty times or more
    # (each parameter, each fold's report, its attributes). A killed worker loses nothing it
    # committed; a power cut or an OS crash can roll back the last commits but leaves the file
    # consistent (https://www.sqlite.org/pragma.html#pragma_synchronous).
    event.listen(engine, "connect", _set_synchronous_normal)
    engine.dispose()  # connections opened before the listener (Optuna's schema check) close


def _set_synchronous_normal(connection: sqlite3.Connection, _: object) -> None:
    connection.execute("PRAGMA synchronous=NORMAL")


def rdb_backend(storage: optuna.storages.BaseStorage) -> RDBStorage | None:
    """The ``RDBStorage`` behind ``storage`` (Optuna wraps it in a cache inside a Study)."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def heartbeat_enabled(storage: optuna.storages.BaseStorage) -> bool:
    backend = rdb_backend(storage)
    return backend is not None and bool(backend.get_heartbeat_interval())


_process_lock = threading.Lock()


@contextlib.contextmanager
def claim_lock(storage: optuna.storages.BaseStorage, study_name: str) -> Iterator[None]:
    """Hold the study's claim lock: one worker at a time counts and claims trials."""
    backend = rdb_backend(storage)
    path = sqlite_path(str(backend.engine.url)) if backend is not None else None
    with _process_lock:
        if path is not None:
            with open(f"{path}.lock", "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        elif backend is not None and backend.engine.dialect.name == "postgresql":
            key = int.from_bytes(
                hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True
            )
            with backend.engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()
        else:
            yield


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat in a background thread while the block runs.

    Does nothing when the storage has no heartbeat configured.
    """
    backend = rdb_backend(storage)
    if backend is None or not backend.get_heartbeat_interval():
        yield
        return
    interval = backend.get_heartbeat_interval()
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a dropped connection retries next beat
                backend.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail and re-queue the RUNNING trials whose worker is gone.

    Optuna's ``fail_stale_trials`` catches a trial whose heartbeat went quiet, but never one
    that died before its first beat (killed between claim and beat). Such a trial counts as
    stale once it has been RUNNING longer than the grace period without any heartbeat.

    Returns:
        The trial ids failed here (the orphans; Optuna's own are not listed).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    storage = rdb_backend(study._storage)
    if storage is None or not storage.get_heartbeat_interval():
        return []
    grace = storage.grace_period or 2 * storage.get_heartbeat_interval()
    cutoff = datetime.now() - timedelta(seconds=grace)
    query = text(
        "SELECT t.trial_id, t.datetime_start FROM trials t "
        "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.study_id = :study_id AND t.state = 'RUNNING' AND h.trial_id IS NULL"
    )
    with storage.engine.connect() as connection:
        rows = connection.execute(query, {"study_id": study._study_id}).all()
    orphans = []
    for trial_id, started in rows:
        if isinstance(started, str):
            started = datetime.fromisoformat(started)
        if started is not None and started < cutoff:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    orphans.append(trial_id)
    callback = storage.get_heartbeat_stale_trial_callback()
    for trial_id in orphans:
        if callback is not None:
            callback(study, storage.get_trial(trial_id))
    return orphans


def count_trial_states(study: optuna.Study) -> Counter[TrialState]:
    """How many of the study's trials are in each state.

    On a database this is one ``GROUP BY`` query instead of loading every trial, so claiming
    stays cheap in a study of 10,000 trials; elsewhere (the gRPC proxy) it counts the trials.
    """
    backend = rdb_backend(study._storage)
    if backend is None:
        return Counter(t.state for t in study.get_trials(deepcopy=False))
    query = text("SELECT state, COUNT(*) FROM trials WHERE study_id = :study_id GROUP BY state")
    with backend.engine.connect() as connection:
        rows = connection.execute(query, {"study_id": study._study_id}).all()
    return Counter({TrialState[str(state).rsplit(".", 1)[-1]]: count for state, count in rows})
