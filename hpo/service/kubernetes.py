"""``hpo k8s``: a study's workers as a Kubernetes Job, in the work-queue pattern.

The manifests a user applies with ``kubectl apply -f``: a ``batch/v1`` Job of ``parallelism``
N worker pods (no ``completions``: the pods share the study's budget through the storage, and
each exits 0 once it is spent, which ends the Job); with a study file, a ConfigMap holding it,
registered by each pod's init container (idempotent); with ``with_database``, PostgreSQL (a
StatefulSet with its volume, a ClusterIP Service, a NetworkPolicy letting only the study's
pods in); with ``with_dashboard``, optuna-dashboard (``hpo dashboard``: a Deployment whose
pod listens on its own loopback only, and a ClusterIP Service naming it for ``kubectl
port-forward``, which reaches a pod's loopback; nothing else in the cluster reaches it).

No password is written into a manifest. The user creates the Secret (``secret_commands``) with
two keys: ``url``, the storage URL without a password, and ``password``, from a file. Every
pod mounts the password as a file (``HPO_STORAGE_PASSWORD_FILE``, as in docker-compose), and
PostgreSQL reads the same file (``POSTGRES_PASSWORD_FILE``).

A worker stopped by Kubernetes (an eviction, a preemption, a node drained) gets SIGTERM, ends
its fit at the next batch, re-queues the trial and exits 143 (``--stopped-exit-code``), within
``terminationGracePeriodSeconds``; the Job's pod failure policy ignores such a pod (it does not
count against ``backoffLimit``) and starts another, and fails the Job at once on a bad spec
(exit 2), which no retry mends.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpo.spec.study_spec import StudySpec, load_spec

#: The image docker-compose builds (workers/Dockerfile); push it where the cluster pulls from.
DEFAULT_IMAGE = "hpo-worker:latest"
DEFAULT_POSTGRES_IMAGE = "postgres:16"
#: Seconds a stopped worker has to end its fit at the next batch and re-queue the trial.
DEFAULT_GRACE_SECONDS = 120
#: Exit status of a worker stopped by SIGTERM (128 + 15, as a shell reports it).
STOPPED_EXIT_CODE = 143
#: The image's user (workers/Dockerfile: useradd --uid 1000 hpo); the postgres image's.
HPO_UID = 1000
POSTGRES_UID = 999
SECRET_MOUNT = "/run/secrets/hpo"
STUDY_MOUNT = "/etc/hpo"
DASHBOARD_PORT = 8080


@dataclass(frozen=True)
class JobOptions:
    """What the manifests ask the cluster for; see ``hpo k8s --help``."""

    workers: int
    gpus_per_worker: int = 0
    cpus_per_worker: int = 1
    image: str = DEFAULT_IMAGE
    namespace: str | None = None
    secret: str | None = None
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    with_database: bool = False
    with_dashboard: bool = False
    database_size: str = "10Gi"
    postgres_image: str = DEFAULT_POSTGRES_IMAGE
    allow_modules: tuple[str, ...] = ()


@dataclass
class Manifests:
    """The generated resources, their YAML, and the Secret the user creates."""

    study: str
    prefix: str
    secret: str
    documents: list[dict[str, Any]] = field(default_factory=list)
    secret_commands: str = ""
    database_url: str | None = None

    @property
    def text(self) -> str:
        header = "".join(f"# {line}\n" if line else "#\n" for line in self._header())
        body = str(yaml.safe_dump_all(self.documents, sort_keys=False, default_flow_style=False))
        return header + "---\n" + body

    def _header(self) -> list[str]:
        return [
            f"hpo k8s: the workers of study {self.study} (written by hpo k8s).",
            "First the Secret, which no manifest holds (the password comes from a file):",
            "",
            *self.secret_commands.splitlines(),
            "",
            "then: kubectl apply -f THIS_FILE",
        ]


def dns_name(text: str, limit: int = 40) -> str:
    """``text`` as a Kubernetes name (DNS-1123: lower-case letters, digits, ``-``), at most
    ``limit`` characters; a shortened or changed name ends with a hash of the original, so
    two studies never share one."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "study"
    if name == text and len(name) <= limit:
        return name
    digest = hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{name[: limit - 7].rstrip('-')}-{digest}"


def k8s_manifests(study_or_file: str, options: JobOptions) -> Manifests:
    """The manifests of ``study_or_file``'s workers (and, when asked, its database and
    dashboard).

    Args:
        study_or_file: a registered study's name, or a study file: validated here, put in a
            ConfigMap and registered by each pod before it works (``hpo register``: the first
            one creates the study, the others find it).
        options: the Job's size, resources and extras.

    Raises:
        SpecError: the file is invalid.
        HpoError: an option the cluster would refuse.
    """
    from hpo.errors import HpoError

    if options.workers < 1:
        raise HpoError(f"--workers must be 1 or more, got {options.workers}")
    if options.namespace is not None and dns_name(options.namespace, 63) != options.namespace:
        raise HpoError(f"--namespace must be a Kubernetes name, got {options.namespace!r}")
    path = Path(study_or_file)
    spec: StudySpec | None = None
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        spec = load_spec(path)
        study = spec.name
    else:
        study = study_or_file
    prefix = "hpo-" + dns_name(study)
    secret = options.secret or f"{prefix}-db"
    result = Manifests(study=study, prefix=prefix, secret=secret)
    if options.with_database:
        result.database_url = f"postgresql+psycopg://hpo@{prefix}-postgres:5432/hpo"
    result.secret_commands = _secret_commands(result, options)
    if spec is not None:
        result.documents.append(_study_config_map(result, options, path))
    result.documents.append(_job(result, options, registers=spec is not None))
    if options.with_database:
        result.documents += _database(result, options)
    if options.with_dashboard:
        result.documents += _dashboard(result, options)
    return result


def _secret_commands(result: Manifests, options: JobOptions) -> str:
    namespace = f" --namespace {options.namespace}" if options.namespace else ""
    url = result.database_url or "postgresql+psycopg://USER@HOST:5432/DB"
    lines = []
    if options.with_database:
        lines.append("(umask 077; head -c 24 /dev/urandom | base64 > password)  # a new one")
    lines += [
        f"kubectl create secret generic {result.secret}{namespace} \\",
        f"  --from-literal=url={shlex.quote(url)} \\",
        "  --from-file=password=./password",
    ]
    return "\n".join(lines)


def _metadata(result: Manifests, options: JobOptions, name: str, component: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if options.namespace:
        metadata["namespace"] = options.namespace
    metadata["labels"] = _labels(result, component)
    return metadata


def _labels(result: Manifests, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "hpo",
        "app.kubernetes.io/instance": result.prefix,
        "app.kubernetes.io/component": component,
    }


def _study_config_map(result: Manifests, options: JobOptions, path: Path) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(result, options, f"{result.prefix}-study", "study"),
        "data": {"study.yaml": path.read_text(encoding="utf-8")},
    }


def _storage_env(result: Manifests) -> list[dict[str, Any]]:
    """HPO_STORAGE from the Secret's url, the password as a file (the Secret mounted)."""
    return [
        {
            "name": "HPO_STORAGE",
            "valueFrom": {"secretKeyRef": {"name": result.secret, "key": "url"}},
        },
        {"name": "HPO_STORAGE_PASSWORD_FILE", "value": f"{SECRET_MOUNT}/password"},
    ]


def _secret_volume(result: Manifests) -> dict[str, Any]:
    return {
        "name": "db-password",
        "secret": {
            "secretName": result.secret,
            "items": [{"key": "password", "path": "password"}],
            "defaultMode": 0o440,  # root and the pod's fsGroup
        },
    }


def _hpo_security() -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's and each container's security context: the image's own user, nothing more."""
    pod = {
        "runAsNonRoot": True,
        "runAsUser": HPO_UID,
        "runAsGroup": HPO_UID,
        "fsGroup": HPO_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return pod, container


def _job(result: Manifests, options: JobOptions, *, registers: bool) -> dict[str, Any]:
    threads = str(options.cpus_per_worker)
    pod_security, container_security = _hpo_security()
    trust = [part for prefix in options.allow_modules for part in ("--allow-module", prefix)]
    mounts = [{"name": "db-password", "mountPath": SECRET_MOUNT, "readOnly": True}]
    volumes = [_secret_volume(result)]
    init: list[dict[str, Any]] = []
    if options.with_database:
        init.append(
            {
                "name": "wait-for-database",
                "image": options.postgres_image,
                "command": [
                    "sh",
                    "-c",
                    f"until pg_isready -q -h {result.prefix}-postgres -p 5432; do sleep 2; done",
                ],
                "securityContext": container_security,
            }
        )
    if registers:
        mounts_study = [*mounts, {"name": "study", "mountPath": STUDY_MOUNT, "readOnly": True}]
        volumes.append({"name": "study", "configMap": {"name": f"{result.prefix}-study"}})
        init.append(
            {
                "name": "register",
                "image": options.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["hpo", "register", f"{STUDY_MOUNT}/study.yaml", *trust],
                "env": _storage_env(result),
                "volumeMounts": mounts_study,
                "securityContext": container_security,
            }
        )
    resources: dict[str, Any] = {"requests": {"cpu": threads}}
    if options.gpus_per_worker:
        resources["limits"] = {"nvidia.com/gpu": options.gpus_per_worker}
    worker = {
        "name": "worker",
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "command": worker_container_command(result.study, options),
        "env": [
            *_storage_env(result),
            {"name": "OMP_NUM_THREADS", "value": threads},
            {"name": "MKL_NUM_THREADS", "value": threads},
        ],
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": container_security,
    }
    pod_spec: dict[str, Any] = {
        # podFailurePolicy needs Never: a failed pod is replaced by a new one, not restarted
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": options.grace_seconds,
        "securityContext": pod_security,
    }
    if init:
        pod_spec["initContainers"] = init
    pod_spec["containers"] = [worker]
    pod_spec["volumes"] = volumes
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(result, options, f"{result.prefix}-workers", "worker"),
        "spec": {
            # the work-queue pattern: no completions; the Job is done once a pod exits 0
            # (the budget spent) and the others have ended
            "parallelism": options.workers,
            "backoffLimit": max(6, 2 * options.workers),
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",  # a bad spec, untrusted code: a retry fails too
                        "onExitCodes": {
                            "containerName": "worker",
                            "operator": "In",
                            "values": [2],
                        },
                    },
                    {
                        "action": "Ignore",  # stopped by SIGTERM: its trial was re-queued
                        "onExitCodes": {
                            "containerName": "worker",
                            "operator": "In",
                            "values": [STOPPED_EXIT_CODE],
                        },
                    },
                    {
                        "action": "Ignore",  # evicted, preempted, its node drained or gone
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                ]
            },
            "template": {"metadata": {"labels": _labels(result, "worker")}, "spec": pod_spec},
        },
    }


def worker_container_command(study: str, options: JobOptions) -> list[str]:
    """The worker container's command: ``hpo worker`` on the study, with the pod's CPUs as
    threads, exiting 143 when stopped (so that the Job replaces it)."""
    command = ["hpo", "worker", "--study", study, "--threads", str(options.cpus_per_worker)]
    command += ["--stopped-exit-code", str(STOPPED_EXIT_CODE)]
    for prefix in options.allow_modules:
        command += ["--allow-module", prefix]
    return command


def _database(result: Manifests, options: JobOptions) -> list[dict[str, Any]]:
    name = f"{result.prefix}-postgres"
    labels = _labels(result, "database")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(result, options, name, "database"),
        "spec": {
            "type": "ClusterIP",
            "selector": labels,
            "ports": [{"name": "postgres", "port": 5432, "targetPort": 5432}],
        },
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(result, options, name, "database"),
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # the image's postgres user reads the password file through its group
                    "securityContext": {"fsGroup": POSTGRES_UID},
                    "containers": [
                        {
                            "name": "postgres",
                            "image": options.postgres_image,
                            "args": ["-c", "max_connections=300"],
                            "env": [
                                {"name": "POSTGRES_USER", "value": "hpo"},
                                {"name": "POSTGRES_DB", "value": "hpo"},
                                {
                                    "name": "POSTGRES_PASSWORD_FILE",
                                    "value": f"{SECRET_MOUNT}/password",
                                },
                                {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                            ],
                            "ports": [{"name": "postgres", "containerPort": 5432}],
                            "readinessProbe": {
                                "exec": {"command": ["pg_isready", "-U", "hpo", "-d", "hpo"]},
                                "periodSeconds": 5,
                            },
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                {
                                    "name": "db-password",
                                    "mountPath": SECRET_MOUNT,
                                    "readOnly": True,
                                },
                            ],
                        }
                    ],
                    "volumes": [_secret_volume(result)],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": options.database_size}},
                    },
                }
            ],
        },
    }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(result, options, name, "database"),
        "spec": {
            "podSelector": {"matchLabels": labels},
            "policyTypes": ["Ingress"],
            # the study's own pods only: its workers and its dashboard
            "ingress": [
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchLabels": {"app.kubernetes.io/instance": result.prefix}
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": 5432}],
                }
            ],
        },
    }
    return [service, statefulset, policy]


def _dashboard(result: Manifests, options: JobOptions) -> list[dict[str, Any]]:
    name = f"{result.prefix}-dashboard"
    labels = _labels(result, "dashboard")
    pod_security, container_security = _hpo_security()
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(result, options, name, "dashboard"),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": pod_security,
                    "containers": [
                        {
                            "name": "dashboard",
                            "image": options.image,
                            "imagePullPolicy": "IfNotPresent",
                            # on the pod's loopback: kubectl port-forward reaches it there
                            # (with the user's own cluster credentials), no other pod does
                            "command": dashboard_container_command(),
                            "env": _storage_env(result),
                            "ports": [{"name": "http", "containerPort": DASHBOARD_PORT}],
                            "readinessProbe": {
                                "exec": {"command": dashboard_probe_command()},
                                "periodSeconds": 10,
                                "timeoutSeconds": 5,
                            },
                            "volumeMounts": [
                                {
                                    "name": "db-password",
                                    "mountPath": SECRET_MOUNT,
                                    "readOnly": True,
                                }
                            ],
                            "securityContext": container_security,
                        }
                    ],
                    "volumes": [_secret_volume(result)],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(result, options, name, "dashboard"),
        "spec": {
            "type": "ClusterIP",
            "selector": labels,
            "ports": [{"name": "http", "port": DASHBOARD_PORT, "targetPort": DASHBOARD_PORT}],
        },
    }
    return [deployment, service]


def dashboard_container_command() -> list[str]:
    """``hpo dashboard`` as its pod runs it: on the pod's 127.0.0.1 (its default)."""
    return ["hpo", "dashboard", "--port", str(DASHBOARD_PORT), "-q"]


def dashboard_probe_command() -> list[str]:
    """The readiness probe: the dashboard's study list answers on the pod's loopback (an
    httpGet probe would knock on the pod's address, where nothing listens)."""
    url = f"http://127.0.0.1:{DASHBOARD_PORT}/api/studies"
    return ["python", "-c", f"import urllib.request; urllib.request.urlopen({url!r}, timeout=4)"]
