"""Where studies live: the storage URL, and opening it as the backend of its kind.

Precedence for the storage URL: the ``--storage`` flag, else ``HPO_STORAGE``, else
``sqlite:///hpo.db`` in the working directory.

``open_backend`` decides the kind once, from the URL, and tunes the database for many workers
and long trials; what each kind then does for workers (claim lock, heartbeats, state counts,
stale sweep) lives in ``hpo.service.backends``. ``open_storage`` is the Optuna storage alone,
for everything that only reads or registers studies.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
)

from hpo.errors import MissingDatabaseError, StorageError, StorageUnreachableError
from hpo.files import read_input
from hpo.service.backends import (
    GrpcProxyBackend,
    PostgreSQLBackend,
    RDBStorageBackend,
    SQLiteBackend,
    StorageBackend,
)
from hpo.spec.rules import HEARTBEAT, PASSWORD_BYTES

DEFAULT_STORAGE = "sqlite:///hpo.db"
DEFAULT_HEARTBEAT = 30.0
#: How many times a trial whose worker died is run again before it stays FAIL.
MAX_RETRY = 3


#: Environment variable naming a file that holds the database password (a compose or
#: Kubernetes secret, e.g. /run/secrets/postgres_password), so that no URL carries it.
PASSWORD_FILE_ENV = "HPO_STORAGE_PASSWORD_FILE"


def resolve_storage_url(flag: str | None = None) -> str:
    """The storage URL: ``flag``, else ``$HPO_STORAGE``, else ``sqlite:///hpo.db``.

    With ``$HPO_STORAGE_PASSWORD_FILE`` set, the password is read from that file (its first
    line) and put into the URL, escaped: a password with ``@``, ``/``, ``:`` or ``%`` works.
    A URL this already resolved passes through unchanged (its password is the file's), so a
    command that hands a resolved URL on, and opens it there, applies the file once.

    Raises:
        StorageError: ``flag`` is empty; the password file cannot be read, or is set for a URL
            that already has another password or takes none (SQLite, gRPC).
    """
    if flag is not None and not flag.strip():
        raise StorageError(
            "--storage is empty; give a storage URL (e.g. sqlite:///hpo.db), or leave the "
            "option out for $HPO_STORAGE, else sqlite:///hpo.db"
        )
    url = flag or os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE
    password_file = os.environ.get(PASSWORD_FILE_ENV)
    return _with_password_from(password_file, url) if password_file else url


def _with_password_from(password_file: str, url: str) -> str:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return url  # open_backend says what is wrong with it
    if parsed.get_backend_name() in ("sqlite", "grpc"):
        raise StorageError(
            f"{PASSWORD_FILE_ENV} is set, but the storage {masked_url(url)} takes no password; "
            f"unset {PASSWORD_FILE_ENV}, or point the storage at the database server"
        )
    password = _read_password_file(password_file)
    in_query = [key for key in parsed.query if key.lower() == "password"]
    if parsed.password == password and not in_query:
        return url  # resolved before: the file's password is the one it holds
    if parsed.password is not None or in_query:
        raise StorageError(
            f"the storage URL {masked_url(url)} has a password and {PASSWORD_FILE_ENV} names "
            "another; keep one: the URL without its password (postgresql+psycopg://user@host/db) "
            "and the file"
        )
    return parsed.set(password=password).render_as_string(hide_password=False)


def _read_password_file(password_file: str) -> str:
    try:
        lines = read_input(password_file, PASSWORD_BYTES).decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise StorageError(
            f"cannot read the password file {password_file} ({PASSWORD_FILE_ENV}): {reason}"
        ) from None
    if not lines or not lines[0]:
        raise StorageError(
            f"the password file {password_file} ({PASSWORD_FILE_ENV}) is empty; write the "
            "database password on its first line"
        )
    return lines[0]


#: What a message shows in place of anything that could be a password.
HIDDEN = "***"


def masked_url(url: str) -> str:
    """``url`` as a message may show it: ``***`` wherever it could hold a password
    (``postgresql://u:***@h/db``), whether or not it parses. Every message that names a
    storage shows it through this; see ``_secret_spans`` for what is hidden."""
    shown: list[str] = []
    end = 0
    for start, stop in _secret_spans(url):
        shown += [url[end:start], HIDDEN]
        end = stop
    return "".join([*shown, url[end:]])


def _without_secrets(text: str, url: str) -> str:
    """``text`` (a database's or a driver's message about ``url``) with what ``masked_url``
    hides in ``url`` shown as ``***``: each hidden part, as written and percent-decoded,
    and each word of it, as a server quotes the one it read as a database or host name
    (``database "x:pw@y" does not exist`` for ``postgresql://u@h/x:pw@y``)."""
    pieces: set[str] = set()
    for start, stop in _secret_spans(url):
        for secret in (url[start:stop], unquote_plus(url[start:stop])):
            pieces.add(secret)
            pieces.update(_URL_SEPARATORS.split(secret))
    for piece in sorted(filter(None, pieces), key=len, reverse=True):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(piece)}(?![A-Za-z0-9])", HIDDEN, text)
    return text


#: What separates the words of a URL: a server quotes them one by one.
_URL_SEPARATORS = re.compile(r"[@:/?&=#\s]+")


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """Where ``url`` may hold a password, as ``(start, stop)`` indexes in order, none
    overlapping; more than the password, never less:

    - the whole string when it does not start with ``scheme://``: nothing in it can be told
      apart from a password (``hpo:pw@db``, ``postgresql//hpo:pw@db``, a bare password);
    - userinfo, wherever it sits (after ``//``, or in the path, ``postgresql:///u:pw@db``):
      from the first ``:`` to the last ``@``, as a password may hold ``@``, ``/`` or ``:``;
    - without an ``@``, a port that is not a number and all after it
      (``postgresql://u:pw/db``, a URL missing its host);
    - the value of a query key that names a secret (holding ``pass``, ``pwd``, ``secret``,
      ``token``, ``key`` or ``credential`` in any case: ``password``, ``sslpassword``,
      ``PASSWORD``, ``pass%77ord``), and the ``&``-pieces without ``=`` after it (a password's
      own unescaped ``&``).
    """
    scheme = _SCHEME.match(url)
    if scheme is None:
        return [(0, len(url))] if url else []
    begin = scheme.end()
    spans: list[tuple[int, int]] = []
    at, colon = url.rfind("@", begin), url.find(":", begin)
    if 0 <= colon < at:
        spans.append((colon + 1, at))
    elif at < 0:
        spans += _port_spans(url, begin)
    question = url.find("?", begin)
    if question >= 0:
        spans += _query_secret_spans(url, question + 1)
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


def _port_spans(url: str, begin: int) -> list[tuple[int, int]]:
    authority = re.match(r"[^/?#]*", url[begin:])
    host_port = authority.group() if authority else ""
    host_end = host_port.find("]") + 1 if host_port.startswith("[") else 0  # [::1]:5432
    colon = host_port.find(":", host_end)
    if colon < 0:
        return []
    port = host_port[colon + 1 :]
    if port.isascii() and port.isdigit():
        return []
    return [(begin + colon + 1, len(url))]


def _query_secret_spans(url: str, begin: int) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    hiding = False
    position = begin
    for piece in url[begin:].split("&"):
        key, equals, _ = piece.partition("=")
        if equals:
            hiding = bool(_SECRET_KEY.search(unquote_plus(key)))
            if hiding:
                spans.append((position + len(key) + 1, position + len(piece)))
        elif hiding:
            spans.append((position - 1, position + len(piece)))  # the "&" too
        position += len(piece) + 1
    return spans


#: A URL's scheme as SQLAlchemy reads it (``postgresql+psycopg://``), or gRPC's.
_SCHEME = re.compile(r"[\w+.\-]+://")
#: A query key that names a secret: ``password``, ``sslpassword``, ``passfile``, ``sslkey``...
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|credential", re.IGNORECASE)


def resolve_heartbeat(flag: float | None = None) -> float:
    """Seconds between a running trial's heartbeats: ``flag``, else ``$HPO_HEARTBEAT``, else 30.

    A trial whose heartbeat is older than twice this is taken as abandoned and run again.
    """
    if flag is not None:
        seconds, where = flag, "--heartbeat"
    else:
        value = os.environ.get("HPO_HEARTBEAT")
        if not value:
            return DEFAULT_HEARTBEAT
        try:
            seconds, where = float(value), "HPO_HEARTBEAT"
        except ValueError:
            raise StorageError(
                f"HPO_HEARTBEAT must be a number of seconds, got {value!r}; e.g. 30, or 0 for "
                "no heartbeat"
            ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise StorageError(
            f"{where} must be a finite number of seconds, 0 or more, got {seconds!r}; e.g. 30, "
            "or 0 for no heartbeat"
        )
    if seconds > HEARTBEAT.most:
        raise StorageError(f"{where} {HEARTBEAT.refusal(seconds)}")
    return seconds


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, or None for any other storage.

    A SQLite URI (``sqlite:///file:/data/hpo.db?mode=ro&uri=true``) names the file after
    ``file:``."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    if _is_sqlite_uri(url):
        path = urlsplit(parsed.database).path
        return Path(path) if path and path != ":memory:" else None
    return Path(parsed.database)


def _is_sqlite_uri(url: str) -> bool:
    parsed = make_url(url)
    uri = str(parsed.query.get("uri", "")).lower() in ("true", "1")
    return uri and (parsed.database or "").startswith("file:")


#: A table every Optuna storage has; a SQLite file without it holds no studies.
_OPTUNA_TABLE = "studies"


def _check_sqlite_file(url: str, path: Path, create: bool) -> None:
    """Refuse a SQLite storage path that is a folder, not a database, or (unless ``create``)
    missing or without Optuna's tables, before anything is written there."""
    shown = _without_secrets(str(path), url)  # a path is the URL's, userinfo typed in it too
    if path.is_dir():
        raise StorageError(
            f"the storage {shown} is a folder, not a SQLite database file; give a file in it, "
            f"e.g. --storage sqlite:///{_without_secrets((path / 'hpo.db').as_posix(), url)}"
        )
    if not path.exists():
        if not create:
            raise MissingDatabaseError(
                f"no database at {shown}; check the path or register a study first "
                f"(hpo register FILE --storage {masked_url(url)})"
            )
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise StorageError(
                f"cannot create the database {shown}: {_without_secrets(str(parent), url)} is "
                "a file, not a folder; check the path"
            )
        return
    if not path.is_file():
        raise StorageError(f"the storage {shown} is not a regular file; give a database file")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        finally:
            connection.close()
    except sqlite3.OperationalError as error:
        # Not the file's contents: SQLite could not open it (a WAL database needs its -shm
        # file beside it written, even to be read).
        raise StorageError(
            f"cannot open the SQLite database {shown} ({error})"
            + _without_secrets(_why_unwritable(path), url)
        ) from None
    except sqlite3.DatabaseError as error:
        raise StorageError(
            f"the storage {shown} is not a SQLite database ({error}); check the path, or give "
            "a new file name for a new storage"
        ) from None
    if not create and _OPTUNA_TABLE not in tables:
        what = "an empty file" if not tables else "a SQLite database without Optuna's tables"
        raise StorageError(
            f"no hpo studies at {shown}: it is {what}; check the path or register a study first"
        )


def _why_unwritable(path: Path) -> str:
    """Why SQLite may not have opened ``path``, as the end of a message: its folder is on a
    read-only file system, full, or not writable to this user; else ``""``."""
    folder = path.resolve().parent
    fix = (
        "; SQLite writes a -shm file beside a database in WAL mode even to read it: copy the "
        "database to a writable folder"
    )
    try:
        status = os.statvfs(folder)
    except (OSError, AttributeError):
        return ""
    if status.f_flag & getattr(os, "ST_RDONLY", 1):
        return f": {folder} is on a read-only file system{fix}"
    if status.f_bavail * status.f_frsize < 2**20:
        return f": the disk of {folder} is full; free some space and run the command again"
    if not os.access(folder, os.W_OK):
        return f": this user cannot write to {folder}{fix}"
    return ""


def check_database_exists(url: str) -> None:
    """Refuse ``url`` when it names a SQLite file that is missing, a folder, not a database,
    or holds no Optuna storage; what a command that only uses existing studies needs.
    Nothing is created. Other storages are checked when opened.

    Raises:
        StorageError: as said.
    """
    path = _parsed_sqlite_path(url)
    if path is not None:
        _check_sqlite_file(url, path, create=False)


def _parsed_sqlite_path(url: str) -> Path | None:
    if url.startswith("grpc://"):
        return None
    _backend_name(url)  # a URL that does not parse is refused here, with what to give
    return sqlite_path(url)


def _backend_name(url: str) -> str:
    """The database kind of ``url`` (``sqlite``, ``postgresql``, ...).

    Raises:
        StorageError: the URL does not parse.
    """
    try:
        return make_url(url).get_backend_name()
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        shown = masked_url(url)
        if shown == HIDDEN:
            raise StorageError(
                "cannot parse storage URL (not shown: without a scheme:// start, any of it "
                "could be a password); a storage URL starts with its kind, e.g. "
                "sqlite:///hpo.db or postgresql+psycopg://user@host/db"
            ) from None
        raise StorageError(
            f"cannot parse storage URL {shown!r}; expected e.g. sqlite:///hpo.db or "
            "postgresql+psycopg://user:password@host/db"
        ) from None


def open_backend(
    url: str, heartbeat: float | None = None, *, create: bool = True
) -> StorageBackend:
    """Open the storage at ``url`` as the backend of its kind, with settings that survive many
    workers and long trials.

    SQLite gets WAL journaling, commits without an fsync each (``synchronous=NORMAL``, safe
    with WAL), a 60 s busy timeout and a file lock beside the database; PostgreSQL gets
    ``pool_pre_ping``, hourly connection recycling (a worker reconnects after the server
    restarts) and an advisory lock; other databases get the same pool settings and no claim
    lock. With ``heartbeat`` (seconds), stale trials are failed and re-queued.

    ``grpc://host:port`` connects to an ``hpo storage-proxy``; heartbeats do not pass through
    it, so a trial whose worker is killed there stays RUNNING (see README).

    With ``create=False`` (every command but those that register studies) a SQLite file
    must already hold an Optuna storage: a mistyped path is refused, not created empty.

    Raises:
        StorageError: the URL is malformed, its driver is missing, or the database cannot be
            opened (a server down or unreachable, a wrong password, no such database; a SQLite
            path that is a folder or not a database, or is missing without ``create``).
    """
    if url.startswith("grpc://"):
        return GrpcProxyBackend(_open_grpc(url))
    kind = _backend_name(url)
    if kind == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            _check_sqlite_file(url, path, create)
            if not _is_sqlite_uri(url):  # (a URI's own options, e.g. mode=ro, rule it)
                _enable_wal(path)
        storage = _open_rdb(url, kind, {"connect_args": {"timeout": 60}}, heartbeat)
        if path is not None:
            # (An in-memory database lives in its one connection: it must not be closed.)
            _commit_without_fsync(storage.engine)
        return SQLiteBackend(storage, path)
    storage = _open_rdb(url, kind, {"pool_pre_ping": True, "pool_recycle": 3600}, heartbeat)
    if kind == "postgresql":
        return PostgreSQLBackend(storage)
    return RDBStorageBackend(storage)


def open_storage(
    url: str, heartbeat: float | None = None, *, create: bool = True
) -> optuna.storages.BaseStorage:
    """The Optuna storage at ``url``, for ``optuna.load_study`` and friends.

    ``open_backend(url, heartbeat, create=create).storage``; see ``open_backend``.

    Raises:
        StorageError: as ``open_backend``.
    """
    return open_backend(url, heartbeat, create=create).storage


def as_storage(
    storage: str | optuna.storages.BaseStorage | None, *, create: bool = False
) -> optuna.storages.BaseStorage:
    """An open storage from what the Python API accepts: a storage as it is, a URL opened, or
    None for ``resolve_storage_url()``'s default. A URL naming a SQLite file that does not
    exist is refused unless ``create``."""
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    return open_storage(resolve_storage_url(storage), create=create)


#: Tries at opening a database that other processes may be creating Optuna's tables in.
SCHEMA_RACE_ATTEMPTS = 5


def _open_rdb(
    url: str, kind: str, engine_kwargs: dict[str, object], heartbeat: float | None
) -> RDBStorage:
    heartbeat_kwargs: dict[str, Any] = {}
    if heartbeat:
        heartbeat_kwargs = {
            "heartbeat_interval": max(1, round(heartbeat)),
            "grace_period": max(2, round(2 * heartbeat)),
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_RETRY
            ),
        }
    try:
        for attempt in range(SCHEMA_RACE_ATTEMPTS):
            try:
                return RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat_kwargs)
            except (IntegrityError, OperationalError, ProgrammingError) as error:
                # Processes opening a new database at once all create Optuna's tables and
                # insert its version row; the ones that lose find them made on a retry.
                if attempt + 1 == SCHEMA_RACE_ATTEMPTS or not _lost_schema_race(error):
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")
    except ImportError as error:
        raise StorageError(f"cannot open {kind} storage: {error}") from None
    except ArgumentError as error:  # NoSuchModuleError: no dialect of that name
        raise StorageError(
            f"cannot open the storage {masked_url(url)}: {kind!r} is not a database SQLAlchemy "
            f"knows ({_without_secrets(str(error), url)}); use sqlite:///FILE, "
            "postgresql+psycopg://user@host/db, or grpc://HOST:PORT for an hpo storage-proxy"
        ) from None
    except RuntimeError as error:
        # Optuna refuses a schema written by another Optuna version.
        if "schema" not in str(error):
            raise
        raise StorageError(
            f"cannot open the storage {masked_url(url)}: {_without_secrets(str(error), url)}"
        ) from None
    except (DBAPIError, sqlite3.Error) as error:
        # The database's own first line says what is wrong: refused, a password, no such db.
        # (A driver may quote what it was given, a query option's password among it.)
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        reason = _without_secrets(reason, url)
        transient = any(sign in reason for sign in _SERVER_DOWN)
        raise (StorageUnreachableError if transient else StorageError)(
            f"cannot open the storage {masked_url(url)}: {reason}. Check that the database "
            "server is running and reachable, and the URL's host, port, user, password and "
            "database."
        ) from None


#: What a PostgreSQL server says (or its client, for it) while it is down, starting up,
#: shutting down or restarting: a reason to try again, unlike a wrong password.
_SERVER_DOWN = (
    "Connection refused",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "terminating connection due to administrator command",
    "server closed the connection unexpectedly",
)


def _lost_schema_race(error: Exception) -> bool:
    """Whether ``error`` is another process having created Optuna's tables first: a duplicate
    row or type (IntegrityError), or a table that already exists (SQLite, PostgreSQL)."""
    return isinstance(error, IntegrityError) or "already exists" in str(error)


#: Seconds to wait for an ``hpo storage-proxy`` to answer before giving up on it.
GRPC_CONNECT_TIMEOUT = 5.0


def _open_grpc(url: str) -> optuna.storages.BaseStorage:
    address = urlsplit(url)
    try:
        port = address.port
    except ValueError:  # not a number, or past 65535
        port = None
    if not address.hostname or not port:
        raise StorageError(
            "a gRPC storage URL needs a host and a port, e.g. grpc://127.0.0.1:13000; "
            f"got {masked_url(url)!r}"
        )
    try:
        from optuna.storages import GrpcStorageProxy
    except ImportError as error:
        raise StorageError(f"cannot use {masked_url(url)}: {error}") from None
    proxy = GrpcStorageProxy(host=address.hostname, port=port)
    try:
        proxy.wait_server_ready(timeout=GRPC_CONNECT_TIMEOUT)
    except ConnectionError:
        proxy.close()
        raise StorageError(
            f"no storage proxy answers at {masked_url(url)} (waited {GRPC_CONNECT_TIMEOUT:g} s); "
            "start one there with hpo storage-proxy --port PORT, or check the host and port "
            "(and the SSH tunnel, if one leads there)"
        ) from None
    return proxy


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


def _enable_wal(path: Path) -> None:
    # WAL lets readers (the dashboard, progress polling) run beside a writer; the mode is
    # stored in the file, so setting it once per process is enough.
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        connection = sqlite3.connect(path, timeout=60)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()
    except sqlite3.OperationalError as error:
        if "readonly" in str(error):
            return  # a read-only file is read as it is; a write says so when it comes
        raise StorageError(f"cannot open the SQLite database {path}: {error}") from None


def _commit_without_fsync(engine: Engine) -> None:
    # With WAL, synchronous=NORMAL syncs the log at checkpoints instead of at every commit,
    # and a trial writes twenty times or more (each parameter, each fold's report, its
    # attributes; the saving is measured in docs/benchmarks.md). A killed worker loses nothing it
    # committed; a power cut or an OS crash can roll back the last commits but leaves the file
    # consistent (https://www.sqlite.org/pragma.html#pragma_synchronous).
    event.listen(engine, "connect", _set_synchronous_normal)
    engine.dispose()  # connections opened before the listener (Optuna's schema check) close


def _set_synchronous_normal(connection: sqlite3.Connection, _: object) -> None:
    connection.execute("PRAGMA synchronous=NORMAL")
