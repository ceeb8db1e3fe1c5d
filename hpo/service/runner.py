"""``hpo run``: a whole study on one machine, from its file to ``best_params.csv``.

Registers the study, starts N ``hpo worker`` processes on the same storage, shows trials done
out of the budget and the best score so far, and when the workers are done writes
``results/<study>/best_params.csv``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hpo.engine.device import default_device
from hpo.engine.folds.plan import FoldPlan
from hpo.engine.objective import worker_fold_plan
from hpo.engine.user_code import admit_user_code
from hpo.results.export import export_study
from hpo.results.paths import study_folder
from hpo.service.storage import PASSWORD_FILE_ENV, open_backend
from hpo.service.study import budget_used, register_study
from hpo.service.worker import default_threads
from hpo.spec.names import DATASETS
from hpo.spec.references import code_roots
from hpo.spec.study_spec import StudySpec, load_spec

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class RunResult:
    """What a local run produced."""

    study: str
    best_params_csv: Path | None
    states: dict[str, int]
    seconds: float
    worker_exit_codes: list[int]


def run_study(
    spec_path: str | Path | StudySpec,
    storage_url: str,
    *,
    workers: int = 1,
    trials: int | None = None,
    results_dir: str | Path = "results",
    heartbeat_seconds: float | None = None,
    allow_modules: Sequence[str] = (),
    console: Console | None = None,
) -> RunResult:
    """Register ``spec_path`` and run it to its budget with ``workers`` local processes.

    Args:
        spec_path: a study file (``studies/*.yaml``), or a spec already read.
        storage_url: the storage to register into and run on.
        workers: worker processes, each with ``cores // workers`` torch threads. Default: 1.
        trials: the study's budget instead of the spec's. Default: the spec's.
        results_dir: where ``<study>/best_params.csv`` goes. Default: ``results``.
        heartbeat_seconds: passed to each worker (``--heartbeat``).
        allow_modules: module prefixes the spec's own code (``model:``, ``criterion:``) may
            come from; passed to each worker (``--allow-module``).
        console: where progress goes. Default: stderr.

    Raises:
        SpecError, StudyError: from registration, before any worker starts.
        HpoError: the spec names code that is not trusted, not importable or called wrongly.
    """
    console = console or Console(stderr=True)
    spec = spec_path if isinstance(spec_path, StudySpec) else load_spec(spec_path)
    source = f"study {spec.name}" if isinstance(spec_path, StudySpec) else str(spec_path)
    admit_user_code(spec, allow_modules, source)
    backend = open_backend(storage_url)
    storage = backend.storage
    registration = register_study(spec, backend)
    if not registration.created:
        console.print(f"study [bold]{escape(spec.name)}[/] already registered; resuming it")
    budget = trials or spec.n_trials
    threads = default_threads(workers)
    plan = local_worker_plan(spec, threads)
    if workers == 1 and plan.idles_cores:
        console.print(
            f"1 worker on {threads} CPU cores: a small net trains on one of them; "
            f"[bold]--workers {threads}[/] runs {threads} trials at once",
            soft_wrap=True,
        )
    started = time.perf_counter()
    options = []
    if trials:
        options += ["--trials", str(trials)]
    if heartbeat_seconds is not None:
        options += ["--heartbeat", str(heartbeat_seconds)]
    for prefix in allow_modules:
        options += ["--allow-module", prefix]
    processes = [
        subprocess.Popen(
            worker_command(spec.name, threads, *options, "--index", str(i)),
            env=worker_env(threads, code_roots(spec.custom_code), storage_url=storage_url),
        )
        for i in range(workers)
    ]
    study = optuna.load_study(study_name=spec.name, storage=storage)
    try:
        _show_progress(study, budget, processes, console)
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()
        raise
    finally:
        exit_codes = [process.wait() for process in processes]
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    best_csv = None
    if states[TrialState.COMPLETE.name]:
        best_csv = export_study(
            storage, spec.name, study_folder(results_dir, spec.name) / "best_params.csv"
        )
    return RunResult(spec.name, best_csv, dict(states), time.perf_counter() - started, exit_codes)


def local_worker_plan(spec: StudySpec, threads: int) -> FoldPlan:
    """The fold plan each of ``hpo run``'s workers will log when it starts: the worker's own
    ``worker_fold_plan``, asked before any worker has loaded the data (the built-in datasets'
    names say whether they have a fixed validation split)."""
    return worker_fold_plan(
        spec,
        device=default_device(),
        threads=threads,
        validation=DATASETS[spec.dataset.name].fixed_validation,
    )


def worker_command(study: str, threads: int, *options: str) -> list[str]:
    """The ``hpo worker`` command line ``hpo run`` starts, with further ``options``.

    The storage URL is not on it: a command line is visible to every user of the machine
    (``ps``), and the URL may hold the database's password. ``worker_env`` passes it as
    ``HPO_STORAGE`` instead, which ``hpo worker`` reads when it has no ``--storage``.
    """
    return [
        sys.executable,
        "-m",
        "hpo",
        "worker",
        "--study",
        study,
        "--threads",
        str(threads),
        *options,
    ]


def worker_env(
    threads: int, code_paths: Sequence[str] = (), storage_url: str | None = None
) -> dict[str, str]:
    """The environment of a worker with ``threads`` torch threads, on ``storage_url``
    (``HPO_STORAGE``; only the user and root can read a process's environment).

    OpenMP/MKL read these before torch.set_num_threads runs; unset, each worker would start a
    thread per core and the workers would fight over the cores. ``code_paths`` (the folders
    the spec's own code was imported from here) go first on the worker's ``PYTHONPATH``, so a
    worker imports the same code.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if storage_url is not None:
        env["HPO_STORAGE"] = storage_url
        env.pop(PASSWORD_FILE_ENV, None)  # the URL holds the password read from it
    paths = [*code_paths, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _show_progress(
    study: optuna.Study, budget: int, processes: list[subprocess.Popen[bytes]], console: Console
) -> None:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[best]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(study.study_name, total=budget, best="best: -")
        while True:
            running = any(process.poll() is None for process in processes)
            counts = Counter(t.state for t in study.get_trials(deepcopy=False))
            best = "best: -"
            if counts[TrialState.COMPLETE]:
                best = f"best: {study.best_value:.4f} (trial {study.best_trial.number})"
            done = budget_used(counts, pending=False)
            progress.update(task, completed=min(done, budget), best=best)
            if not running:
                return
            time.sleep(POLL_SECONDS)
