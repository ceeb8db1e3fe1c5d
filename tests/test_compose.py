"""docker-compose.yml, checked without a Docker engine: its shape, and each hpo service's own
command run as a plain process against the real local PostgreSQL (hostname, environment and
the mounted password secret mapped)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import yaml
from conftest import REPO, free_port, get_json, postgres_base_url, served, tiny_spec
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
HPO_SERVICES = [name for name, service in SERVICES.items() if service["command"][0] == "hpo"]
SECRET = "/run/secrets/postgres_password"


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, and $$ for a literal $."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"compose would refuse to start: {arg}")
        return arg or ""

    value = re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", substitute, value)
    return value.replace("$$", "$")


def secret_mounts(name: str, env: dict[str, str]) -> dict[str, str]:
    """Where the service finds each of its secrets (/run/secrets/NAME, compose's short syntax)
    and the host file compose would mount there."""
    mounts = {}
    for secret in SERVICES[name].get("secrets", []):
        assert isinstance(secret, str), "short syntax: compose ignores uid/gid/mode of a file"
        mounts[f"/run/secrets/{secret}"] = interpolate(COMPOSE["secrets"][secret]["file"], env)
    return mounts


def service_process(name: str, env: dict[str, str], postgres: str) -> tuple[list[str], dict]:
    """The service's command and environment as a local process would run them: the database
    host is the test cluster's, a path of a mounted secret the host file's."""
    service = SERVICES[name]
    command = [interpolate(part, env) for part in service["command"]]
    assert command[0] == "hpo"
    mounts = secret_mounts(name, env)
    environment = {
        key: mounts.get(value, value)
        for key, value in (
            (key, interpolate(str(value), env)) for key, value in service["environment"].items()
        )
    }
    url = make_url(postgres)
    environment["HPO_STORAGE"] = environment["HPO_STORAGE"].replace(
        "@postgres:5432/", f"@{url.host}:{url.port}/"
    )
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("HPO_", "POSTGRES_"))}
    return [sys.executable, "-m", "hpo", *command[1:]], {**inherited, **environment}


def test_the_compose_file_keeps_the_database_private_and_secrets_out() -> None:
    assert "ports" not in SERVICES["postgres"]
    assert "healthcheck" in SERVICES["postgres"]
    assert any(v.startswith("pgdata:") for v in SERVICES["postgres"]["volumes"])
    for port in SERVICES["dashboard"]["ports"]:
        assert port.startswith("127.0.0.1:")
    assert SERVICES["worker"]["deploy"]["replicas"].startswith("${HPO_WORKERS")
    threads = {k: v for k, v in SERVICES["worker"]["environment"].items() if "THREADS" in k}
    assert threads == dict.fromkeys(
        ("HPO_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"), "${HPO_THREADS:-1}"
    )
    assert SERVICES["worker"]["environment"]["HPO_STORAGE"].startswith("postgresql+psycopg://")
    assert set(HPO_SERVICES) == {"register", "worker", "worker-gpu", "dashboard"}
    gpu = SERVICES["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert SERVICES["worker"]["depends_on"]["register"]["condition"] == (
        "service_completed_successfully"
    )
    assert (REPO / "workers" / "Dockerfile").exists()


def test_the_password_is_a_mounted_secret_in_no_environment() -> None:
    """No container's environment holds the password: postgres and every hpo service get the
    secret file, and a _FILE variable naming it."""
    for name, service in SERVICES.items():
        environment = {k: str(v) for k, v in service.get("environment", {}).items()}
        for key, value in environment.items():
            assert "PASSWORD" not in key or key.endswith("_PASSWORD_FILE"), (name, key)
            assert "PASSWORD" not in value.replace("_PASSWORD_FILE", ""), (name, key, value)
        if "HPO_STORAGE" in environment:
            url = make_url(interpolate(environment["HPO_STORAGE"], {}))
            assert url.password is None, name
            assert environment["HPO_STORAGE_PASSWORD_FILE"] == SECRET, name
        assert ("postgres_password" in service.get("secrets", [])) == (
            name == "postgres" or name in HPO_SERVICES
        ), name
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == SECRET
    for name in HPO_SERVICES:
        assert "HPO_STORAGE" in SERVICES[name]["environment"], name
        assert secret_mounts(name, {}) == {SECRET: "./secrets/postgres_password"}
    # the default secret file is kept out of git; .env.example sets no password
    assert "/secrets/" in (REPO / ".gitignore").read_text().splitlines()
    example = (REPO / ".env.example").read_text()
    assert not re.search(r"^POSTGRES_PASSWORD=", example, re.MULTILINE)
    assert "#POSTGRES_PASSWORD_FILE=./secrets/postgres_password" in example
    # .env may name another file
    assert secret_mounts("worker", {"POSTGRES_PASSWORD_FILE": "/etc/hpo/pg"}) == {
        SECRET: "/etc/hpo/pg"
    }
    # and needs to set nothing: no ${VAR:?...} is left to refuse a start
    assert ":?" not in (REPO / "docker-compose.yml").read_text()


#: @ / : % and a space would each break a password written into a URL as it is
AWKWARD_PASSWORD = "p@ss/w:rd%40 " + uuid.uuid4().hex[:8]


@pytest.fixture
def awkward_role(postgres_url: str) -> Iterator[tuple[str, str]]:
    """A login role whose password holds ``@ / : %``, with the use of the test's database:
    made by the test cluster's hpo_admin.create_test_role (scripts/postgres.sh; the hpo role
    itself may not create roles). Yields (role, password)."""
    base = postgres_base_url()
    assert base is not None
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    found = "SELECT to_regprocedure('hpo_admin.create_test_role(text,text)') IS NOT NULL"
    with admin.connect() as connection:
        if not connection.execute(sqlalchemy.text(found)).scalar():
            admin.dispose()
            message = (
                "the test PostgreSQL has no hpo_admin.create_test_role: it was made by an "
                "earlier scripts/postgres.sh; run `scripts/postgres.sh start` once it is unused"
            )
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    role = f"hpo_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(
            sqlalchemy.text("SELECT hpo_admin.create_test_role(:role, :password)"),
            {"role": role, "password": AWKWARD_PASSWORD},
        )
    database = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with database.connect() as connection:
            connection.execute(sqlalchemy.text(f'GRANT ALL ON SCHEMA public TO "{role}"'))
        yield role, AWKWARD_PASSWORD
    finally:
        with database.connect() as connection:  # its tables, before the database goes
            connection.execute(sqlalchemy.text(f'DROP OWNED BY "{role}"'))
        database.dispose()
        with admin.connect() as connection:
            connection.execute(
                sqlalchemy.text("SELECT hpo_admin.drop_test_role(:role)"), {"role": role}
            )
        admin.dispose()


@pytest.mark.slow
def test_register_worker_and_dashboard_services_run_against_postgresql(
    tmp_path: Path, postgres_url: str, awkward_role: tuple[str, str]
) -> None:
    """The services log in with the secret file's password, one that would break in a URL."""
    role, password = awkward_role
    url = make_url(postgres_url)
    (tmp_path / "studies").mkdir()
    spec = tiny_spec(name="compose-study", budget={"trials": 4})
    (tmp_path / "studies" / "compose.yaml").write_text(yaml.safe_dump(spec))
    secret = tmp_path / "secrets" / "postgres_password"
    secret.parent.mkdir(mode=0o700)
    secret.write_text(password + "\n")
    env = {
        "POSTGRES_USER": role,
        "POSTGRES_PASSWORD_FILE": str(secret),
        "POSTGRES_DB": url.database,
        "HPO_STUDY_FILE": "compose.yaml",
        "HPO_STUDY": "compose-study",
        "HPO_HEARTBEAT": "5",
        "HPO_THREADS": "2",
    }

    command, environment = service_process("register", env, postgres_url)
    assert environment["HPO_STORAGE_PASSWORD_FILE"] == str(secret)
    assert password not in str(environment) and password not in str(command)
    registered = subprocess.run(
        command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert registered.returncode == 0, registered.stderr
    assert password not in registered.stdout + registered.stderr

    command, environment = service_process("worker", env, postgres_url)
    workers = [
        subprocess.Popen(
            command,
            env=environment,
            cwd=tmp_path,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(2)
    ]  # two replicas
    logs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    assert not any(password in log for log in logs)
    for log in logs:  # each replica runs on HPO_THREADS, not on all the host's cores
        assert "of compose-study on cpu, 2 torch threads" in log, log
    study = optuna.load_study(study_name="compose-study", storage=postgres_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4

    command, environment = service_process("dashboard", env, postgres_url)
    port = free_port()
    command = [*command[:-1], str(port)]  # --port: the container's 8080 may be taken here
    command[command.index("0.0.0.0")] = "127.0.0.1"  # the container's published mapping
    with served(command, env=environment, cwd=tmp_path):
        body = get_json(f"http://127.0.0.1:{port}/api/studies")
        assert [s["study_name"] for s in body["study_summaries"]] == ["compose-study"]


def test_a_missing_secret_file_is_refused_by_name(tmp_path: Path) -> None:
    """Compose refuses a secret file that does not exist (the engine will not bind-mount it;
    old versions made a folder there); hpo, given a path it cannot read or an empty file, says
    which, before it opens the storage."""
    env = {"POSTGRES_PASSWORD_FILE": str(tmp_path / "absent")}
    command, environment = service_process("worker", env, "postgresql+psycopg://u@127.0.0.1:1/d")
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    said = " ".join(done.stderr.split())  # as one line: the console wraps it
    assert done.returncode != 0
    assert f"cannot read the password file {tmp_path / 'absent'} " in said, said
    (tmp_path / "empty").write_text("")
    environment["HPO_STORAGE_PASSWORD_FILE"] = str(tmp_path / "empty")
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    said = " ".join(done.stderr.split())
    assert done.returncode != 0
    assert f"the password file {tmp_path / 'empty'} (HPO_STORAGE_PASSWORD_FILE) is empty" in said
