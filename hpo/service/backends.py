"""What an opened storage can do for workers, one class per kind, chosen once when it is opened.

```
StorageBackend             counts by loading trials; no claim lock, no heartbeat
├── GrpcProxyBackend       an ``hpo storage-proxy``: heartbeats do not pass through it
└── RDBStorageBackend      any SQLAlchemy database: heartbeats, one-query counts, stale sweep
    ├── SQLiteBackend      claim lock: a file lock beside the database file
    └── PostgreSQLBackend  claim lock: a session advisory lock per study
```

A worker claims trials under ``claim_lock``: Optuna's pop of a WAITING trial is not atomic on
SQLite (optuna#4002), and a budget checked outside a lock overshoots with parallel workers;
under the lock, counting and claiming are one step. Where a backend has no claim lock
(``has_claim_lock`` is False), the worker checks after claiming and steps back from a race.

``hpo.service.storage.open_backend`` builds these; nothing else needs to know which it got.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import text

from hpo.service import optuna_internals

#: Trial user attribute: why the trial failed (its configuration's error, or its worker gone).
FAIL_REASON_ATTR = "fail_reason"

# Threads of one process take the claim lock in turn before any lock between processes.
_process_lock = threading.Lock()


class StorageBackend:
    """An Optuna storage and what workers need from it beyond Optuna's API.

    This base serves any Optuna storage: the claim lock only orders the threads of this
    process, there are no heartbeats, and states are counted by loading the trials.

    Attributes:
        storage: The Optuna storage to pass to ``optuna.load_study`` and friends.
        has_claim_lock: Whether ``claim_lock`` serialises every worker of the study, on any
            machine. When False, two workers may claim the same slot at the same moment.
        has_heartbeat: Whether running trials record heartbeats, so that a trial whose worker
            died is failed and re-queued by ``fail_stale_trials``.
    """

    has_claim_lock: bool = False
    has_heartbeat: bool = False

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self.storage = storage
        self._study_ids: dict[str, int] = {}
        self._trial_ids: dict[tuple[str, int], int] = {}

    def study_id(self, study_name: str) -> int:
        """The study's id in this storage (looked up once).

        Raises:
            KeyError: no such study.
        """
        if study_name not in self._study_ids:
            self._study_ids[study_name] = self.storage.get_study_id_from_name(study_name)
        return self._study_ids[study_name]

    def trial_id(self, study: optuna.Study, trial: optuna.Trial) -> int:
        """The storage's id of ``trial``, which heartbeats and ``storage.get_trial`` take."""
        key = (study.study_name, trial.number)
        if key not in self._trial_ids:
            self._trial_ids[key] = self.storage.get_trial_id_from_study_id_trial_number(
                self.study_id(study.study_name), trial.number
            )
        return self._trial_ids[key]

    @contextlib.contextmanager
    def claim_lock(self, study_name: str) -> Iterator[None]:
        """Hold the study's claim lock: one worker at a time counts and claims trials."""
        with _process_lock:
            yield

    def record_first_heartbeat(self, trial_id: int) -> None:
        """Record the trial's first heartbeat (call it while the claim lock is held).

        A worker killed between claim and first beat would leave a trial that only the
        orphan sweep of ``fail_stale_trials`` finds; beating at once makes it ordinary.
        """

    @contextlib.contextmanager
    def heartbeat(self, trial_id: int) -> Iterator[None]:
        """Record the trial's heartbeat in a background thread while the block runs."""
        yield

    def count_states(self, study_id: int) -> Counter[TrialState]:
        """How many of the study's trials are in each state."""
        trials = self.storage.get_all_trials(study_id, deepcopy=False)
        return Counter(t.state for t in trials)

    def fail_stale_trials(self, study: optuna.Study) -> list[int]:
        """Fail the RUNNING trials whose worker is gone, each with its ``fail_reason``, and
        queue their parameters again (up to the storage's retry count).

        Returns:
            The ids of the trials failed here (another process may have failed others).
        """
        return []


class GrpcProxyBackend(StorageBackend):
    """An ``hpo storage-proxy`` (``grpc://host:port``).

    Heartbeats do not pass through the proxy, so a trial whose worker is killed stays RUNNING,
    and without a lock shared by every client, workers check for a race after each claim.
    """


class RDBStorageBackend(StorageBackend):
    """Any SQLAlchemy database: heartbeats, one-query state counts and the stale sweep.

    Args:
        storage: The ``RDBStorage`` that ``open_backend`` created (with its heartbeat
            settings); its engine answers the queries of ``hpo.service.optuna_internals``.
    """

    storage: RDBStorage

    def __init__(self, storage: RDBStorage) -> None:
        super().__init__(storage)
        optuna_internals.check_schema(storage.engine)
        self.interval = storage.get_heartbeat_interval() or 0
        self.has_heartbeat = bool(self.interval)

    def record_first_heartbeat(self, trial_id: int) -> None:
        if self.has_heartbeat:
            self.storage.record_heartbeat(trial_id)

    @contextlib.contextmanager
    def heartbeat(self, trial_id: int) -> Iterator[None]:
        if not self.has_heartbeat:
            yield
            return
        stop = threading.Event()

        def beat() -> None:
            while True:
                with contextlib.suppress(Exception):  # a dropped connection retries next beat
                    self.storage.record_heartbeat(trial_id)
                if stop.wait(self.interval):
                    return

        thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def count_states(self, study_id: int) -> Counter[TrialState]:
        # One GROUP BY instead of loading every trial: claims stay cheap at 10,000 trials.
        return optuna_internals.count_states(self.storage.engine, study_id)

    def fail_stale_trials(self, study: optuna.Study) -> list[int]:
        # Optuna's own sweep (``optuna.storages.fail_stale_trials``) fails a trial before
        # anyone can say why (a finished trial takes no attributes), and never catches one
        # that died before its first beat (killed between claim and beat). This sweep takes
        # both, each with its fail_reason written while it is still RUNNING.
        if not self.has_heartbeat:
            return []
        grace = self.storage.grace_period or 2 * self.interval
        study_id = self.study_id(study.study_name)
        quiet = optuna_internals.stale_trial_ids(self.storage, study_id)
        cutoff = datetime.now() - timedelta(seconds=grace)
        never_beat = [
            trial_id
            for trial_id, started in optuna_internals.running_without_heartbeat(
                self.storage.engine, study_id
            )
            if started is not None and started < cutoff
        ]
        reason = (
            f"worker gone: no heartbeat for over {grace} s (killed, or cut off from its "
            "machine or the storage); its parameters are queued again"
        )
        failed = [trial_id for trial_id in [*quiet, *never_beat] if self._fail(trial_id, reason)]
        callback = self.storage.get_heartbeat_stale_trial_callback()
        if callback is not None:
            for trial_id in failed:
                callback(study, without_fail_reason(self.storage.get_trial(trial_id)))
        return failed

    def _fail(self, trial_id: int, reason: str) -> bool:
        """Fail a RUNNING trial with ``reason``; False when another process got there first."""
        try:
            self.storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)
            return self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False


def without_fail_reason(trial: FrozenTrial) -> FrozenTrial:
    """A copy of a failed ``trial`` to queue again (Optuna's retry copies its attributes): its
    retry has not failed."""
    retry = copy.deepcopy(trial)
    retry.user_attrs.pop(FAIL_REASON_ATTR, None)
    return retry


class SQLiteBackend(RDBStorageBackend):
    """A SQLite file; the claim lock is a file lock beside it (``hpo.db.lock``).

    Args:
        storage: The ``RDBStorage`` on the file.
        path: The database file; None for an in-memory database, which lives in one process
            and needs no lock between processes.
    """

    def __init__(self, storage: RDBStorage, path: Path | None) -> None:
        super().__init__(storage)
        self.path = path
        self.has_claim_lock = path is not None

    @contextlib.contextmanager
    def claim_lock(self, study_name: str) -> Iterator[None]:
        if self.path is None:  # one process: the base's lock between its threads
            with super().claim_lock(study_name):
                yield
            return
        with _process_lock, open(f"{self.path}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class PostgreSQLBackend(RDBStorageBackend):
    """A PostgreSQL database; the claim lock is a session advisory lock keyed by the study."""

    has_claim_lock = True

    @contextlib.contextmanager
    def claim_lock(self, study_name: str) -> Iterator[None]:
        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        with _process_lock, self.storage.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
