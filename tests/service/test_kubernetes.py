"""``hpo k8s``, checked without a cluster: every manifest validated against the Kubernetes
schemas offline (kubernetes-validate, strict: an unknown field fails), what the Job asks for,
no password in any of it, and the pods' own commands run as processes against the test
PostgreSQL (the Secret's url and mounted password mapped), as tests/e2e/test_compose.py does for
docker-compose.yml: each pod registers the study, the workers spend the budget and exit 0, a
worker stopped by SIGTERM re-queues its trial and exits 143, the dashboard answers its probe."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import free_port, run_hpo, tiny_spec, wait_for_running_trial
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from hpo.service.kubernetes import (
    SECRET_MOUNT,
    STOPPED_EXIT_CODE,
    STUDY_MOUNT,
    JobOptions,
    dns_name,
    k8s_manifests,
)

kubernetes_validate = pytest.importorskip("kubernetes_validate")

#: The oldest schema that takes a podFailurePolicy rule on exit codes alone (1.26-1.28's
#: OpenAPI marked onPodConditions required), and the newest the package ships.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]

OPTIONS = {
    "name": ("tiny-digits", JobOptions(workers=2)),
    "file": ("FILE", JobOptions(workers=3, cpus_per_worker=2, allow_modules=("mynets",))),
    "everything": (
        "FILE",
        JobOptions(
            workers=8,
            gpus_per_worker=1,
            cpus_per_worker=4,
            image="registry.example.org/ml/hpo-worker:0.1",
            namespace="ml-team",
            secret="my-db",
            grace_seconds=300,
            with_database=True,
            with_dashboard=True,
            database_size="50Gi",
        ),
    ),
}


@pytest.fixture
def study_file(write_spec: Callable[..., Path]) -> Path:
    return write_spec(tiny_spec(budget={"trials": 4}), name="study.yaml")


def manifests_of(case: str, study_file: Path) -> Any:
    study, options = OPTIONS[case]
    return k8s_manifests(str(study_file) if study == "FILE" else study, options)


def by_kind(documents: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for document in documents:
        kinds.setdefault(document["kind"], []).append(document)
    return kinds


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_every_manifest_is_valid_kubernetes(case: str, version: str, study_file: Path) -> None:
    manifests = manifests_of(case, study_file)
    documents = list(yaml.safe_load_all(manifests.text))  # what kubectl reads
    assert documents == manifests.documents
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_the_job_is_a_work_queue_of_the_asked_size(study_file: Path) -> None:
    manifests = manifests_of("everything", study_file)
    kinds = by_kind(manifests.documents)
    assert sorted(kinds) == [
        "ConfigMap", "Deployment", "Job", "NetworkPolicy", "Service", "StatefulSet",
    ]  # fmt: skip
    assert "Secret" not in kinds  # the user's, from a file
    (job,) = kinds["Job"]
    assert job["apiVersion"] == "batch/v1"
    spec = job["spec"]
    assert spec["parallelism"] == 8 and "completions" not in spec  # work queue
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] == 300
    (worker,) = pod["containers"]
    assert worker["image"] == "registry.example.org/ml/hpo-worker:0.1"
    assert worker["resources"] == {"requests": {"cpu": "4"}, "limits": {"nvidia.com/gpu": 1}}
    assert worker["command"][:6] == ["hpo", "worker", "--study", "tiny-digits", "--threads", "4"]
    assert worker["command"][6:] == ["--stopped-exit-code", str(STOPPED_EXIT_CODE)]
    rules = spec["podFailurePolicy"]["rules"]
    ignored = [r for r in rules if r["action"] == "Ignore"]
    assert {"type": "DisruptionTarget", "status": "True"} in ignored[1]["onPodConditions"]
    assert ignored[0]["onExitCodes"]["values"] == [STOPPED_EXIT_CODE]
    assert [r["onExitCodes"]["values"] for r in rules if r["action"] == "FailJob"] == [[2]]
    init = {c["name"]: c for c in pod["initContainers"]}
    assert list(init) == ["wait-for-database", "register"]
    assert init["register"]["command"] == ["hpo", "register", f"{STUDY_MOUNT}/study.yaml"]
    for document in manifests.documents:
        assert document["metadata"]["namespace"] == "ml-team"
    (claim,) = kinds["StatefulSet"][0]["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    for service in kinds["Service"]:
        assert service["spec"]["type"] == "ClusterIP"  # not exposed
    assert manifests.database_url == "postgresql+psycopg://hpo@hpo-tiny-digits-postgres:5432/hpo"


def test_without_gpus_or_a_file_the_job_asks_for_neither(study_file: Path) -> None:
    (job,) = by_kind(manifests_of("name", study_file).documents)["Job"]
    pod = job["spec"]["template"]["spec"]
    assert "limits" not in pod["containers"][0]["resources"]
    assert "initContainers" not in pod  # a registered study: nothing to register
    assert pod["terminationGracePeriodSeconds"] == 120
    file_job = by_kind(manifests_of("file", study_file).documents)
    assert file_job["ConfigMap"][0]["data"]["study.yaml"] == study_file.read_text()
    worker = file_job["Job"][0]["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"][-2:] == ["--allow-module", "mynets"]


@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_no_manifest_holds_a_password_only_the_secret_names_it(
    case: str, study_file: Path
) -> None:
    manifests = manifests_of(case, study_file)
    for document in manifests.documents:
        if document["kind"] not in ("Job", "Deployment", "StatefulSet"):
            continue
        pod = document["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            for variable in container.get("env", []):
                if variable["name"] == "HPO_STORAGE":
                    assert variable["valueFrom"]["secretKeyRef"] == {
                        "name": manifests.secret,
                        "key": "url",
                    }
                elif "PASSWORD" in variable["name"]:
                    assert variable["name"].endswith("_PASSWORD_FILE")
                    assert variable["value"] == f"{SECRET_MOUNT}/password"
        secrets = [v["secret"] for v in pod["volumes"] if "secret" in v]
        assert secrets == [
            {
                "secretName": manifests.secret,
                "items": [{"key": "password", "path": "password"}],
                "defaultMode": 0o440,
            }
        ]
    assert "--from-file=password=./password" in manifests.secret_commands
    assert "kubectl create secret generic" in manifests.text  # the header says how


def test_the_dashboard_listens_on_its_pods_loopback_only(study_file: Path) -> None:
    kinds = by_kind(manifests_of("everything", study_file).documents)
    (deployment,) = kinds["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["hpo", "dashboard", "--port", "8080", "-q"]  # 127.0.0.1
    assert "--expose" not in container["command"] and "--host" not in container["command"]
    (database_policy,) = kinds["NetworkPolicy"]
    (rule,) = database_policy["spec"]["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "hpo-tiny-digits"}}}
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("digits-mlp-tpe", "digits-mlp-tpe"),
        ("Digits_MLP v2", None),
        ("x" * 80, None),
    ],
)
def test_names_are_kubernetes_names_and_stay_apart(name: str, expected: str | None) -> None:
    got = dns_name(name)
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", got) and len(got) <= 40
    if expected is not None:
        assert got == expected
    else:
        assert got != dns_name(name + "2")


@pytest.mark.slow  # the real command, in a subprocess
def test_the_cli_writes_the_file_and_says_how_to_make_the_secret(
    study_file: Path, tmp_path: Path
) -> None:
    done = run_hpo(
        "k8s", str(study_file), "--workers", "3", "--with-database", "--with-dashboard",
        "--namespace", "ml", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = tmp_path / "k8s" / "hpo-tiny-digits.yaml"
    assert f"wrote {written.relative_to(tmp_path)} (7 resources)" in done.stdout
    said = " ".join(done.stderr.split())
    assert "kubectl create secret generic hpo-tiny-digits-db --namespace ml" in said
    assert "kubectl apply -f k8s/hpo-tiny-digits.yaml" in said
    assert "kubectl port-forward -n ml service/hpo-tiny-digits-dashboard 8080:8080" in said
    printed = run_hpo("k8s", str(study_file), "--workers", "3", "--out", "-", cwd=tmp_path)
    assert list(yaml.safe_load_all(printed.stdout))[1]["kind"] == "Job"


# --- the pods' commands, run as processes ------------------------------------------------


def pod_process(
    container: dict[str, Any], postgres: str, secret_folder: Path, study: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """A container's command and environment as a local process: ``hpo`` is this Python's,
    the Secret's url the test database's (without its password), the mounted password file
    and study file local ones."""
    url = make_url(postgres)
    password = secret_folder / "password"
    password.write_text(f"{url.password}\n")
    secret = {"url": url._replace(password=None).render_as_string(hide_password=False)}
    command = [part.replace(SECRET_MOUNT, str(secret_folder)) for part in container["command"]]
    if study is not None:
        command = [part.replace(f"{STUDY_MOUNT}/study.yaml", str(study)) for part in command]
    assert command[0] == "hpo"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    for variable in container.get("env", []):
        if "valueFrom" in variable:
            environment[variable["name"]] = secret[variable["valueFrom"]["secretKeyRef"]["key"]]
        else:
            environment[variable["name"]] = variable["value"].replace(
                SECRET_MOUNT, str(secret_folder)
            )
    return [sys.executable, "-m", "hpo", *command[1:]], environment


@pytest.mark.slow
def test_the_jobs_pods_register_and_spend_the_budget_and_a_stopped_one_exits_143(
    postgres_url: str, tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    spec_file = write_spec(
        tiny_spec(name="k8s-grid", sampler={"name": "grid"}, budget={"trials": 6},
                  fixed={"max_epochs": 600, "batch_size": 128},
                  space={"module__hidden1": {"type": "categorical", "choices": [8, 16, 32]},
                         "lr": {"type": "categorical", "choices": [0.01, 0.1]}}),
        name="grid.yaml",
    )  # fmt: skip
    manifests = k8s_manifests(str(spec_file), JobOptions(workers=2))
    (job,) = by_kind(manifests.documents)["Job"]
    pod = job["spec"]["template"]["spec"]
    study = tmp_path / "mounted-study.yaml"
    study.write_text(by_kind(manifests.documents)["ConfigMap"][0]["data"]["study.yaml"])
    secret_folder = tmp_path / "secret"
    secret_folder.mkdir()

    # each pod's init container registers the study; two at once, as two pods start
    (register,) = pod["initContainers"]
    command, env = pod_process(register, postgres_url, secret_folder, study)
    registrations = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    outputs = [r.communicate(timeout=300)[0].decode() for r in registrations]
    assert [r.returncode for r in registrations] == [0, 0], outputs
    assert url_free(outputs, postgres_url)

    (container,) = pod["containers"]
    command, env = pod_process(container, postgres_url, secret_folder)
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for_running_trial("k8s-grid", postgres_url, timeout=300)
    first.send_signal(signal.SIGTERM)  # an eviction: the Job's policy ignores exit 143
    stopped = first.communicate(timeout=300)[0].decode()
    assert first.returncode == STOPPED_EXIT_CODE, stopped
    assert "stopped by SIGTERM and re-queued" in stopped

    workers = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    logs = [w.communicate(timeout=600)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs  # the budget spent: the Job done
    assert url_free([stopped, *logs], postgres_url)
    trials = optuna.load_study(study_name="k8s-grid", storage=postgres_url).trials
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 6, TrialState.FAIL: 1}
    assert len({tuple(t.params.items()) for t in trials if t.state == TrialState.COMPLETE}) == 6


def url_free(outputs: list[str], postgres_url: str) -> bool:
    password = make_url(postgres_url).password
    return all(password not in output for output in outputs)


@pytest.mark.slow
def test_the_dashboards_pod_answers_its_readiness_probe(
    postgres_url: str, tmp_path: Path, study_file: Path
) -> None:
    manifests = k8s_manifests(str(study_file), JobOptions(workers=1, with_dashboard=True))
    (deployment,) = by_kind(manifests.documents)["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    secret_folder = tmp_path / "secret"
    secret_folder.mkdir()
    command, env = pod_process(container, postgres_url, secret_folder)
    port = str(free_port())
    command = [port if part == "8080" else part for part in command]
    probe = [sys.executable, *container["readinessProbe"]["exec"]["command"][1:]]
    probe = [part.replace(":8080/", f":{port}/") for part in probe]
    assert probe[-1].endswith(f"urlopen('http://127.0.0.1:{port}/api/studies', timeout=4)")
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(probe, capture_output=True).returncode != 0:
            assert server.poll() is None, server.communicate()[0].decode()
            assert time.monotonic() < deadline, "the dashboard never answered its probe"
            time.sleep(0.5)
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=30)[0].decode()
    assert url_free([output], postgres_url)
