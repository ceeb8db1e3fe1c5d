"""``hpo db``: a private PostgreSQL a user starts without root, for real (the machine's own
PostgreSQL programs; as root the server runs as the postgres user, as scripts/postgres.sh
does): the password in a file only its user reads, 127.0.0.1 unless asked, the password
required from everywhere, a study run on it, stopped and started again with its data."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg
import pytest
from conftest import run_hpo, tiny_spec
from sqlalchemy.engine import make_url

from hpo.errors import HpoError
from hpo.service.database import find_postgres_bin

pytestmark = pytest.mark.slow  # starts PostgreSQL servers


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder for the database, one the server's user can reach (as root: the postgres
    user, which cannot enter pytest's private temp folders)."""
    try:
        find_postgres_bin()
    except HpoError as missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the hpo db tests: {missing}")
        pytest.skip(str(missing))
    parent = Path(tempfile.mkdtemp(prefix="hpo-db-test-"))
    parent.chmod(0o755)
    try:
        yield parent / "db"
    finally:
        run_hpo("db", "stop", "--dir", str(parent / "db"))
        shutil.rmtree(parent, ignore_errors=True)


def exports(stdout: str) -> dict[str, str]:
    found = dict(re.findall(r"^export (\w+)=(.*)$", stdout, re.MULTILINE))
    assert set(found) == {"HPO_STORAGE", "HPO_STORAGE_PASSWORD_FILE"}, stdout
    return found


def connect(url: str, password: str | None) -> psycopg.Connection:
    parsed = make_url(url)
    return psycopg.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.username,
        dbname=parsed.database,
        password=password,
        connect_timeout=10,
    )


def test_a_private_database_serves_a_study_and_keeps_it_across_a_restart(
    folder: Path, tmp_path: Path
) -> None:
    started = run_hpo("db", "start", "--dir", str(folder))
    assert started.returncode == 0, started.stderr
    env = exports(started.stdout)
    url, password_file = env["HPO_STORAGE"], Path(env["HPO_STORAGE_PASSWORD_FILE"])
    assert re.fullmatch(r"postgresql\+psycopg://hpo@127\.0\.0\.1:\d+/hpo", url)  # no password
    assert "warning" not in started.stderr.lower()

    # the password: a file of the server's user, readable by it alone, in a folder of its own
    owner = "postgres" if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
    for path, mode in ((folder, 0o700), (password_file, 0o600)):
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == mode and pwd.getpwuid(info.st_uid).pw_name == owner
    password = password_file.read_text().splitlines()[0]
    assert len(password) >= 32
    for name in ("server.log", "settings.json"):
        assert password not in (folder / name).read_text()

    with connect(url, password) as connection:
        listening = connection.execute("SHOW listen_addresses").fetchone()
        assert listening == ("127.0.0.1",)
        assert connection.execute("SHOW unix_socket_directories").fetchone() == ("",)
    with pytest.raises(psycopg.OperationalError, match="password"):
        connect(url, None).close()  # a password is required, even on 127.0.0.1
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(url, "wrong").close()

    # a study, as a user runs it: the two exports and nothing else
    spec = tmp_path / "study.yaml"
    import yaml

    spec.write_text(yaml.safe_dump(tiny_spec(budget={"trials": 2})))
    env_run = {**env, "HPO_STORAGE_PASSWORD_FILE": str(password_file)}
    ran = run_hpo("run", str(spec), "--results", str(tmp_path / "results"), env=env_run)
    assert ran.returncode == 0, ran.stderr
    assert password not in ran.stdout + ran.stderr

    # again: nothing changes; url says the same
    again = run_hpo("db", "start", "--dir", str(folder))
    assert again.returncode == 0 and exports(again.stdout) == env
    assert "already running" in again.stderr
    shown = run_hpo("db", "url", "--dir", str(folder))
    assert shown.stdout.strip() == url
    moved = run_hpo("db", "start", "--dir", str(folder), "--port", "5999")
    assert moved.returncode == 1 and "stop it first" in " ".join(moved.stderr.split())

    # stopped: refused; started again: the same port, password and study
    stopped = run_hpo("db", "stop", "--dir", str(folder))
    assert stopped.returncode == 0 and "stopped" in stopped.stderr
    with pytest.raises(psycopg.OperationalError):
        connect(url, password).close()
    assert "not running" in run_hpo("db", "url", "--dir", str(folder)).stderr
    restarted = run_hpo("db", "start", "--dir", str(folder))
    assert restarted.returncode == 0 and exports(restarted.stdout) == env
    storage_url = make_url(url).set(password=password).render_as_string(hide_password=False)
    study = optuna.load_study(study_name="tiny-digits", storage=storage_url)
    assert len(study.trials) == 2


def test_listening_beyond_loopback_is_asked_for_warned_and_password_only(folder: Path) -> None:
    started = run_hpo("db", "start", "--dir", str(folder), "--host", "0.0.0.0")
    assert started.returncode == 0, started.stderr
    warning = " ".join(started.stderr.split())
    assert "warning: the database listens on 0.0.0.0" in warning
    assert "not encrypted" in warning
    url = exports(started.stdout)["HPO_STORAGE"]
    assert "@127.0.0.1:" not in url and "@0.0.0.0:" not in url  # this machine's name
    hba = [
        line.split()
        for line in (folder / "data" / "pg_hba.conf").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert all(line[-1] == "scram-sha-256" for line in hba)  # no trust, no peer
    assert ["host", "all", "hpo", "0.0.0.0/0", "scram-sha-256"] in hba
    password = (folder / "password").read_text().splitlines()[0]
    local = re.sub(r"@[^:/]+:", "@127.0.0.1:", url)
    with connect(local, password) as connection:
        assert connection.execute("SHOW listen_addresses").fetchone() == ("*",)
    # started again without --host, it keeps what it was asked for
    again = run_hpo("db", "start", "--dir", str(folder))
    assert again.returncode == 0 and "already running" in again.stderr


def test_without_postgresql_it_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HpoError) as missing:
        find_postgres_bin(globs=(str(tmp_path / "no-such" / "*" / "bin"),))
    message = str(missing.value)
    assert "no PostgreSQL server found" in message
    assert "apt-get install postgresql" in message and "conda-forge" in message
    with pytest.raises(HpoError, match="no initdb and pg_ctl in"):
        find_postgres_bin(tmp_path)


def test_a_folder_that_is_a_symlink_is_refused(folder: Path, tmp_path: Path) -> None:
    folder.parent.joinpath("elsewhere").mkdir()
    folder.symlink_to(folder.parent / "elsewhere")
    refused = run_hpo("db", "start", "--dir", str(folder))
    assert refused.returncode == 1 and "is not a folder (a symlink" in refused.stderr


def test_the_user_it_runs_as_is_roots_choice_only(folder: Path) -> None:
    if os.getuid() == 0:
        refused = run_hpo("db", "start", "--dir", str(folder), "--user", "no-such-user-hpo")
        assert refused.returncode == 1
        assert "no user 'no-such-user-hpo' to run it as" in " ".join(refused.stderr.split())
        root = run_hpo("db", "start", "--dir", str(folder), "--user", "root")
        assert root.returncode == 1 and "does not run as root" in root.stderr
    else:
        refused = run_hpo("db", "start", "--dir", str(folder), "--user", "root")
        assert refused.returncode == 1 and "only root runs the database as another" in (
            " ".join(refused.stderr.split())
        )
