"""``hpo slurm``: a study's workers as one SLURM job array.

The launcher only starts workers; the budget, the claims and the re-queues stay in the
storage. Each array task runs ``hpo worker --study NAME --index $SLURM_ARRAY_TASK_ID`` (as
``hpo run`` numbers its workers) and exits 0 when the budget is spent. The script asks SLURM
for a stop signal ``grace_seconds`` before the time limit (``--signal=B:TERM@N``, sent to the
batch shell, which the worker replaces with ``exec``) and to requeue a preempted task
(``--requeue``). A task cancelled, preempted or at its time limit gets SIGTERM: the worker ends
its fit at the next batch and re-queues the trial (a task killed outright leaves it to the
heartbeat sweep); and a worker stops claiming when its job's time left is shorter than a trial
takes (``hpo.service.schedulers``).

The password never enters the script or a command line: the storage URL reaches the tasks as
``HPO_STORAGE`` only without one, the password through ``HPO_STORAGE_PASSWORD_FILE`` (a file
the tasks read; ``hpo db start`` writes one).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from hpo.errors import HpoError, StorageError
from hpo.service.filesystems import refuse_sqlite_on_network_fs
from hpo.service.schedulers import SIGNAL_SECONDS_ENV, parse_slurm_duration
from hpo.service.storage import (
    DEFAULT_STORAGE,
    PASSWORD_FILE_ENV,
    masked_url,
    resolve_storage_url,
    sqlite_path,
)
from hpo.spec.study_spec import StudySpec

#: Seconds before the time limit at which SLURM tells a task to stop: time for the worker to
#: end its fit at the next batch and re-queue the trial.
DEFAULT_GRACE_SECONDS = 120


@dataclass(frozen=True)
class ArrayOptions:
    """What the job array asks SLURM for; see ``hpo slurm --help``."""

    workers: int
    parallel: int | None = None
    gpus_per_worker: int = 0
    cpus_per_worker: int = 1
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    heartbeat: float | None = None
    allow_modules: tuple[str, ...] = ()
    folder: Path = Path("slurm")


@dataclass
class SlurmArray:
    """A job array written (and, unless a dry run, submitted)."""

    study: str
    script: str
    script_path: Path | None = None
    job_id: str | None = None
    registered: bool = False
    warnings: list[str] = field(default_factory=list)


def slurm_array(
    study_or_file: str,
    options: ArrayOptions,
    *,
    storage: str | None = None,
    dry_run: bool = False,
    sbatch: str = "sbatch",
) -> SlurmArray:
    """Write the job array's script for ``study_or_file`` and submit it with ``sbatch``.

    Args:
        study_or_file: a registered study's name, or a study file, which is validated and
            registered first (as ``hpo run`` does; its code held to the trust rule with
            ``options.allow_modules``).
        options: the array's size and resources.
        storage: ``--storage``; default ``$HPO_STORAGE``, else ``sqlite:///hpo.db``. It must
            not hold a password: that comes from ``$HPO_STORAGE_PASSWORD_FILE``.
        dry_run: only build the script (returned, not written): the storage is not opened,
            nothing is registered or submitted (a study file is validated; a study name's
            stored spec is not read, so its own code's folders are not on PYTHONPATH).
        sbatch: the program that submits it.

    Raises:
        StorageError: the URL holds a password, names a SQLite file on a network file system,
            or cannot be opened.
        SpecError, StudyError: the file is invalid, or no such study is registered.
        HpoError: an option SLURM would refuse, or ``sbatch`` is missing or refuses the job.
    """
    _check_options(options)
    if not dry_run and shutil.which(sbatch) is None:  # before anything is registered
        raise HpoError(
            f"{sbatch} not found: hpo slurm submits through SLURM's sbatch, on a machine of the "
            "cluster (a login node); --dry-run prints the script anywhere"
        )
    url, password_file = _task_storage(storage)
    resolved = resolve_storage_url(storage)
    refuse_sqlite_on_network_fs(resolved)
    result = SlurmArray(study=study_or_file, script="")
    spec = _study_spec(study_or_file, resolved, options, result, open_storage=not dry_run)
    code_paths: list[str] = []
    if spec is not None:
        from hpo.spec.references import code_roots

        result.study, code_paths = spec.name, code_roots(spec.custom_code)
    if password_file is not None:
        result.warnings += _password_file_warnings(password_file)
    if sqlite_path(url) is not None:
        result.warnings.append(
            f"the storage is a SQLite file ({sqlite_path(url)}): every task must run on this "
            "machine, which holds it; for tasks on other nodes use PostgreSQL (hpo db start)"
        )
    folder = options.folder.absolute()
    name = job_name(result.study)
    result.script = array_script(
        result.study,
        options,
        storage_url=url,
        password_file=password_file,
        folder=folder,
        code_paths=code_paths,
    )
    if dry_run:
        return result
    folder.mkdir(parents=True, exist_ok=True)
    result.script_path = folder / f"{name}.sbatch"
    result.script_path.write_text(result.script, encoding="utf-8")
    result.job_id = submit(result.script_path, sbatch=sbatch)
    return result


def _check_options(options: ArrayOptions) -> None:
    problems = []
    if options.workers < 1:
        problems.append(f"--workers must be 1 or more, got {options.workers}")
    if options.parallel is not None and not 1 <= options.parallel:
        problems.append(f"--parallel must be 1 or more, got {options.parallel}")
    if options.time is not None:
        limit = parse_slurm_duration(options.time)
        if limit is None:
            problems.append(
                f"--time must be a SLURM time limit (HH:MM:SS, MM, D-HH:MM:SS), got "
                f"{options.time!r}"
            )
        elif limit <= options.grace_seconds:
            problems.append(
                f"--time ({options.time}) must be longer than --grace ({options.grace_seconds} "
                "s), the warning before the limit at which a task stops"
            )
    for flag, value in (("--partition", options.partition), ("--account", options.account)):
        if value is not None and not re.fullmatch(r"[\w.,:+-]+", value):
            problems.append(
                f"{flag} must be a SLURM name (letters, digits, . , : + -), got {value!r}"
            )
    if problems:
        raise HpoError("; ".join(problems))


def _task_storage(flag: str | None) -> tuple[str, Path | None]:
    """The storage URL as the tasks get it (no password; a SQLite path made absolute) and
    the password file they read, if any.

    Raises:
        StorageError: the URL holds a password itself.
    """
    url = flag or os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE
    try:
        parsed = make_url(url)
    except Exception:  # resolve_storage_url and open_backend say what is wrong with it
        return url, None
    has_password = parsed.password is not None or any(
        key.lower() == "password" for key in parsed.query
    )
    if has_password:
        raise StorageError(
            f"the storage URL {masked_url(url)} holds a password, which hpo slurm would have "
            "to write into the job script (kept by SLURM, readable by whoever reads the "
            "file); give the URL without it (postgresql+psycopg://user@host:port/db) and the "
            f"password in a file only you can read: {PASSWORD_FILE_ENV}=FILE (hpo db start "
            "writes one)"
        )
    path = sqlite_path(url) if parsed.get_backend_name() == "sqlite" else None
    if path is not None and not path.is_absolute() and not url.startswith("sqlite:///file:"):
        url = f"sqlite:///{path.absolute()}"  # the tasks may start in another folder
    password_file = os.environ.get(PASSWORD_FILE_ENV)
    return url, Path(password_file).absolute() if password_file else None


def _password_file_warnings(path: Path) -> list[str]:
    try:
        mode = path.stat().st_mode
    except OSError:
        return []  # resolve_storage_url has said it cannot be read
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [
            f"the password file {path} is readable by other users (mode "
            f"{stat.S_IMODE(mode):o}); make it yours alone: chmod 600 {shlex.quote(str(path))}"
        ]
    return []


def _study_spec(
    study_or_file: str,
    url: str,
    options: ArrayOptions,
    result: SlurmArray,
    *,
    open_storage: bool,
) -> StudySpec | None:
    """The spec of the study the tasks will run; a file is registered first (unless
    ``open_storage`` is False), a name must be registered (None: not read)."""
    from hpo.service.storage import open_backend
    from hpo.service.study import load_spec_from_storage, register_study
    from hpo.spec.study_spec import load_spec

    path = Path(study_or_file)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        from hpo.engine.user_code import admit_user_code

        spec = load_spec(path)
        if not open_storage:
            return spec
        admit_user_code(spec, options.allow_modules, str(path))
        result.registered = register_study(spec, open_backend(url)).created
        return spec
    if not open_storage:
        return None
    spec = load_spec_from_storage(open_backend(url, create=False).storage, study_or_file)
    if spec.custom_code:
        from hpo.engine.user_code import admit_user_code

        admit_user_code(spec, options.allow_modules, f"study {spec.name}")
    return spec


def job_name(study: str) -> str:
    """The array's job name: ``hpo-<study>``, in the characters SLURM and file names take."""
    return "hpo-" + re.sub(r"[^A-Za-z0-9._-]+", "-", study)


def array_script(
    study: str,
    options: ArrayOptions,
    *,
    storage_url: str,
    password_file: Path | None,
    folder: Path,
    code_paths: Sequence[str] = (),
) -> str:
    """The job array's batch script: ``#SBATCH`` lines, the tasks' environment (the storage
    URL without a password, the password file, torch's threads, ``code_paths`` on
    ``PYTHONPATH``), and the worker each task becomes (``exec``, so SLURM's signals reach it:
    ``hpo run``'s ``worker_command``, on the Python running this)."""
    from hpo.service.runner import worker_command, worker_env

    name = job_name(study)
    parallel = options.parallel or options.workers
    lines = [
        "#!/bin/bash",
        f"# hpo slurm: {options.workers} hpo workers of study {study}, as one job array.",
        "# Each task pulls trials until the study's budget is spent, then exits 0. A task",
        "# cancelled, preempted or at its time limit re-queues its running trial.",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --array=0-{options.workers - 1}%{parallel}",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={options.cpus_per_worker}",
    ]
    if options.gpus_per_worker:
        lines.append(f"#SBATCH --gres=gpu:{options.gpus_per_worker}")
    if options.time is not None:
        lines.append(f"#SBATCH --time={options.time}")
    if options.partition is not None:
        lines.append(f"#SBATCH --partition={options.partition}")
    if options.account is not None:
        lines.append(f"#SBATCH --account={options.account}")
    lines += [
        # B: the batch shell, which exec makes the worker (by default SLURM signals only
        # job steps, and this job has none)
        f"#SBATCH --signal=B:TERM@{options.grace_seconds}",
        "#SBATCH --requeue",
        f"#SBATCH --chdir={Path.cwd()}",
        f"#SBATCH --output={folder}/{name}-%A_%a.out",
        "#SBATCH --open-mode=append",  # a requeued task's log goes on in the same file
        "set -eu",
    ]
    threads = options.cpus_per_worker
    environment = worker_env(threads, code_paths)
    exports = {
        "HPO_STORAGE": storage_url,
        SIGNAL_SECONDS_ENV: str(options.grace_seconds),
        "OMP_NUM_THREADS": environment["OMP_NUM_THREADS"],
        "MKL_NUM_THREADS": environment["MKL_NUM_THREADS"],
    }
    if password_file is not None:
        exports[PASSWORD_FILE_ENV] = str(password_file)
    else:
        lines.append(f"unset {PASSWORD_FILE_ENV}")
    if environment.get("PYTHONPATH"):
        exports["PYTHONPATH"] = environment["PYTHONPATH"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in exports.items()]
    worker_options: list[str] = []
    if options.heartbeat is not None:
        worker_options += ["--heartbeat", f"{options.heartbeat:g}"]
    for prefix in options.allow_modules:
        worker_options += ["--allow-module", prefix]
    command = worker_command(study, threads, *worker_options)
    lines.append(
        "exec "
        + " ".join(shlex.quote(part) for part in command)
        + ' --index "${SLURM_ARRAY_TASK_ID:?submit this script with sbatch}"'
    )
    return "\n".join(lines) + "\n"


def submit(script: Path, *, sbatch: str = "sbatch", extra: Sequence[str] = ()) -> str:
    """Submit ``script`` with ``sbatch --parsable``; the job's id.

    Raises:
        HpoError: sbatch refused it (its message is given).
    """
    done = subprocess.run(
        [sbatch, "--parsable", *extra, str(script)], capture_output=True, text=True
    )
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise HpoError(f"sbatch refused {script}: {reason}")
    return done.stdout.strip().split(";")[0]
