"""The worker loop: claim a trial, score it, write the result back, until the budget is spent.

A worker needs only a study name and a storage URL; the spec comes from the storage. It enters
the engine through one door, ``hpo.engine.scorer.open_scorer``: opened once per worker (the
spec's code trusted, the data loaded, the folds planned, the fold processes started), its
``score(trial, should_stop)`` runs each trial. The budget is the study's, shared by every
worker: under the claim lock a worker counts the trials that are done, running or waiting, and
only then takes one. An exception inside a trial marks that trial FAIL with the reason and the
worker goes on. SIGTERM (what docker-compose and Kubernetes send) ends the running fit at the
next batch; that trial is marked FAIL and its configuration queued again for another worker.
"""

from __future__ import annotations

import logging
import signal
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hpo.engine.scorer import open_scorer, resolve_device
from hpo.errors import HpoError, StorageUnreachableError, WorkerStopped
from hpo.service.backends import FAIL_REASON_ATTR, StorageBackend, without_fail_reason
from hpo.service.cpus import threads_per_worker
from hpo.service.notes import record_end
from hpo.service.schedulers import JOB_ATTR, JobDeadline, job_deadline, running_job
from hpo.service.storage import open_backend, resolve_heartbeat
from hpo.service.study import (
    FINISHED_STATES,
    PENDING_STATES,
    budget_used,
    is_queued_point,
    load_study,
    record_budget,
    record_task,
)
from hpo.service.tracking import Trackers, open_trackers
from hpo.spec.objectives import best_so_far, broken_constraints
from hpo.spec.stopping import has_stop_rules, stop_reason
from hpo.spec.study_spec import StudySpec

logger = logging.getLogger("hpo.service.worker")

#: What scores a trial: (trial, should_stop) -> its value, or its values.
Objective = Callable[[optuna.Trial, Callable[[], bool]], float | Sequence[float]]

# hpo drives heartbeats itself around ask/tell (optuna only does inside Study.optimize).
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

#: Seconds between looks at the study while other workers finish the last trials.
POLL_SECONDS = 1.0
#: How long a worker keeps retrying an unreachable storage before it gives up.
MAX_OUTAGE_SECONDS = 600.0
#: How long a starting worker waits for a database that is down or restarting; shorter than
#: an outage mid-study, so that a mistyped host or port is reported within a minute.
STARTUP_OUTAGE_SECONDS = 60.0
#: Study user attribute: when the study's first trial was claimed (seconds since the epoch, by
#: the claiming machine's clock); ``budget.timeout`` counts from it.
STARTED_ATTR = "hpo_started_at"
#: Errors of a storage that is down or restarting, as opposed to errors of a trial.
STORAGE_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    optuna.exceptions.StorageInternalError,
)


@dataclass
class WorkerSummary:
    """What one worker did."""

    study: str
    worker_index: int | None
    states: Counter[str] = field(default_factory=Counter)
    stopped_by_signal: bool = False
    #: Why the worker gave up before the budget was spent (trials kept failing), or "".
    gave_up: str = ""


@dataclass
class _Claim:
    """What the worker may do next: run ``trial``, wait for others, or finish."""

    trial: optuna.Trial | None = None
    wait: bool = False
    reason: str = ""
    #: The reason is a failure: the study cannot go on (its trials keep failing).
    gave_up: bool = False


def run_worker(
    study_name: str,
    storage_url: str,
    *,
    trials: int | None = None,
    worker_index: int | None = None,
    heartbeat_seconds: float | None = None,
    threads: int | None = None,
    device: str | None = None,
    folds_at_once: int | None = None,
    stack_folds: bool = True,
    allow_modules: Sequence[str] = (),
    objective: Objective | None = None,
) -> WorkerSummary:
    """Pull trials of ``study_name`` until the study's budget is spent.

    Args:
        study_name: a study registered with ``hpo register``.
        storage_url: where it lives.
        trials: the study's budget instead of the spec's (for smoke runs). Default: the spec's.
        worker_index: 0 replays the spec's sampler seed exactly; other indexes derive their
            own; None (a worker started on its own) draws a fresh seed. Default: None.
        heartbeat_seconds: see ``hpo.service.storage.resolve_heartbeat``; 0 disables it.
        threads: torch CPU threads. Default: ``hpo.service.cpus.threads_per_worker``, the
            CPUs this process may use and other processes leave idle.
        device: ``cuda`` or ``cpu``. Default: ``cuda`` when a GPU is visible.
        folds_at_once: on the CPU, how many folds of a trial are fitted at once, one by the
            worker and each other in a fold process of its own
            (``hpo.engine.folds.processes``), all on ``threads // folds_at_once`` threads; 1
            fits them one after another in the worker. Default: ``hpo.engine.folds.plan``
            decides (none when the folds are stacked, else one per thread, at most the
            spec's folds). Fold processes are started with ``spawn``, so a script that
            calls ``run_worker`` needs the usual ``if __name__ == "__main__":`` guard.
        stack_folds: on the CPU, fit a trial's folds as one stacked model where the net
            allows it (``hpo.engine.folds.stacked_fit``); False fits each fold as a net of its own.
        allow_modules: module prefixes whose code the spec may name (``model:``,
            ``criterion:``) and this worker may import; ``HPO_ALLOW_MODULES`` adds more.
        objective: scores one trial in place of the scorer's ``score`` (K-fold CV of the
            skorch net), for a benchmark that measures the storage alone. Default: None.

    Raises:
        HpoError: the device cannot be used, the study or its dataset cannot be loaded, or
            the spec names code that is not trusted, not importable or called wrongly.
    """
    device = resolve_device(device)
    heartbeat = resolve_heartbeat(heartbeat_seconds)
    starting = _Outage(limit=STARTUP_OUTAGE_SECONDS)
    while True:  # a worker started while the database restarts waits for it, a while
        try:
            storage = open_backend(storage_url, heartbeat=heartbeat)
            study, spec = load_study(storage.storage, study_name, worker_index)
            break
        except (StorageUnreachableError, *STORAGE_ERRORS) as error:
            starting.wait(error)
    with open_scorer(
        spec,
        device=device,
        threads=threads or threads_per_worker(1),
        folds_at_once=folds_at_once,
        stack_folds=stack_folds,
        allow_modules=allow_modules,
        source=f"study {study_name}",
    ) as scorer:
        record_task(study, scorer.task)
        logger.info("started on %s: %s", study_name, scorer.describe())
        hint = scorer.idle_cores_hint()
        if threads is None and hint is not None:
            logger.info(hint)
        trackers = open_trackers(spec)  # before any trial: a missing package is said now
        summary = _pull_trials(
            study,
            spec,
            storage,
            objective or scorer.score,
            trials or spec.n_trials,
            worker_index,
            trackers,
        )
    logger.info(
        "done with %s: %s",
        study_name,
        ", ".join(f"{n} {s}" for s, n in sorted(summary.states.items())) or "no trials",
    )
    return summary


def _pull_trials(
    study: optuna.Study,
    spec: StudySpec,
    storage: StorageBackend,
    objective: Objective,
    budget: int,
    worker_index: int | None,
    trackers: Trackers | None = None,
) -> WorkerSummary:
    """The loop: claim a trial, score it, tell the storage (and the spec's trackers), until
    nothing is left to run."""
    record_budget(study, budget)
    summary = WorkerSummary(study.study_name, worker_index)
    clock = _StudyClock(study, spec.budget.timeout)
    deadline = job_deadline()  # a SLURM job's end

    outage = _Outage()
    with _StopFlag() as stop:
        while not stop.requested:
            try:
                claim = _claim_trial(study, spec, budget, storage, clock, deadline)
                if claim.wait:
                    time.sleep(POLL_SECONDS)
                    continue
                if claim.trial is None:
                    if claim.gave_up:
                        logger.error("gave up: %s", claim.reason)
                        summary.gave_up = claim.reason
                    else:
                        logger.info("%s: %s", study.study_name, claim.reason)
                    break
                state = _run_trial(study, claim.trial, spec, stop, objective, storage)
                if trackers:
                    trial_id = storage.trial_id(study, claim.trial)
                    trackers.log_trial(study, storage.storage.get_trial(trial_id))
            except STORAGE_ERRORS as error:
                outage.wait(error)
                continue
            outage.reset()
            summary.states[state.name] += 1
    summary.stopped_by_signal = stop.requested
    return summary


def _claim_trial(
    study: optuna.Study,
    spec: StudySpec,
    budget: int,
    storage: StorageBackend,
    clock: _StudyClock,
    deadline: JobDeadline | None = None,
) -> _Claim:
    late = deadline.expired(study) if deadline is not None else ""
    if late:  # (outside the lock: it reads the study's trials)
        return _Claim(reason=late)
    with storage.claim_lock(study.study_name):
        storage.fail_stale_trials(study)
        ended = clock.expired() or _stop_rule(study, spec)
        if ended:
            record_end(study, spec, ended)
            return _Claim(reason=ended)
        counts = storage.count_states(storage.study_id(study.study_name))
        done, taken = budget_used(counts, pending=False), budget_used(counts)
        running, waiting = counts[TrialState.RUNNING], counts[TrialState.WAITING]
        if waiting and taken - waiting < budget:  # finished + running leave a slot: pop one
            return _claim_next(study, spec, budget, storage)
        if spec.sampler.name == "grid" or taken >= budget:
            if running and done < budget and _can_wait(storage):
                return _Claim(wait=True)  # a running trial may still fail and be re-queued
            return _Claim(reason=f"nothing left to run: {done} of {budget} trials finished")
        if counts[TrialState.FAIL] >= max(budget, 10) + counts[TrialState.COMPLETE]:
            return _Claim(
                reason=f"stopping: {counts[TrialState.FAIL]} trials failed; see their "
                f"fail_reason with: hpo export {study.study_name} --all --out trials.csv",
                gave_up=True,
            )
        return _claim_next(study, spec, budget, storage)


def _claim_next(
    study: optuna.Study, spec: StudySpec, budget: int, storage: StorageBackend
) -> _Claim:
    """Pop a WAITING trial or start a new one; without a claim lock, step back from a race."""
    trial = _ask(study, storage)
    if storage.has_claim_lock or not _is_surplus(study, spec, trial, budget):
        return _Claim(trial=trial)
    trial.set_user_attr(
        FAIL_REASON_ATTR,
        "surplus: another worker claimed the same slot at the same moment (no claim lock "
        "through the gRPC proxy); nothing was run",
    )
    study.tell(trial, state=TrialState.FAIL)
    return _Claim(wait=True)


def _is_surplus(study: optuna.Study, spec: StudySpec, trial: optuna.Trial, budget: int) -> bool:
    # Without a lock (the gRPC proxy) two workers may claim the last slot, or the last grid
    # point, together. Both see both trials afterwards; the later one steps back. A grid
    # trial that popped no queued point is a fresh sample, never part of the grid.
    if spec.sampler.name == "grid" and not is_queued_point(trial):
        return True
    live = FINISHED_STATES + PENDING_STATES
    numbers = sorted(t.number for t in study.get_trials(deepcopy=False, states=live))
    return trial.number in numbers[budget:]


def _ask(study: optuna.Study, storage: StorageBackend) -> optuna.Trial:
    trial = study.ask()
    # The first beat goes in while the claim lock is still held, so a worker killed now
    # leaves a trial that fail_stale_trials recognises.
    if storage.has_heartbeat:
        storage.record_first_heartbeat(storage.trial_id(study, trial))
    job = running_job()
    if job is not None:  # which SLURM task or pod runs it: its log, or scancel
        trial.set_user_attr(JOB_ATTR, job)
    return trial


def _can_wait(storage: StorageBackend) -> bool:
    # Without heartbeats a dead worker's trial stays RUNNING forever; don't wait on it.
    return storage.has_heartbeat


def _run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    spec: StudySpec,
    stop: _StopFlag,
    objective: Objective,
    storage: StorageBackend,
) -> TrialState:
    trial_id = storage.trial_id(study, trial)

    def score() -> float | Sequence[float]:
        return objective(trial, lambda: stop.requested)

    with storage.heartbeat(trial_id):
        try:
            return _score_trial(study, trial, trial_id, score, storage, bool(spec.constraints))
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            # (ValueError: Optuna's tell of a finished trial.)
            if not storage.storage.get_trial(trial_id).state.is_finished():
                raise
    # Another worker's sweep failed the trial while this one still ran it: its heartbeat
    # was late (an overloaded machine, a heartbeat too short for it), and the retry queued
    # then runs the configuration. Nothing of this run is written.
    logger.warning(
        "trial %d was failed under this worker by another's stale sweep (its heartbeat was "
        "late); its retry runs it again. Overloaded? Raise --heartbeat",
        trial.number,
    )
    return TrialState.FAIL


def _score_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    trial_id: int,
    score: Callable[[], float | Sequence[float]],
    storage: StorageBackend,
    constrained: bool = False,
) -> TrialState:
    """Score the trial and tell the storage how it ended; with ``constrained``, its log line
    says which constraints it broke (read back from the storage)."""
    started = time.perf_counter()
    try:
        value = score()
    except STORAGE_ERRORS:
        # Not the configuration's fault: the trial stays RUNNING, its heartbeat stops, and
        # once stale it is re-queued with the same parameters.
        raise
    except optuna.TrialPruned:
        state = TrialState.PRUNED
        study.tell(trial, state=state)
    except WorkerStopped:
        trial.set_user_attr(FAIL_REASON_ATTR, "worker stopped by SIGTERM; re-queued")
        study.tell(trial, state=TrialState.FAIL)
        RetryHeartbeatStaleTrialCallback(max_retry=None)(
            study, without_fail_reason(storage.storage.get_trial(trial_id))
        )
        logger.warning("trial %d stopped by SIGTERM and re-queued", trial.number)
        return TrialState.FAIL
    except Exception as error:  # one bad configuration never ends the worker
        reason = f"{type(error).__name__}: {error}"
        trial.set_user_attr(FAIL_REASON_ATTR, reason)
        study.tell(trial, state=TrialState.FAIL)
        logger.warning("trial %d FAIL: %s", trial.number, reason)
        return TrialState.FAIL
    else:
        state = TrialState.COMPLETE
        study.tell(trial, value)
    seconds = time.perf_counter() - started
    if state == TrialState.COMPLETE:
        logger.info(
            "trial %d COMPLETE in %.1f s: %s%s; %s; %s",
            trial.number,
            seconds,
            _values_in_short(study, value),
            _infeasible(storage.storage.get_trial(trial_id)) if constrained else "",
            best_so_far(study),
            _in_short(trial.params),
        )
    else:
        logger.info("trial %d %s in %.1f s", trial.number, state.name, seconds)
    return state


def _values_in_short(study: optuna.Study, value: float | Sequence[float]) -> str:
    """``0.9612``, or with several objectives ``accuracy 0.9612, n_parameters 1.2e+04``."""
    values = list(value) if isinstance(value, Sequence) else [value]
    if len(values) == 1:
        return f"{values[0]:.6g}"
    names = study.metric_names or [f"objective {i}" for i in range(len(values))]
    return ", ".join(f"{name} {value:.4g}" for name, value in zip(names, values, strict=True))


def _infeasible(trial: optuna.trial.FrozenTrial) -> str:
    broken = broken_constraints(trial)
    return f", infeasible: {', '.join(broken)} broken" if broken else ""


def _in_short(params: dict[str, Any]) -> str:
    """``lr=0.0123 module__hidden1=32``: a trial's searched values, floats to 3 digits."""
    return " ".join(
        f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in params.items()
    )


def _stop_rule(study: optuna.Study, spec: StudySpec) -> str:
    """``budget.target`` or ``budget.patience`` met (``hpo.spec.stopping``), or ""; reads the
    completed trials only when the spec has such a rule."""
    if not has_stop_rules(spec):
        return ""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return stop_reason(spec, completed)


class _StudyClock:
    """``budget.timeout``: the whole study's time, counted from its first claimed trial
    (``STARTED_ATTR``, written by the worker that claims it), across every worker and every
    restart. Once it has passed no worker starts a trial, queued or new; trials already
    running finish (as Optuna's ``optimize(timeout=)``, but for the study rather than for one
    call). Workers on several machines compare it with their own clocks, so keep them in sync
    (NTP) when the timeout is short."""

    def __init__(self, study: optuna.Study, timeout: float | None) -> None:
        self.study = study
        self.timeout = timeout
        self.started: float | None = None

    def expired(self) -> str:
        """Why no trial may start any more, or "" while the study has time left. Called under
        the claim lock, which makes the first claimant the one that writes the start."""
        if self.timeout is None:
            return ""
        if self.started is None:
            recorded = self.study.user_attrs.get(STARTED_ATTR)
            if recorded is None:
                recorded = time.time()
                self.study.set_user_attr(STARTED_ATTR, recorded)
            self.started = float(recorded)
        elapsed = time.time() - self.started
        if elapsed <= self.timeout:
            return ""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return (
            f"budget.timeout of {self.timeout:g} s has passed ({elapsed:.0f} s since the study's "
            f"first trial started, {since}); no new trial starts"
        )


class _Outage:
    """Backs off while the storage is unreachable; gives up after ``limit`` seconds."""

    def __init__(self, limit: float = MAX_OUTAGE_SECONDS) -> None:
        self.limit = limit
        self.since: float | None = None
        self.delay = 0.5

    def wait(self, error: BaseException) -> None:
        now = time.monotonic()
        self.since = self.since or now
        if now - self.since > self.limit:
            if isinstance(error, HpoError):
                raise error  # it says what is wrong and what to check
            raise HpoError(
                f"the storage has been unreachable for {now - self.since:.0f} s "
                f"({type(error).__name__}); is the database up?"
            ) from error
        logger.warning(
            "storage unreachable (%s); retrying in %.1f s",
            str(error).splitlines()[0][:200],
            self.delay,
        )
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, 10.0)

    def reset(self) -> None:
        self.since, self.delay = None, 0.5


class _StopFlag:
    """Set by SIGTERM or SIGINT while entered; the fit in progress checks it every batch."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __enter__(self) -> _StopFlag:
        self._previous = {
            s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)
        }
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
