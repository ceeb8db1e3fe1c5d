"""A worker inside a SLURM job: the job's end from SLURM's environment (SLURM_JOB_END_TIME, else
squeue's time left), the expected trial time (the median of the completed trials), no claim
once the time left is shorter, and the job that ran each trial recorded on it."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo.service.schedulers import (
    JOB_ATTR,
    JobDeadline,
    expected_trial_seconds,
    job_deadline,
    parse_slurm_duration,
    running_job,
    slurm_job_end,
)
from hpo.service.storage import open_storage
from hpo.service.study import register_study
from hpo.spec.study_spec import load_spec


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5", 300),  # minutes
        ("5:00", 300),  # MM:SS, as squeue -o %L prints 5 minutes
        ("1:30", 90),
        ("02:03:04", 7384),
        ("1-00", 86400),
        ("1-02:03", 93780),
        ("2-01:00:05", 176405),
        (" 10:00\n", 600),
        ("UNLIMITED", None),
        ("NOT_SET", None),
        ("INVALID", None),
        ("", None),
    ],
)
def test_slurm_durations_parse_as_squeue_and_sbatch_write_them(
    text: str, seconds: float | None
) -> None:
    assert parse_slurm_duration(text) == seconds


def fake_squeue(folder: Path, prints: str, status: int = 0) -> str:
    """An executable that answers as squeue does (a test double, not a mock of subprocess)."""
    path = folder / "squeue"
    path.write_text(f"#!/bin/sh\necho '{prints}'\necho \"$@\" > {folder}/asked\nexit {status}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.slow  # a fake squeue runs (unless SLURM's variable is used, as it must be)
def test_the_job_end_is_slurms_own_when_it_sets_it(tmp_path: Path) -> None:
    squeue = fake_squeue(tmp_path, "9:99:99")
    env = {"SLURM_JOB_ID": "812", "SLURM_JOB_END_TIME": "1900000000"}
    assert slurm_job_end(env, squeue=squeue) == 1900000000.0
    assert not (tmp_path / "asked").exists()  # squeue not asked


@pytest.mark.slow  # a fake squeue runs
def test_else_squeue_says_the_time_left(tmp_path: Path) -> None:
    squeue = fake_squeue(tmp_path, "1:30")
    end = slurm_job_end({"SLURM_JOB_ID": "812"}, squeue=squeue, now=lambda: 1000.0)
    assert end == 1090.0
    assert (tmp_path / "asked").read_text().split() == ["-h", "-j", "812", "-o", "%L"]


@pytest.mark.slow  # a fake squeue runs
@pytest.mark.parametrize("answer", [("UNLIMITED", 0), ("", 1), ("10:00", 1)])
def test_no_end_without_a_time_limit_or_an_answer(tmp_path: Path, answer: tuple[str, int]) -> None:
    squeue = fake_squeue(tmp_path, *answer)
    assert slurm_job_end({"SLURM_JOB_ID": "812"}, squeue=squeue) is None


@pytest.mark.slow  # a missing squeue is tried
def test_no_end_outside_slurm_or_without_squeue(tmp_path: Path) -> None:
    assert slurm_job_end({}) is None
    assert slurm_job_end({"SLURM_JOB_ID": "1"}, squeue=str(tmp_path / "missing")) is None


def study_with_trials(
    seconds: list[float], state: TrialState = TrialState.COMPLETE
) -> optuna.Study:
    study = optuna.create_study()
    start = datetime(2026, 1, 1, 12, 0, 0)
    for s in seconds:
        trial = create_trial(
            state=state,
            value=0.5 if state == TrialState.COMPLETE else None,
            params={"x": 0.1},
            distributions={"x": FloatDistribution(0, 1)},
        )
        trial.datetime_start = start
        trial.datetime_complete = start + timedelta(seconds=s)
        study.add_trial(trial)
    return study


def test_the_expected_trial_time_is_the_median_of_the_completed_trials() -> None:
    assert expected_trial_seconds(study_with_trials([10, 30, 20, 500])) == 25.0
    assert expected_trial_seconds(study_with_trials([])) is None
    assert expected_trial_seconds(study_with_trials([5], TrialState.PRUNED)) is None


def test_a_worker_stops_claiming_when_its_job_cannot_finish_a_trial() -> None:
    study = study_with_trials([60, 60, 60])
    now = time.time()
    assert JobDeadline(now + 600).expired(study) == ""
    late = JobDeadline(now + 50).expired(study)
    assert "ends in" in late and "a trial takes 60 s" in late
    # the stop signal's lead counts: 100 s left, but the signal comes 60 s before the end
    assert JobDeadline(now + 100, signal_seconds=60).expired(study)
    assert JobDeadline(None).expired(study) == ""
    # before any trial completed, the job's time left is all that counts
    assert JobDeadline(now + 10).expired(study_with_trials([])) == ""
    assert JobDeadline(now - 1).expired(study_with_trials([]))


def test_the_signal_lead_comes_from_the_environment() -> None:
    deadline = job_deadline(
        {"SLURM_JOB_ID": "1", "SLURM_JOB_END_TIME": "2000000000", "HPO_JOB_SIGNAL_SECONDS": "120"}
    )
    assert (deadline.end, deadline.signal_seconds) == (2000000000.0, 120.0)
    assert job_deadline({}).end is None


def test_the_job_of_a_trial_names_the_array_task_and_the_node() -> None:
    slurm = {
        "SLURM_JOB_ID": "815",
        "SLURM_ARRAY_JOB_ID": "812",
        "SLURM_ARRAY_TASK_ID": "2",
        "SLURMD_NODENAME": "node17",
    }
    assert running_job(slurm) == "slurm job 812_2 on node17"
    assert running_job({"SLURM_JOB_ID": "9", "SLURMD_NODENAME": "n1"}) == "slurm job 9 on n1"
    pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOSTNAME": "hpo-x-abcde"}
    assert running_job(pod) == "kubernetes pod hpo-x-abcde"
    assert running_job({}) is None


@pytest.mark.slow  # opens the scorer: loads the digits
def test_a_worker_in_a_slurm_job_starts_no_trial_its_time_cannot_finish(
    write_spec: Callable[..., Path],
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from hpo.service.worker import run_worker

    caplog.set_level(logging.INFO, logger="hpo")
    spec = load_spec(write_spec(budget={"trials": 100}))
    register_study(spec, open_storage(sqlite_url))

    def objective(trial: optuna.Trial, *_: object) -> float:
        time.sleep(1.5)
        return 0.5

    end = time.time() + 20
    for key, value in {
        "SLURM_JOB_ID": "815",
        "SLURM_ARRAY_JOB_ID": "812",
        "SLURM_ARRAY_TASK_ID": "1",
        "SLURMD_NODENAME": "node3",
        "SLURM_JOB_END_TIME": str(int(end)),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HPO_JOB_SIGNAL_SECONDS", raising=False)
    summary = run_worker(
        spec.name, sqlite_url, worker_index=1, heartbeat_seconds=0, objective=objective
    )
    ran = summary.states["COMPLETE"]
    assert 1 <= ran < 100 and not summary.gave_up and not summary.stopped_by_signal
    assert "the SLURM job ends in" in caplog.text and "no new trial starts" in caplog.text
    trials = optuna.load_study(study_name=spec.name, storage=sqlite_url).trials
    # The rule, not the machine's speed: the last trial started while the job still had the
    # time a trial takes (1.5 s of sleep; a loaded machine may then run it a little over).
    last_start = max(t.datetime_start.timestamp() for t in trials if t.datetime_start)
    assert int(end) - last_start >= 1.25, "a trial started that its job's time could not finish"
    assert len(trials) == ran  # nothing claimed and left behind
    assert {t.user_attrs[JOB_ATTR] for t in trials} == {"slurm job 812_1 on node3"}
    assert os.environ["SLURM_JOB_ID"] == "815"
