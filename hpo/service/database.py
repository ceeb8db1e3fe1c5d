"""``hpo db``: a private PostgreSQL in a user's folder, started without root.

On a cluster the workers of a study share one PostgreSQL, and a user rarely has one to hand.
``start_database`` makes a cluster in a folder of the user's (``initdb``, the PostgreSQL
programs found on the machine), with one role, ``hpo``, whose password is generated into a
file only the user can read, and starts it (``pg_ctl``) on 127.0.0.1 unless told otherwise.
Workers get ``HPO_STORAGE`` (a URL without the password) and ``HPO_STORAGE_PASSWORD_FILE``;
``hpo db start`` prints both as ``export`` lines, so ``eval "$(hpo db start)"`` sets them.

Listening beyond loopback (``host``: a login node's address, for the compute nodes) is only
done when asked: password authentication (SCRAM) is required from every address, and the
caller prints a warning, since the traffic is not encrypted.

PostgreSQL refuses to run as root; run as root (a container, CI), the server runs as another
user (``user``, default ``postgres``), who then owns the folder and the password file, as
``scripts/postgres.sh`` does.

Files in the folder (mode 700): ``data/`` (the cluster), ``password`` (600), ``settings.json``
(the port and host it was started on) and ``server.log``.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.errors import HpoError
from hpo.service.filesystems import network_mount

#: The role and database the workers use.
ROLE = DATABASE = "hpo"
#: The ports a first start tries, in order, before letting the system choose one.
PORTS = range(54320, 54420)
#: Where Linux distributions put the server's programs when they are not on PATH.
BIN_GLOBS = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # PGDG packages on RHEL, Rocky, Alma
    "/usr/local/pgsql/bin",  # built from source
    "/opt/homebrew/opt/postgresql*/bin",
    "/usr/local/opt/postgresql*/bin",
)
#: Seconds ``pg_ctl`` waits for the server to start or stop.
PG_CTL_WAIT = 60

INSTALL_HINT = (
    "install PostgreSQL's server programs: Debian/Ubuntu `sudo apt-get install postgresql`, "
    "RHEL/Rocky `sudo dnf install postgresql-server`; without root `conda install -c "
    "conda-forge postgresql` (puts them on PATH) or your cluster's module (`module load "
    "postgresql`); or give the folder that holds initdb and pg_ctl with --bin"
)


@dataclass
class PrivateDatabase:
    """A private PostgreSQL cluster and how workers reach it."""

    folder: Path
    host: str
    port: int
    running: bool = False
    started: bool = False  # by this call
    warnings: list[str] = field(default_factory=list)

    @property
    def password_file(self) -> Path:
        return self.folder / "password"

    @property
    def url(self) -> str:
        """The storage URL, without the password (that is in ``password_file``)."""
        host = socket.getfqdn() if self.host in ("0.0.0.0", "::", "*") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"postgresql+psycopg://{ROLE}@{host}:{self.port}/{DATABASE}"

    def exports(self) -> str:
        """The shell lines that point hpo at it: ``eval "$(hpo db start)"``."""
        return (
            f"export HPO_STORAGE={self.url}\n"
            f"export HPO_STORAGE_PASSWORD_FILE={_shell_word(str(self.password_file))}\n"
        )


@dataclass(frozen=True)
class _Owner:
    """The user the server runs as and its files belong to: this one, or (as root) another."""

    name: str
    uid: int
    gid: int
    home: Path

    @property
    def prefix(self) -> list[str]:
        """What runs a program as this user."""
        return [] if self.uid == os.getuid() else ["runuser", "-u", self.name, "--"]

    def own(self, path: Path) -> None:
        if self.uid != os.getuid():
            os.chown(path, self.uid, self.gid, follow_symlinks=False)


def _owner(user: str | None) -> _Owner:
    """The user PostgreSQL runs as: this one; as root ``user``, else ``postgres``.

    Raises:
        HpoError: root without such a user, or ``user`` asked for by someone but root.
    """
    me = pwd.getpwuid(os.getuid())
    if os.getuid() != 0:
        if user is not None and user != me.pw_name:
            raise HpoError(f"--user {user}: only root runs the database as another user")
        return _Owner(me.pw_name, me.pw_uid, me.pw_gid, Path(me.pw_dir))
    name = user or "postgres"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise HpoError(
            f"PostgreSQL does not run as root, and there is no user {name!r} to run it as: run "
            "hpo db as the user who runs the study, or give one with --user"
        ) from None
    if entry.pw_uid == 0:
        raise HpoError("PostgreSQL does not run as root: give another user with --user")
    return _Owner(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def default_folder(user: str | None = None) -> Path:
    """``$XDG_DATA_HOME/hpo/postgres``, else ``~/.local/share/hpo/postgres``; as root, that
    folder of the user the server runs as (``user``, else ``postgres``)."""
    if os.getuid() == 0:
        return _owner(user).home / ".local" / "share" / "hpo" / "postgres"
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "hpo" / "postgres"


def find_postgres_bin(
    bin_dir: str | Path | None = None, globs: tuple[str, ...] = BIN_GLOBS
) -> Path:
    """The folder of PostgreSQL's server programs (``initdb``, ``pg_ctl``): ``bin_dir``, else
    the one on PATH, else the newest version under ``globs``.

    Raises:
        HpoError: none there, with how to install them.
    """
    if bin_dir is not None:
        folder = Path(bin_dir)
        if _has_server(folder):
            return folder
        raise HpoError(f"no initdb and pg_ctl in {folder}; {INSTALL_HINT}")
    on_path = shutil.which("pg_ctl")
    if on_path and _has_server(Path(on_path).resolve().parent):
        return Path(on_path).resolve().parent
    found = [Path(f) for pattern in globs for f in glob.glob(pattern) if _has_server(Path(f))]
    if not found:
        where = ", ".join(globs)
        raise HpoError(
            f"no PostgreSQL server found (initdb and pg_ctl, on PATH or in {where}); "
            + INSTALL_HINT
        )
    return max(found, key=lambda f: [int(n) for n in re.findall(r"\d+", str(f))] or [0])


def _has_server(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def start_database(
    folder: str | Path | None = None,
    *,
    port: int | None = None,
    host: str | None = None,
    bin_dir: str | Path | None = None,
    user: str | None = None,
) -> PrivateDatabase:
    """Start the private cluster in ``folder`` (made, with its password, on the first start).

    Args:
        folder: where it lives. Default: ``default_folder()``.
        port: its port. Default: the one it ran on before, else the first free of
            ``PORTS`` (54320-54419).
        host: the address it listens on besides 127.0.0.1. Default: the one it ran on
            before, else 127.0.0.1 only. Any other (a login node's address, ``0.0.0.0``)
            lets the machines that reach it connect, with the password.
        bin_dir: where PostgreSQL's programs are. Default: ``find_postgres_bin``.
        user: as root, the user the server runs as. Default: ``postgres``.

    Returns:
        The database; ``started`` False when it was already running (as asked).

    Raises:
        HpoError: root without a user to run it as, the folder is not safe, the programs are
            missing, the port is taken, it runs with another port or host, or PostgreSQL
            refused to start.
    """
    owner = _owner(user)
    folder = Path(folder) if folder is not None else default_folder(user)
    settings = _read_settings(folder)
    before_host, before_port = str(settings.get("host", "127.0.0.1")), int(settings.get("port", 0))
    db = PrivateDatabase(folder.absolute(), host or before_host, port or before_port)
    _check_host(db.host)
    programs = find_postgres_bin(bin_dir or settings.get("bin"))
    data = db.folder / "data"
    if _is_running(programs, data, owner):
        db.host, db.port, db.running = before_host, before_port, True
        if (host is not None and host != db.host) or (port is not None and port != db.port):
            raise HpoError(
                f"the database in {db.folder} runs on {db.host}:{db.port}; to move it, stop "
                f"it first: hpo db stop --dir {_shell_word(str(db.folder))}"
            )
        return db
    _make_folder(db.folder, owner)
    mount = network_mount(db.folder)
    if mount is not None:
        db.warnings.append(
            f"{db.folder} is on a network file system ({mount.fstype} at {mount.point}): "
            "PostgreSQL needs a hard, synchronous mount there; a local disk of the machine it "
            "runs on (--dir) is safer"
        )
    if not db.port:
        db.port = _free_port(db.host)
    if not (data / "PG_VERSION").exists():
        _init_cluster(programs, db, owner)
    _write_settings(programs, db, owner)
    log = db.folder / "server.log"
    done = subprocess.run(
        [*owner.prefix, str(programs / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t",
         str(PG_CTL_WAIT), "start"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise HpoError(
            f"PostgreSQL did not start on {db.host}:{db.port}: {_last_lines(log)}"
            f"{' (is the port taken? --port another)' if 'in use' in _last_lines(log) else ''}"
        )
    db.running = db.started = True
    _create_database(db)
    return db


def stop_database(
    folder: str | Path | None = None,
    bin_dir: str | Path | None = None,
    user: str | None = None,
) -> bool:
    """Stop the private cluster in ``folder``; False when it was not running.

    Raises:
        HpoError: the programs are missing, or PostgreSQL did not stop.
    """
    owner = _owner(user)
    folder = Path(folder) if folder is not None else default_folder(user)
    settings = _read_settings(folder)
    programs = find_postgres_bin(bin_dir or settings.get("bin"))
    data = folder / "data"
    if not _is_running(programs, data, owner):
        return False
    done = subprocess.run(
        [*owner.prefix, str(programs / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t",
         str(PG_CTL_WAIT), "stop"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise HpoError(f"PostgreSQL in {folder} did not stop: {done.stderr.strip()}")
    return True


def database_status(folder: str | Path | None = None, user: str | None = None) -> PrivateDatabase:
    """The private cluster in ``folder``, running or not.

    Raises:
        HpoError: there is none (never started there).
    """
    owner = _owner(user)
    folder = Path(folder) if folder is not None else default_folder(user)
    settings = _read_settings(folder)
    if not settings:
        raise HpoError(f"no database in {folder}; start one with: hpo db start --dir {folder}")
    db = PrivateDatabase(folder.absolute(), str(settings["host"]), int(settings["port"]))
    try:
        db.running = _is_running(find_postgres_bin(settings.get("bin")), folder / "data", owner)
    except HpoError:
        db.running = False
    return db


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.1, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_host(host: str) -> None:
    if host in ("0.0.0.0", "::", "*"):
        return
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if host.lower() != "localhost":
            raise HpoError(
                f"--host must be an address of this machine (127.0.0.1, a login node's IP, "
                f"0.0.0.0 for all), got {host!r}"
            ) from None


def _make_folder(folder: Path, owner: _Owner) -> None:
    """Make ``folder`` (700, the owner's) or check it is the owner's alone: PostgreSQL's files
    and the password live in it."""
    if not folder.exists() and not folder.is_symlink() and owner.prefix and folder.parent.is_dir():
        folder.mkdir(mode=0o700)  # root, for the owner, in a folder root chose
        owner.own(folder)
    elif not folder.exists() and not folder.is_symlink():
        # (as the owner, so that the folders it makes in its home are its own)
        made = subprocess.run(
            [*owner.prefix, "mkdir", "-p", "-m", "700", "--", str(folder)],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            raise HpoError(f"cannot make {folder} as {owner.name}: {made.stderr.strip()}")
    info = folder.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise HpoError(f"{folder} is not a folder (a symlink or a file); give another with --dir")
    if info.st_uid != owner.uid:
        raise HpoError(f"{folder} belongs to another user than {owner.name}; give another --dir")
    if stat.S_IMODE(info.st_mode) & 0o077:
        folder.chmod(0o700)  # the owner's: close it, the password goes in it
    done = subprocess.run([*owner.prefix, "test", "-w", str(folder), "-a", "-x", str(folder)])
    if done.returncode != 0:
        raise HpoError(f"{owner.name} cannot enter {folder}; give a folder it can reach (--dir)")


def _init_cluster(programs: Path, db: PrivateDatabase, owner: _Owner) -> None:
    password = db.password_file
    if not password.exists():
        fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(18) + "\n")
    password.chmod(0o600)
    owner.own(password)
    done = subprocess.run(
        [*owner.prefix, str(programs / "initdb"), "-D", str(db.folder / "data"), "-U", ROLE,
         "--auth=scram-sha-256", f"--pwfile={password}", "-E", "UTF8"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise HpoError(f"initdb failed in {db.folder / 'data'}: {done.stderr.strip()}")


def _write_settings(programs: Path, db: PrivateDatabase, owner: _Owner) -> None:
    """Where it listens and who may connect, written at every start: 127.0.0.1 (and the host
    asked for), no Unix socket, the password required from every address."""
    data = db.folder / "data"
    addresses = "127.0.0.1" if is_loopback(db.host) else f"127.0.0.1,{db.host}"
    if db.host in ("0.0.0.0", "::", "*"):
        addresses = "*"
    _write(
        owner,
        data / "hpo.conf",
        "# Written by hpo db start at every start.\n"
        f"listen_addresses = '{addresses}'\n"
        f"port = {db.port}\n"
        "unix_socket_directories = ''\n"
        "max_connections = 200\n"
        "password_encryption = 'scram-sha-256'\n",
    )
    conf = data / "postgresql.conf"
    if "include_if_exists = 'hpo.conf'" not in conf.read_text():
        with conf.open("a") as file:
            file.write("\ninclude_if_exists = 'hpo.conf'\n")
    hba = [
        "# Written by hpo db start at every start: the password (SCRAM) from every address.",
        f"host all {ROLE} 127.0.0.1/32 scram-sha-256",
        f"host all {ROLE} ::1/128 scram-sha-256",
    ]
    if not is_loopback(db.host):
        hba += [f"host all {ROLE} 0.0.0.0/0 scram-sha-256", f"host all {ROLE} ::/0 scram-sha-256"]
    _write(owner, data / "pg_hba.conf", "\n".join(hba) + "\n")
    settings = {"host": db.host, "port": db.port, "bin": str(programs), "user": owner.name}
    _write(owner, db.folder / "settings.json", json.dumps(settings, indent=1) + "\n")


def _write(owner: _Owner, path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    owner.own(path)


def _read_settings(folder: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((folder / "settings.json").read_text()))
    except (OSError, ValueError):
        return {}


def _is_running(programs: Path, data: Path, owner: _Owner) -> bool:
    if not (data / "PG_VERSION").exists():
        return False
    done = subprocess.run(
        [*owner.prefix, str(programs / "pg_ctl"), "-D", str(data), "status"],
        capture_output=True,
        text=True,
    )
    return done.returncode == 0


def _free_port(host: str) -> int:
    bind = "0.0.0.0" if not is_loopback(host) else "127.0.0.1"
    for port in PORTS:
        with socket.socket() as sock:
            try:
                sock.bind((bind, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind((bind, 0))
        return int(sock.getsockname()[1])


def _create_database(db: PrivateDatabase) -> None:
    """The ``hpo`` database, on the first start (a connection over 127.0.0.1, with the
    password from its file: nothing on a command line)."""
    import psycopg

    password = db.password_file.read_text().splitlines()[0]
    with psycopg.connect(
        host="127.0.0.1", port=db.port, user=ROLE, password=password, dbname="postgres",
        autocommit=True, connect_timeout=30,
    ) as connection:  # fmt: skip
        found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if found.fetchone() is None:
            connection.execute(f'CREATE DATABASE "{DATABASE}"')


def _last_lines(log: Path, count: int = 3) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(lines[-count:]) or "no log"


def _shell_word(text: str) -> str:
    import shlex

    return shlex.quote(text)
