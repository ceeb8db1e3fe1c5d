"""``hpo slurm``: the job array's script (checked as text, and by bash), what it refuses, and a
real one-node SLURM (scripts/slurm.sh) running a 3-task array against the test PostgreSQL while
one task is cancelled and another requeued mid-trial."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import REPO, run_hpo, tiny_spec
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from hpo.errors import HpoError
from hpo.service.schedulers import JOB_ATTR
from hpo.service.slurm import ArrayOptions, slurm_array

PASSWORD = "s3cr:et@/pw%"


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def dry_run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HPO_STORAGE")}
    return subprocess.run(
        [sys.executable, "-m", "hpo", "slurm", *args, "--dry-run"],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=120,
    )


@pytest.mark.slow  # the real command, in a subprocess
def test_the_script_asks_for_what_was_given_and_holds_no_password(
    write_spec: Callable[..., Path], password_file: Path
) -> None:
    spec = write_spec(name="s.yaml")
    done = dry_run(
        str(spec),
        "--workers", "4", "--parallel", "2", "--gpus-per-worker", "1",
        "--cpus-per-worker", "3", "--time", "01:00:00", "--partition", "gpu",
        "--account", "proj-7", "--grace", "90", "--allow-module", "mynets",
        env={
            "HPO_STORAGE": "postgresql+psycopg://hpo@login1:5432/hpo",
            "HPO_STORAGE_PASSWORD_FILE": str(password_file),
        },
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    script = done.stdout
    sbatch = re.findall(r"^#SBATCH (.*)$", script, re.MULTILINE)
    for line in [
        "--job-name=hpo-tiny-digits",
        "--array=0-3%2",
        "--cpus-per-task=3",
        "--gres=gpu:1",
        "--time=01:00:00",
        "--partition=gpu",
        "--account=proj-7",
        "--signal=B:TERM@90",
        "--requeue",
    ]:
        assert line in sbatch
    assert "export HPO_STORAGE=postgresql+psycopg://hpo@login1:5432/hpo" in script
    assert f"export HPO_STORAGE_PASSWORD_FILE={password_file}" in script
    assert "export HPO_JOB_SIGNAL_SECONDS=90" in script
    assert "export OMP_NUM_THREADS=3" in script
    worker = script.splitlines()[-1]
    assert worker.startswith(f"exec {sys.executable} -m hpo worker --study tiny-digits")
    assert "--threads 3" in worker and "--allow-module mynets" in worker
    assert worker.endswith('--index "${SLURM_ARRAY_TASK_ID:?submit this script with sbatch}"')
    assert PASSWORD not in script and PASSWORD not in done.stderr
    (Path(spec).parent / "job.sbatch").write_text(script)
    assert subprocess.run(["bash", "-n", str(Path(spec).parent / "job.sbatch")]).returncode == 0


@pytest.mark.slow  # the real command, in a subprocess
def test_without_options_the_array_runs_every_task_at_once_on_one_cpu(
    write_spec: Callable[..., Path], tmp_path: Path
) -> None:
    done = dry_run(str(write_spec()), "--workers", "3", env={})
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --array=0-2%3" in done.stdout and "--gres" not in done.stdout
    assert "#SBATCH --time" not in done.stdout  # the partition's limit
    # the default SQLite file, made absolute (a task may start elsewhere), and a warning
    assert f"export HPO_STORAGE=sqlite:///{Path.cwd() / 'hpo.db'}" in done.stdout
    assert "every task must run on this machine" in " ".join(done.stderr.split())
    assert "unset HPO_STORAGE_PASSWORD_FILE" in done.stdout


@pytest.mark.slow  # the real command, in a subprocess
@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://hpo:{PASSWORD.replace('/', '%2F')}@login1/hpo",
        "postgresql+psycopg://hpo@login1/hpo?password=hunter22",
    ],
)
def test_a_url_holding_a_password_is_refused(write_spec: Callable[..., Path], url: str) -> None:
    done = dry_run(str(write_spec()), "--workers", "2", "--storage", url, env={})
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert "holds a password" in message and "HPO_STORAGE_PASSWORD_FILE" in message
    assert "hunter22" not in message and "s3cr" not in message and done.stdout == ""


@pytest.mark.slow  # the real command, in a subprocess
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--time", "soon"], "--time must be a SLURM time limit"),
        (["--time", "00:01:00", "--grace", "120"], "must be longer than --grace"),
        (["--partition", "gpu; rm -rf ~"], "--partition must be a SLURM name"),
    ],
)
def test_options_sbatch_would_refuse_are_refused_first(
    write_spec: Callable[..., Path], args: list[str], says: str
) -> None:
    done = dry_run(str(write_spec()), "--workers", "2", *args, env={})
    assert done.returncode == 1 and says in " ".join(done.stderr.split())


@pytest.mark.slow  # the real command, in a subprocess
def test_a_readable_password_file_is_warned_about(
    write_spec: Callable[..., Path], password_file: Path
) -> None:
    password_file.chmod(0o644)
    done = dry_run(
        str(write_spec()),
        "--workers",
        "2",
        env={
            "HPO_STORAGE": "postgresql+psycopg://hpo@login1/hpo",
            "HPO_STORAGE_PASSWORD_FILE": str(password_file),
        },
    )
    assert done.returncode == 0
    assert "readable by other users (mode 644)" in " ".join(done.stderr.split())


def test_without_sbatch_it_says_where_to_run_it(
    write_spec: Callable[..., Path], sqlite_url: str, tmp_path: Path
) -> None:
    with pytest.raises(HpoError, match="sbatch not found: hpo slurm submits through SLURM"):
        slurm_array(
            str(write_spec()),
            ArrayOptions(workers=2, folder=tmp_path / "slurm"),
            storage=sqlite_url,
            sbatch=str(tmp_path / "no-sbatch"),
        )


# --- a real SLURM -------------------------------------------------------------------------

#: Seconds without any change (trial states, the array's tasks) before the test gives up.
STALL_SECONDS = 600


def slurm_conf() -> str:
    """The test cluster's slurm.conf: ``HPO_TEST_SLURM_CONF``, else the one scripts/slurm.sh
    started. Missing: an error in CI (``make test`` starts it), else a skip that says why."""
    conf = os.environ.get("HPO_TEST_SLURM_CONF")
    if not conf and shutil.which("sbatch"):
        found = subprocess.run(
            ["bash", str(REPO / "scripts" / "slurm.sh"), "conf"], capture_output=True, text=True
        )
        conf = found.stdout.strip() if found.returncode == 0 else None
    if not conf:
        message = (
            "no SLURM test cluster: start one with `bash scripts/slurm.sh start` (as root; it "
            "installs Debian's slurmctld, slurmd and munge), or run `make test`"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM test: {message}")
        pytest.skip(message)
    return conf


def squeue(job: str, env: dict[str, str]) -> dict[str, str]:
    """The array's tasks still known to SLURM: ``{"12_0": "R", "12_2": "PD", ...}``."""
    done = subprocess.run(
        ["squeue", "-h", "-r", "-j", job, "-o", "%i %t"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0 or "Invalid job id" in done.stderr, done.stderr
    return dict(line.split() for line in done.stdout.splitlines() if line.strip())


class Progress:
    """Waits on a condition while the study or the array moves; fails after
    ``STALL_SECONDS`` without any change, saying what it waited for and where things stood."""

    def __init__(self, study: optuna.Study, job: str, env: dict[str, str], logs: Path) -> None:
        self.study, self.job, self.env, self.logs = study, job, env, logs
        self.seen: Any = None
        self.since = time.monotonic()
        self.task_states: list[tuple[float, dict[str, str]]] = []

    def look(self) -> tuple[Counter[str], dict[str, str]]:
        states = Counter(t.state.name for t in self.study.get_trials(deepcopy=False))
        tasks = squeue(self.job, self.env)
        self.task_states.append((time.time(), tasks))
        if (states, tasks) != self.seen:
            self.seen, self.since = (states, tasks), time.monotonic()
        return states, tasks

    def wait(self, condition: Callable[[], Any], what: str) -> Any:
        while True:
            self.look()
            found = condition()
            if found:
                return found
            if time.monotonic() - self.since > STALL_SECONDS:
                logs = "\n".join(f"{p.name}:\n{p.read_text()}" for p in self.logs.glob("*.out"))
                pytest.fail(
                    f"waiting for {what}: nothing moved for {STALL_SECONDS} s; trials "
                    f"{dict(self.seen[0])}, tasks {self.seen[1]}\n{logs}"
                )
            time.sleep(0.3)


def running_trial(study: optuna.Study, *, not_on: set[str]) -> tuple[int, str] | None:
    """A RUNNING trial and its array task (``12_1``), on a task not in ``not_on``."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        job = trial.user_attrs.get(JOB_ATTR, "")
        task = job.split()[2] if job.startswith("slurm job ") else None
        if task and task not in not_on:
            return trial.number, task
    return None


def trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return study.get_trials(deepcopy=False)[number]


@pytest.mark.slow
def test_a_job_array_spends_the_budget_through_a_cancelled_and_a_requeued_task(
    tmp_path: Path, postgres_url: str, write_spec: Callable[..., Path]
) -> None:
    conf = slurm_conf()
    url = make_url(postgres_url)
    password_file = tmp_path / "password"
    password_file.write_text(f"{url.password}\n")
    password_file.chmod(0o600)
    plain = url._replace(password=None).render_as_string(hide_password=False)
    grid = {"type": "categorical", "choices": [8, 16, 32]}
    spec = write_spec(
        tiny_spec(
            name="slurm-grid",
            sampler={"name": "grid"},
            budget={"trials": 6},
            # a trial of about ten seconds, three at once on two cores: long enough to be
            # caught running, short enough for a quick test
            fixed={"max_epochs": 1500, "batch_size": 128},
            space={
                "module__hidden1": grid,
                "lr": {"type": "categorical", "choices": [0.01, 0.1]},
            },
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HPO_STORAGE")},
        "SLURM_CONF": conf,
        "HPO_STORAGE": plain,
        "HPO_STORAGE_PASSWORD_FILE": str(password_file),
    }
    logs = tmp_path / "slurm"
    submitted = run_hpo(
        "slurm", str(spec), "--workers", "3", "--time", "00:30:00", "--heartbeat", "2",
        "--dir", str(logs), env=env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = re.search(r"submitted job array (\d+)", submitted.stdout).group(1)  # type: ignore[union-attr]
    study = optuna.load_study(study_name="slurm-grid", storage=postgres_url)
    progress = Progress(study, job, env, logs)
    try:
        # 1. scancel a task while its trial runs
        cancelled_trial, cancelled = progress.wait(
            lambda: running_trial(study, not_on=set()), "a trial running in an array task"
        )
        cancel_at = datetime.now()
        subprocess.run(["scancel", cancelled], env=env, check=True, timeout=60)
        progress.wait(
            lambda: trial(study, cancelled_trial).state == TrialState.FAIL,
            f"trial {cancelled_trial} failed and re-queued after scancel {cancelled}",
        )
        # 2. requeue another task while its trial runs (as a preemption with requeue does)
        requeued_trial, requeued = progress.wait(
            lambda: running_trial(study, not_on={cancelled}), "a trial on another task"
        )
        requeue_at = datetime.now()
        subprocess.run(["scontrol", "requeue", requeued], env=env, check=True, timeout=60)
        progress.wait(
            lambda: trial(study, requeued_trial).state == TrialState.FAIL,
            f"trial {requeued_trial} failed and re-queued after scontrol requeue {requeued}",
        )
        # 3. the array ends: the other tasks spend the budget, the requeued task runs again
        # (after SLURM's hold on a requeued job, about two minutes) and finds nothing left
        progress.wait(lambda: not progress.look()[1], "every task of the array to end")
    finally:
        subprocess.run(["scancel", job], env=env, timeout=60)

    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    assert states == {TrialState.COMPLETE: 6, TrialState.FAIL: 2}, states
    points = Counter(
        (t.params["module__hidden1"], t.params["lr"])
        for t in trials
        if t.state == TrialState.COMPLETE
    )
    assert sorted(points) == [(h, lr) for h in (8, 16, 32) for lr in (0.01, 0.1)]
    assert set(points.values()) == {1}  # every grid point once
    for number in (cancelled_trial, requeued_trial):
        assert trial(study, number).user_attrs["fail_reason"] == (
            "worker stopped by SIGTERM; re-queued"
        )
    log = {p.stem.rsplit("-", 1)[-1]: p.read_text() for p in logs.glob("*.out")}
    assert "stopped by SIGTERM and re-queued" in log[cancelled]
    assert "CANCELLED" in log[cancelled]
    assert "DUE TO JOB REQUEUE" in log[requeued]
    assert log[requeued].count("started on slurm-grid") == 2  # it ran again
    assert "Traceback" not in "".join(log.values())
    for text in [*log.values(), (logs / "hpo-slurm-grid.sbatch").read_text()]:
        assert url.password not in text

    # what each cost, for docs/reliability.md (pytest -s shows it)
    figures = {}
    for name, number, at in (
        ("scancel", cancelled_trial, cancel_at),
        ("scontrol requeue", requeued_trial, requeue_at),
    ):
        failed = trial(study, number)
        retry = next(
            t for t in trials if t.state == TrialState.COMPLETE and t.params == failed.params
        )
        assert failed.datetime_complete is not None and retry.datetime_start is not None
        figures[name] = {
            "to the trial re-queued s": (failed.datetime_complete - at).total_seconds(),
            "trial time lost s": (
                failed.datetime_complete - failed.datetime_start
            ).total_seconds(),
            "to its retry started s": (retry.datetime_start - at).total_seconds(),
        }
    restarted = re.findall(r"^(\S+ \S+) INFO .*started on", log[requeued], re.MULTILINE)[-1]
    figures["scontrol requeue"]["to the task running again s"] = (
        datetime.strptime(restarted, "%Y-%m-%d %H:%M:%S") - requeue_at
    ).total_seconds()
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    median = sorted((t.datetime_complete - t.datetime_start).total_seconds() for t in completed)
    print(f"\nSLURM figures (median completed trial {median[len(median) // 2]:.1f} s): {figures}")
