"""Storage settings: SQLite with WAL, commits without an fsync each, nothing lost to a kill;
a database that cannot be opened, reported without its password; and what each backend
(SQLite, PostgreSQL, the gRPC proxy) does for workers: claim lock, heartbeats, state counts,
the stale sweep."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from conftest import free_port, served, tiny_spec
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import text
from sqlalchemy.engine import make_url

from hpo.errors import StorageError
from hpo.service import optuna_internals
from hpo.service.backends import StorageBackend
from hpo.service.runner import worker_command, worker_env
from hpo.service.storage import masked_url, open_backend, open_storage, resolve_storage_url
from hpo.service.study import is_queued_point, register_study
from hpo.spec.study_spec import parse_spec

WRITE_THEN_DIE = """
import os, signal, sys
import optuna
from hpo.service.storage import open_storage
study = optuna.create_study(storage=open_storage(sys.argv[1]), study_name="killed")
trial = study.ask()
trial.set_user_attr("written", True)
trial.report(0.5, step=0)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sqlite_runs_wal_and_commits_without_syncing_each(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")
    with storage.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL


def test_an_in_memory_database_keeps_its_one_connection() -> None:
    study = optuna.create_study(storage=open_storage("sqlite:///:memory:"))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(study.trials) == 2


@pytest.mark.slow
def test_what_a_killed_writer_committed_is_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    done = subprocess.run([sys.executable, "-c", WRITE_THEN_DIE, url], check=False)
    assert done.returncode == -9
    study = optuna.load_study(study_name="killed", storage=open_storage(url))
    (trial,) = study.trials
    assert trial.user_attrs == {"written": True}
    assert trial.intermediate_values == {0: 0.5}


def test_a_database_it_cannot_open_is_a_storage_error_that_hides_the_password(
    postgres_url: str,
) -> None:
    url = make_url(postgres_url)
    wrong_password = url.set(password="not-the-password").render_as_string(hide_password=False)
    nowhere = url.set(port=free_port()).render_as_string(hide_password=False)
    no_database = url.set(database="no_such_hpo_db").render_as_string(hide_password=False)
    for bad, reason in (
        (wrong_password, "password authentication failed"),
        (nowhere, "Connection refused"),
        (no_database, 'database "no_such_hpo_db" does not exist'),
    ):
        with pytest.raises(StorageError, match="cannot open the storage") as caught:
            open_storage(bad)
        message = str(caught.value)
        assert reason in message
        assert "not-the-password" not in message and url.password not in message
        assert f"{url.username}:***@" in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql+psycopg://u:s3cret@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
        ("postgresql://u:s3cr%40t@h/db", "postgresql://u:***@h/db"),
        ("sqlite:///hpo.db", "sqlite:///hpo.db"),
        ("grpc://127.0.0.1:13000", "grpc://127.0.0.1:13000"),
        ("postgresql://u:s3c@ret@h/db", "postgresql://u:***@h/db"),  # to the last @
        ("postgresql:///u:s3cret@h/db", "postgresql:///u:***@h/db"),  # userinfo in the path
        ("sqlite:///data/u:s3cret@h.db", "sqlite:///data/u:***@h.db"),
        ("postgresql://u@h/db?password=s3cret", "postgresql://u@h/db?password=***"),
        ("postgresql://u@h/db?PassWord=s3cret&x=1", "postgresql://u@h/db?PassWord=***&x=1"),
        ("postgresql://u@h/db?sslpassword=s3cret", "postgresql://u@h/db?sslpassword=***"),
        ("postgresql://u@h/db?pass%77ord=s3cret", "postgresql://u@h/db?pass%77ord=***"),
        ("postgresql://u@h/db?password=s3&cret&x=1", "postgresql://u@h/db?password=***&x=1"),
        ("postgresql://u:s3cret@h/db?password=s3cret", "postgresql://u:***@h/db?password=***"),
        ("postgresql://u@[::1]:5432/db", "postgresql://u@[::1]:5432/db"),
        (
            "sqlite:///file:/data/hpo.db?mode=ro&uri=true",
            "sqlite:///file:/data/hpo.db?mode=ro&uri=true",
        ),
        # SQLAlchemy cannot parse these: masked all the same
        ("postgresql://u:s3cret@h:port/db", "postgresql://u:***@h:port/db"),
        ("grpc://u:s3cret@h:nope", "grpc://u:***@h:nope"),
        ("postgresql://u:s3cret", "postgresql://u:***"),  # no host: the port may be it
        ("postgresql://u:s3c/ret", "postgresql://u:***"),
        # without a scheme:// start, any of it may be the password: none of it is shown
        ("postgresql//u:s3cret@h/db", "***"),
        ("postgresql:/u:s3cret@h/db", "***"),
        ("postgresql:u:s3cret@h/db", "***"),
        ("u:s3cret@h", "***"),
        ("://u:s3c@ret@h/db", "***"),
        (" postgresql://u:s3cret@h/db", "***"),
        ("s3cret", "***"),
        ("not a url", "***"),
    ],
)
def test_masked_url_hides_the_password(url: str, shown: str) -> None:
    assert masked_url(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@h:port/db", "u:***@"),
        ("grpc://u:s3cret@h:port", "u:***@"),
        ("postgresql://u@h:port/db?password=s3cret", "password=***"),
        ("://u:s3cret@h", "not shown"),
        ("postgresql//u:s3cret@h/db", "not shown"),
        ("u:s3cret@h", "not shown"),
    ],
)
def test_a_url_it_cannot_parse_is_named_without_its_password(url: str, shown: str) -> None:
    with pytest.raises(StorageError) as caught:
        open_storage(url)
    assert "s3cret" not in str(caught.value) and shown in str(caught.value)


def test_a_password_the_server_quotes_back_is_hidden(postgres_url: str) -> None:
    """Userinfo typed into the database name reaches the server, which names the database
    it cannot find: the message shows neither."""
    url = make_url(postgres_url)
    base = url.set(database=None).render_as_string(hide_password=False)
    with pytest.raises(StorageError, match="does not exist") as caught:
        open_storage(f"{base}/db:s3cret@h")
    assert "s3cret" not in str(caught.value) and url.password not in str(caught.value)


def test_a_password_file_puts_any_password_into_the_url_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "postgres_password"
    secret.write_text("p@ss/w:rd% #1\n")
    monkeypatch.setenv("HPO_STORAGE_PASSWORD_FILE", str(secret))
    url = resolve_storage_url("postgresql+psycopg://hpo@db:5432/hpo")
    assert make_url(url).password == "p@ss/w:rd% #1"
    assert make_url(url).host == "db" and make_url(url).database == "hpo"
    # hpo run hands its workers the URL itself, not the file as well
    assert "HPO_STORAGE_PASSWORD_FILE" not in worker_env(1, storage_url=url)


def test_a_url_with_the_file_password_resolves_to_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resolved URL handed on and resolved again (hpo.run opens what it ran on) is not
    refused for the password the file put there."""
    secret = tmp_path / "postgres_password"
    secret.write_text("p@ss/w:rd% #1\n")
    monkeypatch.setenv("HPO_STORAGE_PASSWORD_FILE", str(secret))
    once = resolve_storage_url("postgresql+psycopg://hpo@db:5432/hpo")
    assert resolve_storage_url(once) == once
    monkeypatch.setenv("HPO_STORAGE", once)
    assert resolve_storage_url(None) == once


@pytest.mark.parametrize(
    ("url", "content", "problem"),
    [
        ("postgresql://hpo:s3cret@db/hpo", "pw", "has a password and HPO_STORAGE_PASSWORD_FILE"),
        (
            "postgresql://hpo@db/hpo?password=s3cret",
            "pw",
            "has a password and HPO_STORAGE_PASSWORD_FILE",
        ),
        (
            "postgresql://hpo:pw@db/hpo?PASSWORD=s3cret",
            "pw",
            "has a password and HPO_STORAGE_PASSWORD_FILE",
        ),
        ("sqlite:///hpo.db", "pw", "takes no password"),
        ("grpc://127.0.0.1:13000", "pw", "takes no password"),
        ("postgresql://hpo@db/hpo", "", "is empty"),
        ("postgresql://hpo@db/hpo", None, "cannot read the password file"),
    ],
    ids=[
        "two-passwords",
        "query-password",
        "file-password-and-query-password",
        "sqlite",
        "grpc",
        "empty-file",
        "no-file",
    ],
)
def test_a_password_file_that_cannot_serve_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    content: str | None,
    problem: str,
) -> None:
    secret = tmp_path / "postgres_password"
    if content is not None:
        secret.write_text(content)
    monkeypatch.setenv("HPO_STORAGE_PASSWORD_FILE", str(secret))
    with pytest.raises(StorageError, match=problem) as refused:
        resolve_storage_url(url)
    assert "s3cret" not in str(refused.value)


def test_hpo_run_passes_the_storage_to_its_workers_in_the_environment_not_argv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql+psycopg://u:s3cret@db.example/hpo"
    command = worker_command("study", 2, "--trials", "3", "--index", "0")
    assert not any("s3cret" in part or "--storage" == part for part in command)
    assert command[command.index("--study") + 1] == "study"
    env = worker_env(2, storage_url=url)
    assert env["HPO_STORAGE"] == url and env["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("HPO_STORAGE", env["HPO_STORAGE"])
    assert resolve_storage_url(None) == url  # what hpo worker does without --storage


@pytest.fixture(scope="module")
def grpc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An ``hpo storage-proxy`` in front of a SQLite file, shared by this module's tests."""
    database = tmp_path_factory.mktemp("proxy") / "hpo.db"
    port = free_port()
    command = [sys.executable, "-m", "hpo", "storage-proxy", "--port", str(port)]
    with served([*command, "--storage", f"sqlite:///{database}"]) as proxy:
        optuna.storages.GrpcStorageProxy(port=port).wait_server_ready(timeout=60)
        assert proxy.poll() is None
        yield f"grpc://127.0.0.1:{port}"


# The proxy is a server process: its kind of each test is in the slow tier.
@pytest.fixture(params=["sqlite", "postgresql", pytest.param("grpc", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest) -> StorageBackend:
    """Every kind of storage a worker may use, opened with heartbeats every 30 s."""
    url = request.getfixturevalue(f"{request.param.replace('postgresql', 'postgres')}_url")
    return open_backend(url, heartbeat=30)


def new_study(backend: StorageBackend) -> optuna.Study:
    name = f"study-{uuid.uuid4().hex[:8]}"
    return optuna.create_study(study_name=name, storage=backend.storage)


def test_each_kind_says_what_it_has(backend: StorageBackend) -> None:
    through_proxy = isinstance(backend.storage, optuna.storages.GrpcStorageProxy)
    assert backend.has_claim_lock is not through_proxy
    assert backend.has_heartbeat is not through_proxy  # heartbeats do not pass the proxy


def test_counts_of_states_equal_optunas_own(backend: StorageBackend) -> None:
    study = new_study(backend)
    for state in (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
    study.ask()  # RUNNING
    study.enqueue_trial({"x": 0.25})  # WAITING
    study_id = backend.study_id(study.study_name)

    counts = backend.count_states(study_id)

    assert counts == Counter(t.state for t in study.get_trials(deepcopy=False))
    for state in TrialState:
        assert counts[state] == backend.storage.get_n_trials(study_id, state=state)
    assert counts[TrialState.COMPLETE] == 2 and counts[TrialState.WAITING] == 1


def test_a_popped_queued_point_is_told_from_a_fresh_sample(backend: StorageBackend) -> None:
    grid = {"module__hidden1": {"type": "categorical", "choices": [8, 16]}}
    spec = parse_spec(tiny_spec(sampler={"name": "grid"}, budget={}, space=grid))
    register_study(spec, backend.storage)
    study = optuna.load_study(study_name=spec.name, storage=backend.storage)
    popped = [study.ask() for _ in range(2)]
    fresh = study.ask()
    assert [is_queued_point(t) for t in popped] == [True, True]
    assert not is_queued_point(fresh)


def test_a_heartbeat_is_recorded_while_the_block_runs(backend: StorageBackend) -> None:
    if not backend.has_heartbeat:
        pytest.skip("heartbeats do not pass through the gRPC proxy")
    study = new_study(backend)
    first, second = study.ask(), study.ask()
    study_id = backend.study_id(study.study_name)
    engine = backend.storage.engine  # type: ignore[attr-defined]

    def without_beat() -> set[int]:
        return {i for i, _ in optuna_internals.running_without_heartbeat(engine, study_id)}

    ids = backend.trial_id(study, first), backend.trial_id(study, second)
    assert without_beat() == set(ids)
    backend.record_first_heartbeat(ids[0])
    assert without_beat() == {ids[1]}
    with backend.heartbeat(ids[1]):
        pass  # (the first beat goes in as the block starts; leaving joins the beating thread)
    assert without_beat() == set()


def test_the_stale_sweep_requeues_a_trial_that_never_beat(backend: StorageBackend) -> None:
    study = new_study(backend)
    started = datetime.now()
    for hours in (1, 0):  # killed an hour ago between claim and first beat; claimed just now
        study.add_trial(
            FrozenTrial(
                number=0,
                state=TrialState.RUNNING,
                value=None,
                datetime_start=started - timedelta(hours=hours),
                datetime_complete=None,
                params={"x": 0.5 + hours / 4},
                distributions={"x": FloatDistribution(0, 1)},
                user_attrs={},
                system_attrs={},
                intermediate_values={},
                trial_id=0,
            )
        )
    orphan = backend.trial_id(study, study.trials[0])

    failed = backend.fail_stale_trials(study)

    trials = study.get_trials(deepcopy=False)
    if not backend.has_heartbeat:  # (the gRPC proxy: a dead worker's trial stays RUNNING)
        assert failed == [] and [t.state for t in trials] == [TrialState.RUNNING] * 2
        return
    assert failed == [orphan]
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert trials[2].params == {"x": 0.75}  # run again with the same parameters
    assert trials[0].user_attrs["fail_reason"].startswith("worker gone: no heartbeat")
    assert "fail_reason" not in trials[2].user_attrs


CLAIM_AFTER = """
import sys
from hpo.service.storage import open_backend
backend = open_backend(sys.argv[1])
with backend.claim_lock("shared"), open(sys.argv[2], "a") as log:
    log.write("second\\n")
"""


def waiting_on_a_lock(url: str, pid: int) -> bool:
    """Whether the process ``pid`` waits for a claim lock of the database at ``url``."""
    if url.startswith("sqlite"):  # a blocked flock shows in /proc/locks as "N: -> FLOCK ... PID"
        blocked = [line.split() for line in Path("/proc/locks").read_text().splitlines()]
        return any(fields[1] == "->" and fields[5] == str(pid) for fields in blocked)
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            return bool(connection.execute(text(query)).scalar())
    finally:
        engine.dispose()


@pytest.mark.slow
def test_the_claim_lock_serialises_processes(backend: StorageBackend, tmp_path: Path) -> None:
    if not backend.has_claim_lock:
        pytest.skip("no claim lock through the gRPC proxy: workers step back from races")
    url = backend.storage.engine.url.render_as_string(hide_password=False)  # type: ignore
    log = tmp_path / "order"
    with backend.claim_lock("shared"):
        other = subprocess.Popen(
            [sys.executable, "-c", CLAIM_AFTER, url, str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 120  # (a guard against a hang, not a measurement)
        while not waiting_on_a_lock(url, other.pid):
            assert other.poll() is None, f"took the held lock: {other.communicate()[0]}"
            assert time.monotonic() < deadline, "the other process never asked for the lock"
            time.sleep(0.1)
        log.write_text("first\n")
    assert other.wait(timeout=60) == 0, other.communicate()[0]
    assert log.read_text().splitlines() == ["first", "second"]
