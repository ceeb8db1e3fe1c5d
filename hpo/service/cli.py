"""The ``hpo`` command: a thin Typer app, each command one library call.

Every command takes ``--storage URL``; without it ``HPO_STORAGE``, else ``sqlite:///hpo.db``.
An ``HpoError`` is printed as one message (exit 2 for a bad spec, else 1), never a traceback.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hpo.errors import HpoError
from hpo.spec.rules import TRIALS

app = typer.Typer(
    help="Hyperparameter optimization for PyTorch models: declared studies, skorch nets, "
    "K-fold CV, many workers on one Optuna storage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Optuna storage URL. Default: $HPO_STORAGE, else sqlite:///hpo.db.",
        show_default=False,
    ),
]
TrialsOption = Annotated[
    int | None,
    typer.Option(
        "--trials",
        min=1,
        max=int(TRIALS.most),
        help=f"The study's trial budget instead of the spec's (at most {TRIALS.most:,}).",
    ),
]
HeartbeatOption = Annotated[
    float | None,
    typer.Option(
        "--heartbeat",
        min=0,
        help="Seconds between trial heartbeats (0: off). Default: $HPO_HEARTBEAT, else 30.",
    ),
]

QuietOption = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Log warnings and errors only: no line per trial."),
]
VerboseOption = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Log more: hpo's debug lines and Optuna's own."),
]

AllowModuleOption = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-module",
        help="Trust code under this module prefix (repeatable), for a spec's "
        "model: / criterion: package.module:Name (a torch.nn.Module subclass). "
        "$HPO_ALLOW_MODULES adds a,b,...",
        show_default=False,
    ),
]

F = TypeVar("F", bound=Callable[..., Any])


def _reports_errors(command: F) -> F:
    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except HpoError as error:
            # The message quotes what the user typed (a study name, a key): "[/]" in it is
            # text, not markup.
            err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
            raise typer.Exit(error.exit_code) from None
        except OSError as error:
            if error.filename is None:
                raise  # not about a file the user named: a bug, kept whole
            where = escape(str(error.filename))
            err.print(f"[bold red]error:[/] {where}: {escape(error.strerror or str(error))}")
            raise typer.Exit(1) from None
        except Exception as error:
            refused = _refused_write(error)
            if refused is None:
                raise  # a bug, kept whole
            err.print(f"[bold red]error:[/] {escape(refused)}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _refused_write(error: Exception) -> str | None:
    """The message for Optuna's ``StorageInternalError`` (the database refused a commit: a
    read-only file, a full disk), or None for any other error. A command that makes several
    commits undoes the earlier ones when a later one fails (``register_study``), so "nothing
    was changed" holds."""
    exceptions = sys.modules.get("optuna.exceptions")
    if exceptions is None or not isinstance(error, exceptions.StorageInternalError):
        return None
    cause: BaseException = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    reason = (str(cause).strip().splitlines() or ["unknown reason"])[0]
    if "full" in reason:
        fix = "free some space on the database's disk and run the command again"
    else:
        fix = (
            "a read-only database serves hpo studies and export only: give a writable one for "
            "this command"
        )
    return f"the storage refused to save the change: {reason}. Nothing was changed; {fix}"


def _storage(flag: str | None, *, create: bool = False) -> Any:
    """The storage of ``--storage`` (``flag``); a SQLite file must exist unless ``create``."""
    return _resolved_storage(flag, create=create)[1]


def _resolved_storage(flag: str | None, *, create: bool = False) -> tuple[str, Any]:
    """The URL ``--storage`` (``flag``) resolves to, and its storage opened: the one place a
    command that only reads or edits studies resolves it, so the password file
    (``$HPO_STORAGE_PASSWORD_FILE``) is applied once."""
    from hpo.service.storage import open_storage, resolve_storage_url

    url = resolve_storage_url(flag)
    return url, open_storage(url, create=create)


def _print_version(value: bool) -> None:
    if value:
        from hpo import __version__

        out.print(f"hpo {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print hpo's version."
        ),
    ] = False,
) -> None:
    """Hyperparameter optimization for PyTorch models: declared studies, skorch nets, K-fold
    CV, many workers on one Optuna storage."""


@app.command()
@_reports_errors
def run(
    spec_file: Annotated[
        Path, typer.Argument(help="A study file, e.g. studies/digits-mlp-tpe.yaml")
    ],
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, help="Local worker processes.")
    ] = 1,
    trials: TrialsOption = None,
    storage: StorageOption = None,
    heartbeat: HeartbeatOption = None,
    results: Annotated[Path, typer.Option(help="Folder for <study>/best_params.csv.")] = Path(
        "results"
    ),
    allow_module: AllowModuleOption = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            envvar="HPO_THREADS",
            help="Torch CPU threads of each worker. Default: the CPUs this process may use "
            "(affinity, cgroup quota, SLURM_CPUS_PER_TASK; $HPO_CPUS) that other processes "
            "leave idle, shared among the workers.",
        ),
    ] = None,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Register a study and run it to its budget with local workers; print the best trial.

    The workers' log lines come through this command: above the progress bar on a terminal;
    elsewhere (CI, docker logs) with a progress line every few seconds."""
    from hpo.results.export import read_best_params
    from hpo.service.filesystems import refuse_sqlite_on_network_fs
    from hpo.service.logs import configure_logging, verbosity_of
    from hpo.service.runner import run_study
    from hpo.service.storage import resolve_heartbeat, resolve_storage_url

    resolve_heartbeat(heartbeat)  # refused here, before the study is registered
    verbosity = verbosity_of(quiet, verbose)
    configure_logging("run", verbosity)
    url = resolve_storage_url(storage)
    refuse_sqlite_on_network_fs(url)  # each of its workers would refuse it
    try:
        result = run_study(
            spec_file,
            url,
            workers=workers,
            trials=trials,
            results_dir=results,
            heartbeat_seconds=heartbeat,
            allow_modules=allow_module or (),
            threads=threads,
            console=err,
            verbosity=verbosity,
        )
    except KeyboardInterrupt:
        err.print(
            "interrupted: the workers stopped and re-queued their running trials; the same "
            "command resumes the study"
        )
        raise typer.Exit(130) from None
    states = ", ".join(f"{n} {s}" for s, n in sorted(result.states.items()))
    err.print(f"{escape(result.study)}: {states} in {result.seconds:.1f} s")
    if result.best_params_csv is None:
        err.print(
            "[bold red]no trial completed[/]; see why with: "
            f"hpo export {escape(result.study)} --all --out trials.csv"
        )
        raise typer.Exit(1)
    table = Table(title=f"best trial of {escape(result.study)}")
    table.add_column("parameter")
    table.add_column("value")
    import pandas as pd

    row = pd.read_csv(result.best_params_csv).iloc[0]
    table.add_row("trial", str(row["trial"]))
    table.add_row("value", f"{row['value']:.6g}")
    for key, value in read_best_params(result.best_params_csv).items():
        table.add_row(escape(key), escape(str(value)))
    out.print(table)
    out.print(f"best parameters written to {escape(str(result.best_params_csv))}")
    if any(code != 0 for code in result.worker_exit_codes):
        err.print(f"[yellow]worker exit codes: {result.worker_exit_codes}[/]")
        raise typer.Exit(1)


@app.command()
@_reports_errors
def register(
    spec_file: Annotated[Path, typer.Argument(help="A study file to validate and register.")],
    storage: StorageOption = None,
    allow_module: AllowModuleOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Validate a study file and register it (a no-op when the same spec is already there).

    Code the spec names (model: / criterion: package.module:Name) must be trusted here as a
    worker must trust it (--allow-module); it is checked where it imports."""
    from hpo.service.logs import configure_logging, verbosity_of
    from hpo.service.study import register_study
    from hpo.spec.study_spec import load_spec

    configure_logging("register", verbosity_of(False, verbose))  # Optuna's lines with -v only

    spec = load_spec(spec_file)
    if spec.custom_code:
        _check_code_if_importable(spec, allow_module or (), str(spec_file))
    from hpo.service.storage import open_backend, resolve_storage_url

    registration = register_study(spec, open_backend(resolve_storage_url(storage)))
    if registration.created:
        out.print(
            f"registered {escape(spec.name)} ({registration.enqueued} trials enqueued, "
            f"budget {spec.n_trials})"
        )
    else:
        out.print(f"{escape(spec.name)} is already registered with this spec; nothing to do")


def _check_code_if_importable(spec: Any, allow_modules: Any, source: str) -> None:
    """Registration holds a spec's own module and loss to the workers' trust rule; trusted
    code is checked where it imports, and where it does not, the workers check it before
    their first trial."""
    from hpo.engine.user_code import admit_user_code
    from hpo.errors import CodeImportError

    try:
        admit_user_code(spec, allow_modules, source)
    except CodeImportError as error:
        err.print(f"[yellow]not checked here:[/] {escape(str(error))}; each worker checks it")


@app.command()
@_reports_errors
def worker(
    study: Annotated[str, typer.Option("--study", help="Name of a registered study.")],
    storage: StorageOption = None,
    trials: TrialsOption = None,
    index: Annotated[
        int | None,
        typer.Option(
            "--index",
            min=0,
            help="Worker number; 0 replays the spec's seed exactly. Default: a fresh seed.",
        ),
    ] = None,
    heartbeat: HeartbeatOption = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            envvar="HPO_THREADS",
            help="Torch CPU threads. Default: the CPUs this process may use (affinity, cgroup "
            "quota, SLURM_CPUS_PER_TASK; $HPO_CPUS) that other processes leave idle.",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option("--device", help="cuda or cpu. Default: cuda when a GPU is visible."),
    ] = None,
    folds_at_once: Annotated[
        int | None,
        typer.Option(
            "--folds-at-once",
            min=1,
            help="CPU only: folds of a trial fitted at once, one by the worker and the others "
            "in fold processes, on threads/N threads each; 1 fits them one after another. "
            "Default: none when the folds are stacked, else one per thread, at most the "
            "study's folds.",
        ),
    ] = None,
    stack_folds: Annotated[
        bool,
        typer.Option(
            "--stack-folds/--no-stack-folds",
            help="CPU only: fit a trial's folds as one stacked model where the net allows "
            "it (hpo's MLP and CNN; early stopping only on the dataset's validation split); "
            "--no-stack-folds fits each fold as a skorch net of its own.",
        ),
    ] = True,
    allow_module: AllowModuleOption = None,
    stopped_exit_code: Annotated[
        int,
        typer.Option(
            "--stopped-exit-code",
            min=0,
            max=255,
            help="Exit status when SIGTERM or Ctrl-C stopped the worker (its trial re-queued) "
            "before the budget was spent. hpo k8s's Job sets 143, so that Kubernetes replaces "
            "an evicted worker instead of counting it done.",
        ),
    ] = 0,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Pull trials of a study from the storage until its budget is spent."""
    from hpo.service.filesystems import refuse_sqlite_on_network_fs
    from hpo.service.logs import configure_logging, verbosity_of
    from hpo.service.storage import check_database_exists, resolve_storage_url

    url = resolve_storage_url(storage)
    refuse_sqlite_on_network_fs(url)
    check_database_exists(url)  # before the worker opens it: a mistyped path is not created
    from hpo.service.worker import run_worker

    configure_logging(
        "worker" if index is None else f"worker {index}", verbosity_of(quiet, verbose)
    )
    summary = run_worker(
        study,
        url,
        trials=trials,
        worker_index=index,
        heartbeat_seconds=heartbeat,
        threads=threads,
        device=device,
        folds_at_once=folds_at_once,
        stack_folds=stack_folds,
        allow_modules=allow_module or (),
    )
    if summary.gave_up:
        raise typer.Exit(1)
    if summary.stopped_by_signal and stopped_exit_code:
        raise typer.Exit(stopped_exit_code)


@app.command()
@_reports_errors
def studies(storage: StorageOption = None) -> None:
    """List the studies in the storage: trials done of the budget, states, best value, and
    why a study ended before its budget (a timeout, budget.target, budget.patience)."""
    import optuna

    from hpo.service.notes import ENDED_ATTR
    from hpo.service.storage import masked_url
    from hpo.service.study import budget_used, list_study_names, study_budget
    from hpo.spec.objectives import best_so_far

    url, opened = _resolved_storage(storage)
    names = list_study_names(opened)  # sorted; without loading each study's best trial
    if not names:
        err.print(
            f"no studies in {escape(masked_url(url))} yet; register one: hpo register "
            "studies/<file>.yaml (or hpo run it)",
            highlight=False,
        )
        return
    table = Table()
    for column in ("study", "direction", "done", "states", "found", "ended"):
        table.add_column(column)
    for name in names:
        study = optuna.load_study(study_name=name, storage=opened)
        trials = study.get_trials(deepcopy=False)
        done = budget_used(Counter(t.state for t in trials), pending=False)
        budgets = study_budget(opened, study)
        if budgets is None:
            progress = str(done)
        else:
            budget, spec_budget = budgets
            override = f" (--trials; the spec's {spec_budget})" if budget != spec_budget else ""
            progress = f"{done} of {budget}{override}"
        table.add_row(
            escape(name),
            ", ".join(direction.name.lower() for direction in study.directions),
            progress,
            ", ".join(f"{n} {s}" for s, n in Counter(t.state.name for t in trials).items()),
            best_so_far(study),
            escape(str(study.user_attrs.get(ENDED_ATTR, ""))),
        )
    out.print(table)


@app.command()
@_reports_errors
def export(
    study: Annotated[str, typer.Argument(help="Name of a registered study.")],
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="CSV, or JSON by suffix. Default: results/<study>/best_params.csv (where hpo "
            "run writes it), or trials.csv with --all.",
            show_default=False,
        ),
    ] = None,
    all_trials: Annotated[
        bool, typer.Option("--all", help="Every trial, not only the best.")
    ] = False,
    pareto: Annotated[
        bool,
        typer.Option(
            "--pareto",
            help="The Pareto front of a study of several objectives, with the trial hpo "
            "refit picks (default file: results/<study>/pareto.csv).",
        ),
    ] = False,
    storage: StorageOption = None,
) -> None:
    """Write the best parameters (or every trial, or the Pareto front) of a study to CSV or
    JSON."""
    from hpo.results.export import export_study

    path = export_study(_storage(storage), study, out_file, all_trials=all_trials, pareto=pareto)
    out.print(f"wrote {escape(str(path))}")


@app.command()
@_reports_errors
def delete(
    study: Annotated[str, typer.Argument(help="Name of a registered study.")],
    storage: StorageOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking first.")] = False,
) -> None:
    """Delete a study and all its trials from the storage, after asking (--yes: without).

    Files on disk stay: the refit's and report's files (results/STUDY/), their artifacts."""
    from hpo.errors import StudyError
    from hpo.results.artifacts import resolve_artifacts_dir
    from hpo.service.study import delete_study

    opened = _storage(storage)
    try:
        study_id = opened.get_study_id_from_name(study)
    except KeyError:
        raise StudyError(f"no study named {study!r} in this storage") from None
    if not yes:
        trials = len(opened.get_all_trials(study_id, deepcopy=False))
        # typer.confirm prints its prompt as plain text: no markup to escape
        if not typer.confirm(f"Delete study {study} and its {trials} trials?"):
            err.print("not deleted")
            raise typer.Exit(1)
    delete_study(opened, study)
    out.print(f"deleted {escape(study)} and its trials from the storage")
    err.print(
        f"left on disk: any refit files and report of {escape(study)} (results/"
        f"{escape(study)}/ unless hpo refit --results put them elsewhere) and the artifacts "
        f"they stored in {escape(str(resolve_artifacts_dir()))}; remove those by hand if "
        "they are not wanted",
        highlight=False,
    )


HostOption = Annotated[
    str,
    typer.Option(
        help="Interface to listen on. Anything but loopback (127.0.0.0/8, ::1, localhost) "
        "needs --expose."
    ),
]
ExposeOption = Annotated[
    bool,
    typer.Option(
        "--expose",
        help="Allow a --host other than loopback (anyone who reaches the port can then try "
        "it). Prefer an SSH tunnel.",
    ),
]


def _port_option(default_help: str) -> Any:
    return typer.Option(min=1, max=65535, help=default_help)


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: ``localhost``, or an address in 127.0.0.0/8 or
    ::1 (the addresses only this machine's own processes reach)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _usage_error(message: str) -> NoReturn:
    """Print ``message`` as an error about the options, and exit 2 (a bad option)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _check_exposure(command: str, host: str, port: int, expose: bool, danger: str) -> bool:
    """Refuse (exit 2) to listen beyond loopback without ``--expose``, saying ``danger`` (what
    anyone who reaches the port could do); whether ``host`` is beyond loopback."""
    if _is_loopback(host):
        return False
    if not expose:
        tunnel = f"ssh -L {port}:127.0.0.1:{port} <this host>"
        _usage_error(
            f"--host {escape(host)} listens beyond this machine, and {danger}. Keep the "
            f"default 127.0.0.1 and reach it through an SSH tunnel ({escape(tunnel)}), or pass "
            f"--expose to listen there anyway (a trusted private network only)."
        )
    return True


InsecureOption = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="With --expose: listen beyond loopback although nothing secures the port (see "
        "the command's help).",
    ),
]


@app.command("storage-proxy")
@_reports_errors
def storage_proxy(
    storage: StorageOption = None,
    host: HostOption = "127.0.0.1",
    port: Annotated[int, _port_option("Port to listen on.")] = 13000,
    expose: ExposeOption = False,
    insecure: InsecureOption = False,
) -> None:
    """Serve a database storage to workers over gRPC (workers use --storage grpc://HOST:PORT).

    It listens on 127.0.0.1 unless told otherwise, and it cannot be secured: Optuna's proxy
    server takes no TLS or credentials, nor does its client, so workers on other machines
    reach it through an SSH tunnel. Beyond loopback it needs --expose --insecure."""
    from hpo.service.storage import resolve_storage_url, serve_storage_proxy

    danger = (
        f"hpo storage-proxy has no authentication and no TLS: anyone who can reach port {port} "
        "of this machine can read, rewrite or delete every study"
    )
    if _check_exposure("storage-proxy", host, port, expose, danger):
        if not insecure:
            _usage_error(
                "hpo storage-proxy cannot be secured: Optuna's run_grpc_proxy_server serves "
                "gRPC without TLS or authentication (it takes no server credentials), and its "
                f"client, GrpcStorageProxy, connects without either, so anyone who can reach "
                f"port {port} could read, rewrite or delete every study. Keep it on 127.0.0.1 "
                f"and let workers reach it through an SSH tunnel (ssh -L {port}:127.0.0.1:{port} "
                f"<this host>), or pass --expose --insecure to listen on {escape(host)} anyway "
                "(a trusted private network only)."
            )
        err.print(f"[bold yellow]warning:[/] {danger}.", highlight=False)

    err.print(f"Optuna gRPC storage proxy on grpc://{escape(host)}:{port} (Ctrl-C to stop)")
    serve_storage_proxy(resolve_storage_url(storage), host=host, port=port)


ArtifactsOption = Annotated[
    Path | None,
    typer.Option(
        "--artifacts",
        "--artifact-dir",  # optuna-dashboard's name for it
        help="Artifact folder of the studies' refit files (Optuna's FileSystemArtifactStore; "
        "share it with the machines that load them). Default: $HPO_ARTIFACTS, else results.",
        show_default=False,
    ),
]


@app.command()
@_reports_errors
def dashboard(
    storage: StorageOption = None,
    host: HostOption = "127.0.0.1",
    port: Annotated[int, _port_option("Port to listen on.")] = 8080,
    artifacts: ArtifactsOption = None,
    expose: ExposeOption = False,
    server: Annotated[
        Literal["auto", "wsgiref", "gunicorn"],
        typer.Option(
            "--server",
            help="The WSGI server, as optuna-dashboard's: auto is gunicorn when it is "
            "installed (pip install 'hpo[gunicorn]'), else wsgiref.",
        ),
    ] = "auto",
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="Log no requests (the page polls every few seconds)."),
    ] = False,
    auth_file: Annotated[
        Path | None,
        typer.Option(
            "--auth-file",
            help="A file whose first line is user:password (HTTP basic auth) or a token "
            "(Authorization: Bearer, or basic auth's password): every request must carry it. "
            "Required with --expose beyond loopback.",
            show_default=False,
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="A host name browsers use for this dashboard (repeatable); requests naming "
            "any other host than these, the loopback names and --host are refused.",
            show_default=False,
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="With --expose: serve beyond loopback without --auth-file, only where nothing "
            "but this machine reaches the port (a container published on the host's loopback, "
            "as docker-compose.yml does).",
        ),
    ] = False,
) -> None:
    """Serve optuna-dashboard on the storage (127.0.0.1:8080 unless told otherwise), with the
    refit's files and reports from the artifact folder on each study's page.

    Every response forbids framing by other sites; requests naming a host other than the
    loopback names, --host and --allowed-host are refused (DNS rebinding); with --auth-file
    every request must carry its credential, which --expose beyond loopback requires. It
    serves plain HTTP: put a TLS proxy or an SSH tunnel in front of it."""
    from hpo.service.guard import host_problem, read_credential

    danger = (
        f"hpo dashboard serves plain HTTP (no TLS) and, without --auth-file, asks for no "
        f"credential: anyone who can reach port {port} of this machine could read, rewrite or "
        "delete every study"
    )
    exposed = _check_exposure("dashboard", host, port, expose, danger)
    problems = [problem for name in allowed_host or () if (problem := host_problem(name))]
    if problems:
        _usage_error(escape("; ".join(problems)))
    credential = read_credential(auth_file) if auth_file is not None else None
    if exposed and credential is None and not insecure:
        _usage_error(
            f"--expose on {escape(host)} needs a credential: --auth-file PATH, whose first line "
            "is user:password (HTTP basic auth) or a token, so that only those who hold it "
            "reach the studies; or --insecure to serve without one, only where nothing but this "
            "machine reaches the port (a container published on the host's loopback)."
        )
    if exposed and credential is None:
        err.print(
            f"[bold yellow]warning:[/] hpo dashboard asks for no credential (--insecure) and "
            f"has no TLS: anyone who can reach port {port} of this machine can read, rewrite "
            "or delete every study.",
            highlight=False,
        )
    elif exposed:
        err.print(
            "[bold yellow]warning:[/] hpo dashboard serves plain HTTP: the credential and the "
            "studies cross the network readable; put a TLS proxy in front of it, or use an SSH "
            "tunnel.",
            highlight=False,
        )
    from optuna.artifacts import FileSystemArtifactStore

    from hpo.errors import MissingDatabaseError
    from hpo.results.artifacts import resolve_artifacts_dir
    from hpo.service.dashboard import resolve_server, serve_dashboard

    resolve_server(server)  # a missing gunicorn is said before anything else
    try:
        _storage(storage)
    except MissingDatabaseError as missing:
        # The dashboard is often started first, to watch the studies as they come.
        err.print(
            f"[yellow]{escape(str(missing).partition(';')[0])} yet:[/] made an empty one; "
            "studies show as they are registered there",
            highlight=False,
        )
        _storage(storage, create=True)
    folder = resolve_artifacts_dir(artifacts)
    if not folder.is_dir():
        err.print(
            f"[yellow]no artifact folder {escape(str(folder))} yet:[/] a study's refit files "
            "show once hpo refit writes them there (--artifacts)"
        )
    asks = f", asking for the credential of {escape(str(auth_file))}" if credential else ""
    err.print(f"optuna-dashboard on http://{escape(host)}:{port}/{asks} (Ctrl-C to stop)")
    try:
        serve_dashboard(
            # Opened where it is served: in gunicorn's worker, after its fork.
            lambda: _storage(storage, create=True),
            host,
            port,
            FileSystemArtifactStore(folder),
            server=server,
            quiet=quiet,
            credential=credential,
            allowed_hosts=tuple(allowed_host or ()),
        )
    except OSError as error:
        raise HpoError(
            f"cannot listen on {host}:{port}: {error.strerror or error}; pick another with "
            "--port (or --host)"
        ) from None


@app.command()
@_reports_errors
def refit(
    study: Annotated[str, typer.Argument(help="Name of a registered study.")],
    storage: StorageOption = None,
    results: Annotated[Path, typer.Option(help="Folder for <study>/model.pt and metrics.")] = Path(
        "results"
    ),
    device: Annotated[
        str | None,
        typer.Option("--device", help="cuda or cpu. Default: cuda when a GPU is visible."),
    ] = None,
    artifacts: ArtifactsOption = None,
    allow_module: AllowModuleOption = None,
) -> None:
    """Retrain the best configuration on the whole training split; score it once on the test;
    store the net as artifacts of the study (hpo.load_refit reads them on any machine)."""
    from hpo.api import refit as refit_trusted

    result = refit_trusted(
        study,
        _storage(storage),
        artifacts=artifacts,
        allow_modules=allow_module or (),
        device=device,
        results_dir=results,
    )
    table = Table(title=f"{escape(study)}: trial {result.trial} refit in {result.seconds:.1f} s")
    table.add_column("metric")
    table.add_column("value")
    table.add_row("CV score (search)", f"{result.cv_score:.6g}")
    for key, value in result.metrics.items():
        table.add_row(escape(f"test {key.replace('_', ' ')}"), f"{value:.6g}")
    table.add_row("epochs", str(result.epochs))
    table.add_row("training rows", str(result.n_train))
    out.print(table)
    if result.warning:
        err.print(f"[yellow]{escape(result.warning)}[/]", highlight=False)
    out.print(f"weights, metrics and learning curves written to {escape(str(result.folder))}")
    out.print(
        f"and stored as {len(result.artifacts)} artifacts of {escape(study)} in "
        f"{escape(str(result.artifacts_dir))} "
        "(hpo dashboard shows them; hpo.load_refit loads the net)"
    )


@app.command()
@_reports_errors
def report(
    study: Annotated[str, typer.Argument(help="Name of a registered study.")],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="HTML file. Default: <results>/<study>/report.html."),
    ] = None,
    storage: StorageOption = None,
    results: Annotated[
        Path, typer.Option(help="Where hpo refit wrote <study>/ (learning curves, confusion).")
    ] = Path("results"),
    artifacts: ArtifactsOption = None,
) -> None:
    """Write one self-contained HTML report (plotly, works offline) of a study, and store it
    as an artifact of the study (hpo dashboard shows it)."""
    from hpo.results.report import write_report

    written = write_report(
        _storage(storage), study, out=out_file, results_dir=results, artifacts=artifacts
    )
    out.print(
        f"wrote {escape(str(written.path))} ({len(written.figures)} figures), "
        "stored as an artifact"
    )
    for title, note in written.notes.items():
        err.print(f"[yellow]{escape(title)}:[/] {escape(note)}", highlight=False)


@app.command()
@_reports_errors
def enqueue(
    study: Annotated[str, typer.Argument(help="Name of a registered study.")],
    assignments: Annotated[
        list[str],
        typer.Argument(
            help="The point as key=value pairs, one per searched parameter; values are read "
            "as YAML scalars (0.01, 1e-3, 64, true, adam).",
            show_default=False,
        ),
    ],
    storage: StorageOption = None,
) -> None:
    """Queue a configuration (a warm start) to run before new samples; it is one of the
    budget's trials."""
    from hpo.service.enqueue import enqueue_point, parse_assignments

    queued = enqueue_point(_storage(storage), study, parse_assignments(assignments))
    out.print(f"enqueued trial {queued.trial} of {escape(study)}")
    if not queued.within_budget:
        err.print(
            f"[yellow]the budget of {queued.budget} trials is already taken; run the point "
            f"with: hpo worker --study {escape(study)} --trials {queued.taken}[/]",
            highlight=False,
        )


@app.command()
@_reports_errors
def slurm(
    study_or_file: Annotated[
        str,
        typer.Argument(help="A registered study's name, or a study file (registered first)."),
    ],
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, help="Array tasks: one worker each.")
    ],
    parallel: Annotated[
        int | None,
        typer.Option("--parallel", min=1, help="Tasks running at once (%P). Default: all."),
    ] = None,
    gpus_per_worker: Annotated[
        int, typer.Option("--gpus-per-worker", min=0, help="GPUs per task (--gres=gpu:G).")
    ] = 0,
    cpus_per_worker: Annotated[
        int,
        typer.Option("--cpus-per-worker", min=1, help="CPUs per task, the worker's threads."),
    ] = 1,
    time_limit: Annotated[
        str | None,
        typer.Option(
            "--time",
            help="Each task's time limit, as sbatch takes it (HH:MM:SS, D-HH:MM:SS). "
            "Default: the partition's.",
            show_default=False,
        ),
    ] = None,
    partition: Annotated[
        str | None, typer.Option("--partition", help="SLURM partition.", show_default=False)
    ] = None,
    account: Annotated[
        str | None, typer.Option("--account", help="SLURM account.", show_default=False)
    ] = None,
    grace: Annotated[
        int,
        typer.Option(
            "--grace",
            min=1,
            help="Seconds before the time limit at which a task is told to stop (SIGTERM): "
            "it re-queues its trial and exits.",
        ),
    ] = 120,
    folder: Annotated[
        Path,
        typer.Option("--dir", help="Folder for the script (<job>.sbatch) and the tasks' logs."),
    ] = Path("slurm"),
    storage: StorageOption = None,
    heartbeat: HeartbeatOption = None,
    allow_module: AllowModuleOption = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the script; register, write and submit nothing."),
    ] = False,
) -> None:
    """Run a study's workers as one SLURM job array (sbatch), one worker per task.

    The storage URL must hold no password: the tasks read it from
    $HPO_STORAGE_PASSWORD_FILE (hpo db start writes one). A task cancelled or preempted
    re-queues its running trial; a worker starts no trial its job's time cannot finish."""
    from hpo.service.logs import configure_logging
    from hpo.service.slurm import ArrayOptions, slurm_array

    configure_logging("slurm")  # Optuna's info lines ("A new study created") not shown
    options = ArrayOptions(
        workers=workers,
        parallel=parallel,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        time=time_limit,
        partition=partition,
        account=account,
        grace_seconds=grace,
        heartbeat=heartbeat,
        allow_modules=tuple(allow_module or ()),
        folder=folder,
    )
    array = slurm_array(study_or_file, options, storage=storage, dry_run=dry_run)
    for warning in array.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if dry_run:
        out.print(array.script, end="", markup=False, highlight=False, soft_wrap=True)
        return
    if array.registered:
        err.print(f"registered study {escape(array.study)}", highlight=False)
    out.print(
        f"submitted job array {array.job_id} ({workers} tasks of {escape(array.study)}): "
        f"{escape(str(array.script_path))}",
        highlight=False,
        soft_wrap=True,
    )
    err.print(
        f"watch it: squeue -j {array.job_id}; hpo studies; logs in "
        f"{escape(str(array.script_path.parent if array.script_path else folder))}/",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@_reports_errors
def k8s(
    study_or_file: Annotated[
        str,
        typer.Argument(
            help="A registered study's name, or a study file (each pod registers it first)."
        ),
    ],
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, help="Worker pods at once (parallelism).")
    ],
    gpus_per_worker: Annotated[
        int, typer.Option("--gpus-per-worker", min=0, help="GPUs per pod (nvidia.com/gpu).")
    ] = 0,
    cpus_per_worker: Annotated[
        int,
        typer.Option("--cpus-per-worker", min=1, help="CPUs per pod, the worker's threads."),
    ] = 1,
    image: Annotated[
        str,
        typer.Option(
            help="The hpo image (workers/Dockerfile, as docker compose builds it), pushed "
            "where the cluster pulls from."
        ),
    ] = "hpo-worker:latest",
    namespace: Annotated[
        str | None,
        typer.Option(help="Namespace of every resource. Default: kubectl's.", show_default=False),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(
            help="The Secret (keys url, password) you create. Default: hpo-<study>-db.",
            show_default=False,
        ),
    ] = None,
    grace: Annotated[
        int,
        typer.Option(
            "--grace",
            min=1,
            help="terminationGracePeriodSeconds: time for a stopped worker to end its batch "
            "and re-queue its trial.",
        ),
    ] = 120,
    with_database: Annotated[
        bool,
        typer.Option("--with-database", help="Also PostgreSQL: a StatefulSet and its Service."),
    ] = False,
    with_dashboard: Annotated[
        bool,
        typer.Option(
            "--with-dashboard",
            help="Also optuna-dashboard: a Deployment and a ClusterIP Service (not exposed: "
            "kubectl port-forward).",
        ),
    ] = False,
    database_size: Annotated[
        str, typer.Option("--database-size", help="The database's volume claim.")
    ] = "10Gi",
    allow_module: AllowModuleOption = None,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where the manifests go; - prints them. Default: k8s/hpo-<study>.yaml.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write Kubernetes manifests for a study's workers: a work-queue Job (and, when asked,
    PostgreSQL and the dashboard), for kubectl apply -f. The password is in no manifest:
    the Secret is yours to create, from a file; the commands are printed."""
    from hpo.service.kubernetes import JobOptions, k8s_manifests

    manifests = k8s_manifests(
        study_or_file,
        JobOptions(
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
            image=image,
            namespace=namespace,
            secret=secret,
            grace_seconds=grace,
            with_database=with_database,
            with_dashboard=with_dashboard,
            database_size=database_size,
            allow_modules=tuple(allow_module or ()),
        ),
    )
    if str(out_file) == "-":
        out.print(manifests.text, end="", markup=False, highlight=False, soft_wrap=True)
        return
    path = out_file or Path("k8s") / f"{manifests.prefix}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifests.text, encoding="utf-8")
    out.print(f"wrote {escape(str(path))} ({len(manifests.documents)} resources)")
    err.print("create the Secret first (no manifest holds the password):", highlight=False)
    err.print(manifests.secret_commands, markup=False, highlight=False, soft_wrap=True)
    err.print(f"then: kubectl apply -f {escape(str(path))}", highlight=False, soft_wrap=True)
    if with_dashboard:
        ns = f" -n {namespace}" if namespace else ""
        err.print(
            f"the dashboard: kubectl port-forward{ns} service/{manifests.prefix}-dashboard "
            "8080:8080, then http://127.0.0.1:8080",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


db_app = typer.Typer(
    help="A private PostgreSQL in your own folder, started without root, for workers on "
    "several machines (a cluster's login node, a long job).",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")

DbDirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="The database's folder. Default: $XDG_DATA_HOME/hpo/postgres, else "
        "~/.local/share/hpo/postgres.",
        show_default=False,
    ),
]
DbUserOption = Annotated[
    str | None,
    typer.Option(
        "--user",
        help="As root: the user PostgreSQL runs as (it refuses root). Default: postgres.",
        show_default=False,
    ),
]
DbBinOption = Annotated[
    Path | None,
    typer.Option(
        "--bin",
        help="Folder of PostgreSQL's initdb and pg_ctl. Default: PATH, else "
        "/usr/lib/postgresql/<newest>/bin and the like.",
        show_default=False,
    ),
]


@db_app.command("start")
@_reports_errors
def db_start(
    folder: DbDirOption = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Port. Default: the last one, else the first free from 54320.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            help="Also listen on this address (a login node's, for the compute nodes; "
            "0.0.0.0: all), password required. Default: 127.0.0.1 only.",
            show_default=False,
        ),
    ] = None,
    bin_dir: DbBinOption = None,
    user: DbUserOption = None,
) -> None:
    """Start the private PostgreSQL (made on the first start, with a password file only you
    can read) and print the two exports that point hpo at it: eval "$(hpo db start)"."""
    from hpo.service.database import is_loopback, start_database

    db = start_database(folder, port=port, host=host, bin_dir=bin_dir, user=user)
    for warning in db.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if not is_loopback(db.host):
        err.print(
            f"[bold yellow]warning:[/] the database listens on {escape(db.host)}:{db.port}: "
            "any machine that reaches it may connect with the password, and its traffic is "
            "not encrypted; a private network only (or keep 127.0.0.1 and an SSH tunnel)",
            highlight=False,
        )
    state = "started" if db.started else "already running"
    err.print(
        f"PostgreSQL {state} in {escape(str(db.folder))} on {escape(db.host)}:{db.port}; "
        "stop it with: hpo db stop" + (f" --dir {escape(str(folder))}" if folder else ""),
        highlight=False,
        soft_wrap=True,
    )
    out.print(db.exports(), end="", markup=False, highlight=False, soft_wrap=True)


@db_app.command("stop")
@_reports_errors
def db_stop(
    folder: DbDirOption = None, bin_dir: DbBinOption = None, user: DbUserOption = None
) -> None:
    """Stop the private PostgreSQL (its data stays; hpo db start starts it again)."""
    from hpo.service.database import default_folder, stop_database

    stopped = stop_database(folder, bin_dir=bin_dir, user=user)
    where = escape(str(folder or default_folder(user)))
    err.print(f"stopped the database in {where}" if stopped else f"no database runs in {where}")


@db_app.command("url")
@_reports_errors
def db_url(
    folder: DbDirOption = None,
    exports: Annotated[
        bool, typer.Option("--exports", help="Both export lines, as hpo db start prints them.")
    ] = False,
    user: DbUserOption = None,
) -> None:
    """Print the private PostgreSQL's storage URL (without the password: that is in its
    file, for HPO_STORAGE_PASSWORD_FILE)."""
    from hpo.service.database import database_status

    db = database_status(folder, user=user)
    if not db.running:
        err.print("[yellow]not running:[/] start it with hpo db start", highlight=False)
    text = db.exports() if exports else db.url + "\n"
    out.print(text, end="", markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    app()
