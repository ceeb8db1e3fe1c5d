"""``hpo run``: a whole study on one machine, from its file to ``best_params.csv``.

Registers the study, starts N ``hpo worker`` processes on the same storage, shows trials done
out of the budget and the best score so far, and when the workers are done writes
``results/<study>/best_params.csv``.

The workers' output comes through this process (``WorkerOutput``): on a terminal their log lines
are printed above the progress bar instead of through it; elsewhere (CI, ``docker logs``, a
file) there is no bar, and a progress line is printed every ``PROGRESS_SECONDS`` while the
study moves (and every ``QUIET_PROGRESS_SECONDS`` while it does not).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from hpo.engine.device import default_device
from hpo.engine.folds.plan import FoldPlan, worker_fold_plan
from hpo.engine.user_code import admit_user_code
from hpo.results.export import export_study
from hpo.results.paths import study_folder
from hpo.service.cpus import threads_per_worker
from hpo.service.logs import NORMAL, verbosity_flags
from hpo.service.storage import PASSWORD_FILE_ENV, open_backend
from hpo.service.study import budget_used, register_study
from hpo.spec.names import DATASETS
from hpo.spec.objectives import best_so_far
from hpo.spec.references import code_roots
from hpo.spec.study_spec import StudySpec, load_spec

POLL_SECONDS = 0.5
#: Off a terminal: seconds between progress lines while trials finish, and while none does.
PROGRESS_SECONDS = 5.0
QUIET_PROGRESS_SECONDS = 30.0


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
    threads: int | None = None,
    console: Console | None = None,
    verbosity: int = NORMAL,
) -> RunResult:
    """Register ``spec_path`` and run it to its budget with ``workers`` local processes.

    Args:
        spec_path: a study file (``studies/*.yaml``), or a spec already read.
        storage_url: the storage to register into and run on.
        workers: worker processes. Default: 1.
        trials: the study's budget instead of the spec's. Default: the spec's.
        results_dir: where ``<study>/best_params.csv`` goes. Default: ``results``.
        heartbeat_seconds: passed to each worker (``--heartbeat``).
        allow_modules: module prefixes the spec's own code (``model:``, ``criterion:``) may
            come from; passed to each worker (``--allow-module``).
        threads: torch CPU threads of each worker. Default: the CPUs this process may use
            and other processes leave idle, shared out (``hpo.service.cpus``).
        console: where progress and the workers' log lines go. Default: stderr.
        verbosity: the workers' ``hpo.service.logs`` verbosity (-1 quiet: no line per trial;
            1: Optuna's info lines too). Default: 0.

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
    if registration.created:
        console.print(f"registered study [bold]{escape(spec.name)}[/]", highlight=False)
    else:
        console.print(f"study [bold]{escape(spec.name)}[/] already registered; resuming it")
    budget = trials or spec.n_trials
    threads = threads or threads_per_worker(workers)
    plan = local_worker_plan(spec, threads)
    if workers == 1 and plan.idles_cores:
        console.print(
            f"1 worker on {threads} CPU cores: a small net trains on one of them; "
            f"[bold]--workers {threads}[/] runs {threads} trials at once",
            soft_wrap=True,
        )
    started = time.perf_counter()
    options = verbosity_flags(verbosity)
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
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(workers)
    ]
    output = WorkerOutput(processes)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    try:
        if console.is_terminal:
            _show_progress_bar(study, budget, processes, output, console)
        else:
            _print_progress_lines(study, budget, processes, output, console)
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()
        raise
    finally:
        exit_codes = [process.wait() for process in processes]
        _print_lines(output.drain(wait=True), console)
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


class WorkerOutput:
    """The lines the workers write (stdout and stderr together), read by a thread per worker
    so that no worker ever blocks on a full pipe, handed out in the order they arrived."""

    def __init__(self, processes: Sequence[subprocess.Popen[bytes]]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(process,), daemon=True)
            for process in processes
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                self._lines.put(line.decode("utf-8", "replace").rstrip("\r\n"))

    def drain(self, wait: bool = False) -> Iterator[str]:
        """The lines read so far; with ``wait``, all of them, once the workers have closed
        their output (they have exited)."""
        if wait:
            for reader in self._readers:
                reader.join()
        while True:
            try:
                yield self._lines.get_nowait()
            except queue.Empty:
                return


def _print_lines(lines: Iterator[str], console: Console) -> None:
    for line in lines:
        # A worker's line is text: "[/]" in a parameter's value is not markup.
        console.print(Text(line), highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class _Progress:
    """Where the study stands, as the progress bar and the progress lines show it."""

    done: int
    running: int
    states: str
    best: str
    started: bool

    @classmethod
    def of(cls, study: optuna.Study) -> _Progress:
        trials = study.get_trials(deepcopy=False)
        counts = Counter(t.state for t in trials)
        best = best_so_far(study, ".4f") if counts[TrialState.COMPLETE] else "best -"
        finished = [(s.name, n) for s, n in sorted(counts.items()) if s.is_finished()]
        return cls(
            done=budget_used(counts, pending=False),
            running=counts[TrialState.RUNNING],
            states=", ".join(f"{n} {name}" for name, n in finished),
            best=best,
            # A worker has claimed a trial: the workers are past importing torch and
            # loading the data.
            started=any(t.state != TrialState.WAITING for t in trials),
        )


def _starting(workers: int) -> str:
    return f"starting {workers} worker{'s' if workers > 1 else ''} (torch, data)"


def _watch(
    study: optuna.Study,
    processes: list[subprocess.Popen[bytes]],
    output: WorkerOutput,
    console: Console,
) -> Iterator[tuple[_Progress, bool]]:
    """Every ``POLL_SECONDS`` until the workers have exited: print their new lines to
    ``console``, then yield where the study stands and whether a worker still runs (the last
    time, none does)."""
    while True:
        running = any(process.poll() is None for process in processes)
        _print_lines(output.drain(), console)
        yield _Progress.of(study), running
        if not running:
            return
        time.sleep(POLL_SECONDS)


def _show_progress_bar(
    study: optuna.Study,
    budget: int,
    processes: list[subprocess.Popen[bytes]],
    output: WorkerOutput,
    console: Console,
) -> None:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[best]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(_starting(len(processes)), total=budget, best="")
        for now, _ in _watch(study, processes, output, progress.console):
            progress.update(
                task,
                description=study.study_name if now.started else _starting(len(processes)),
                completed=min(now.done, budget),
                best=now.best if now.started else "",
            )


def _print_progress_lines(
    study: optuna.Study,
    budget: int,
    processes: list[subprocess.Popen[bytes]],
    output: WorkerOutput,
    console: Console,
) -> None:
    """Off a terminal: the workers' lines as they come, and one line of progress now and
    then, e.g. ``digits-mlp-tpe: 12 of 40 trials done (10 COMPLETE, 2 PRUNED), 2 running,
    best 0.9712 (trial 7), 31 s``."""
    started = time.monotonic()
    printed: tuple[_Progress | None, float] = (None, started)
    console.print(f"{_starting(len(processes))} for {escape(study.study_name)}", highlight=False)
    for now, running in _watch(study, processes, output, console):
        clock = time.monotonic()
        last, last_clock = printed
        due = PROGRESS_SECONDS if now != last else QUIET_PROGRESS_SECONDS
        if now.started and (clock - last_clock >= due or (not running and now != last)):
            states = f" ({now.states})" if now.states else ""
            console.print(
                f"{escape(study.study_name)}: {now.done} of {budget} trials done{states}, "
                f"{now.running} running, {now.best}, {clock - started:.0f} s",
                highlight=False,
                soft_wrap=True,
            )
            printed = (now, clock)
