"""What a batch scheduler tells a worker running inside one of its jobs: which job it is, and
when the job ends.

A SLURM job has a time limit; a trial still running when it passes is killed and run again
elsewhere, its time wasted. So a worker in a job stops claiming trials once the time left
(to the job's end, less the warning signal's lead, ``HPO_JOB_SIGNAL_SECONDS``) is shorter
than a trial is expected to take (``expected_trial_seconds``). The study goes on in other
jobs; nothing is lost either way, only time.

The job's end comes from SLURM's environment: ``SLURM_JOB_END_TIME`` where SLURM sets it
(newer versions), else ``squeue -h -j $SLURM_JOB_ID -o %L`` (the time left), asked once when
the worker starts.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping

import optuna
from optuna.trial import TrialState

logger = logging.getLogger("hpo.service.schedulers")

#: Trial user attribute: the scheduler's job that ran the trial (``slurm job 812_2 on node17``,
#: ``kubernetes pod hpo-x-abcde``), so a user can find its log, or cancel it.
JOB_ATTR = "hpo_job"
#: Seconds before the job's end at which the scheduler signals the worker to stop
#: (``sbatch --signal=B:TERM@N``; ``hpo slurm`` sets it): a trial must end before then.
SIGNAL_SECONDS_ENV = "HPO_JOB_SIGNAL_SECONDS"
#: Seconds ``squeue`` may take to answer.
SQUEUE_TIMEOUT = 20.0


def expected_trial_seconds(study: optuna.Study) -> float | None:
    """How long a trial of ``study`` is expected to take: the median wall time of its
    COMPLETE trials (Optuna's ``datetime_start`` to ``datetime_complete``), or None before
    any has completed. The one rule for it; pruned and failed trials, cut short, are left out
    so that the estimate errs long."""
    seconds = [
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if trial.datetime_start is not None and trial.datetime_complete is not None
    ]
    return statistics.median(seconds) if seconds else None


def parse_slurm_duration(text: str) -> float | None:
    """Seconds of a SLURM duration (``squeue -o %L``, ``--time``): ``MM``, ``MM:SS``,
    ``HH:MM:SS``, ``D-HH``, ``D-HH:MM`` or ``D-HH:MM:SS``; None for ``UNLIMITED``,
    ``NOT_SET``, ``INVALID`` or anything else."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if match is None:
        return None
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
    elif third is not None:  # HH:MM:SS
        hours, minutes, seconds = int(first), int(second), int(third)
    else:  # MM[:SS]
        hours, minutes, seconds = 0, int(first), int(second or 0)
    return float(((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds)


def slurm_job_end(
    environ: Mapping[str, str] = os.environ,
    *,
    now: Callable[[], float] = time.time,
    squeue: str = "squeue",
) -> float | None:
    """When the SLURM job this process runs in ends (seconds since the epoch), or None
    outside SLURM, for a job without a time limit, or when SLURM does not say.

    Args:
        environ: the environment SLURM set. Default: this process's.
        now: the clock ``squeue``'s time left counts from.
        squeue: the ``squeue`` program asked when ``SLURM_JOB_END_TIME`` is not set.
    """
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return None
    end = environ.get("SLURM_JOB_END_TIME", "")
    if end.isdigit() and int(end) > 0:
        return float(end)
    try:
        left = subprocess.run(
            [squeue, "-h", "-j", job, "-o", "%L"],
            capture_output=True,
            text=True,
            timeout=SQUEUE_TIMEOUT,
            env=dict(environ),
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.warning("cannot ask squeue for job %s's time left (%s)", job, error)
        return None
    seconds = parse_slurm_duration(left.stdout.strip()) if left.returncode == 0 else None
    return None if seconds is None else now() + seconds


class JobDeadline:
    """The end of the scheduler's job the worker runs in: once the time left before it
    (less ``signal_seconds``, when the scheduler's stop signal comes) is shorter than the
    study's ``expected_trial_seconds``, no trial starts here. Mirrors the worker's
    ``_StudyClock`` (the study's own ``budget.timeout``)."""

    def __init__(
        self, end: float | None, signal_seconds: float = 0.0, scheduler: str = "SLURM"
    ) -> None:
        self.end = end
        self.signal_seconds = signal_seconds
        self.scheduler = scheduler

    def expired(self, study: optuna.Study) -> str:
        """Why this worker may start no trial any more, or "" while its job has time."""
        if self.end is None:
            return ""
        left = self.end - self.signal_seconds - time.time()
        expected = expected_trial_seconds(study)
        if left > (expected or 0.0):
            return ""
        take = (
            f"a trial takes {expected:.0f} s (the median of the study's completed ones)"
            if expected is not None
            else "no time is left"
        )
        return (
            f"the {self.scheduler} job ends in {max(left, 0):.0f} s (before its stop signal) "
            f"and {take}: no new trial starts in this job; other jobs, or a new submission, "
            "go on with the study"
        )


def job_deadline(environ: Mapping[str, str] = os.environ) -> JobDeadline:
    """The deadline of the job this process runs in (a SLURM job, else none)."""
    signal_seconds = environ.get(SIGNAL_SECONDS_ENV, "")
    lead = float(signal_seconds) if re.fullmatch(r"\d+(\.\d+)?", signal_seconds) else 0.0
    return JobDeadline(slurm_job_end(environ), lead)


def running_job(environ: Mapping[str, str] = os.environ) -> str | None:
    """The scheduler's job this process runs in, as a trial records it (``JOB_ATTR``):
    ``slurm job 812_2 on node17`` (an array's task as SLURM names it), ``kubernetes pod
    NAME``, or None outside both."""
    if environ.get("SLURM_JOB_ID"):
        array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
        job = f"{array}_{task}" if array and task else environ["SLURM_JOB_ID"]
        host = environ.get("SLURMD_NODENAME") or socket.gethostname()
        return f"slurm job {job} on {host}"
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return f"kubernetes pod {environ.get('HOSTNAME') or socket.gethostname()}"
    return None
