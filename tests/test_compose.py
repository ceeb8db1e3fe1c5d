"""docker-compose.yml, checked without a Docker engine: its shape, and each hpo service's own
command run as a plain process against the real local PostgreSQL (hostname and env mapped)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import REPO, free_port, get_json, served, tiny_spec
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


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


def service_process(name: str, env: dict[str, str], postgres: str) -> tuple[list[str], dict]:
    """The service's command and environment as a local process would run them."""
    service = SERVICES[name]
    command = [interpolate(part, env) for part in service["command"]]
    assert command[0] == "hpo"
    environment = {
        key: interpolate(str(value), env) for key, value in service["environment"].items()
    }
    url = make_url(postgres)
    environment["HPO_STORAGE"] = environment["HPO_STORAGE"].replace(
        "@postgres:5432/", f"@{url.host}:{url.port}/"
    )
    return [sys.executable, "-m", "hpo", *command[1:]], {**os.environ, **environment}


def test_the_compose_file_keeps_the_database_private_and_secrets_out() -> None:
    assert "ports" not in SERVICES["postgres"]
    assert "healthcheck" in SERVICES["postgres"]
    assert any(v.startswith("pgdata:") for v in SERVICES["postgres"]["volumes"])
    for port in SERVICES["dashboard"]["ports"]:
        assert port.startswith("127.0.0.1:")
    password = SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD:?")
    assert SERVICES["worker"]["deploy"]["replicas"].startswith("${HPO_WORKERS")
    threads = {k: v for k, v in SERVICES["worker"]["environment"].items() if "THREADS" in k}
    assert threads == dict.fromkeys(
        ("HPO_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"), "${HPO_THREADS:-1}"
    )
    assert SERVICES["worker"]["environment"]["HPO_STORAGE"].startswith("postgresql+psycopg://")
    gpu = SERVICES["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert SERVICES["worker"]["depends_on"]["register"]["condition"] == (
        "service_completed_successfully"
    )
    assert (REPO / "workers" / "Dockerfile").exists()
    assert "POSTGRES_PASSWORD=" in (REPO / ".env.example").read_text()


@pytest.mark.slow
def test_register_worker_and_dashboard_services_run_against_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    url = make_url(postgres_url)
    (tmp_path / "studies").mkdir()
    spec = tiny_spec(name="compose-study", budget={"trials": 4})
    (tmp_path / "studies" / "compose.yaml").write_text(yaml.safe_dump(spec))
    env = {
        "POSTGRES_USER": url.username,
        "POSTGRES_PASSWORD": url.password,
        "POSTGRES_DB": url.database,
        "HPO_STUDY_FILE": "compose.yaml",
        "HPO_STUDY": "compose-study",
        "HPO_HEARTBEAT": "5",
        "HPO_THREADS": "2",
    }

    command, environment = service_process("register", env, postgres_url)
    registered = subprocess.run(
        command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert registered.returncode == 0, registered.stderr

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


def test_a_missing_password_is_refused_before_anything_starts() -> None:
    with pytest.raises(AssertionError, match="set POSTGRES_PASSWORD"):
        interpolate(SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"], {})
