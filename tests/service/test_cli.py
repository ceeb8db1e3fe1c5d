"""The hpo command as a user runs it: run, register, worker, studies, export, delete, dashboard;
and Optuna's own CLI reading what hpo wrote."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from conftest import free_port, get_json, run_hpo, served, wait_for_running_trial

from hpo.engine.data import load_dataset
from hpo.engine.models import MLP
from hpo.engine.nets import TunedClassifier
from hpo.results.export import read_best_params

pytestmark = pytest.mark.slow  # the real hpo command in subprocesses


def test_run_registers_runs_two_workers_and_writes_the_best_params(
    write_spec: Callable[..., Path], tmp_path: Path, sqlite_url: str
) -> None:
    path = write_spec(budget={"trials": 5})
    result = run_hpo("run", str(path), "--workers", "2", "--storage", sqlite_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "5 COMPLETE" in result.stderr
    assert "best trial of tiny-digits" in result.stdout
    best = pd.read_csv(tmp_path / "results" / "tiny-digits" / "best_params.csv")
    assert list(best.columns[:3]) == ["study", "trial", "value"]
    assert {"module__hidden1", "lr", "max_epochs", "batch_size"} <= set(best.columns)
    assert 0.5 < best["value"][0] <= 1.0

    # Optuna's own CLI lists the trials, with the spec's parameter names
    optuna_cli = Path(sys.executable).with_name("optuna")
    listed = subprocess.run(
        [
            str(optuna_cli),
            "trials",
            "--study-name",
            "tiny-digits",
            "--storage",
            sqlite_url,
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    trials = json.loads(listed.stdout)
    assert len(trials) == 5
    assert {"module__hidden1", "lr"} <= set(trials[0]["params"])

    # the same file again resumes: nothing new to run, the same answer
    # (HPO_CPUS: two CPUs for hpo, whatever the load of the machine running the test)
    again = run_hpo("run", str(path), "--storage", sqlite_url, cwd=tmp_path, env={"HPO_CPUS": "2"})
    assert again.returncode == 0, again.stderr
    assert "already registered" in again.stderr
    # one worker is told how to use the other core
    assert "1 worker on 2 CPU cores" in again.stderr
    assert "--workers 2 runs 2 trials at once" in again.stderr


def test_a_best_row_configures_a_fresh_skorch_net(
    write_spec: Callable[..., Path], tmp_path: Path, sqlite_url: str
) -> None:
    path = write_spec(
        budget={"trials": 2}, fixed={"max_epochs": 3, "batch_size": 128, "optimizer": "adamax"}
    )
    assert run_hpo("register", str(path), "--storage", sqlite_url).returncode == 0
    worker_command = ["worker", "--study", "tiny-digits", "--storage", sqlite_url, "--index", "0"]
    # HPO_THREADS: how a compose replica is told its threads
    worker = run_hpo(*worker_command, env={"HPO_THREADS": "2"})
    assert worker.returncode == 0, worker.stderr
    assert "worker 0: started on tiny-digits: cpu, 2 torch threads" in worker.stderr
    # each finished trial: its value, the best so far, its parameters in short
    finished = r"trial 1 COMPLETE in [\d.]+ s: [\d.]+; best [\d.]+ \(trial [01]\); "
    assert re.search(finished + r"module__hidden1=\d+ lr=[\d.e-]+\n", worker.stderr), worker.stderr
    assert "start more workers" not in worker.stderr  # it was told its threads
    # left to size itself (here to 2 CPUs, as HPO_CPUS says), it says how to use them
    idle = run_hpo(*worker_command, env={"HPO_CPUS": "2"})
    assert idle.returncode == 0, idle.stderr
    assert "a net under 2 MFLOP per batch trains on one of these threads" in idle.stderr
    out = tmp_path / "best.csv"
    exported = run_hpo("export", "tiny-digits", "--out", str(out), "--storage", sqlite_url)
    assert exported.returncode == 0, exported.stderr
    # without --out: where hpo run writes it
    here = run_hpo("export", "tiny-digits", "--storage", sqlite_url, cwd=tmp_path)
    assert here.returncode == 0, here.stderr
    assert (
        tmp_path / "results" / "tiny-digits" / "best_params.csv"
    ).read_text() == out.read_text()
    # a path that cannot be written is reported by name, not as a traceback
    blocked = run_hpo(
        "export", "tiny-digits", "--out", str(out / "x.csv"), "--storage", sqlite_url
    )
    assert blocked.returncode == 1
    assert f"error:{out}:" in "".join(blocked.stderr.split())  # however rich wraps it
    assert "Traceback" not in blocked.stderr

    params = read_best_params(out)
    data = load_dataset("digits")
    net = TunedClassifier(MLP, module__input_shape=data.input_shape, module__n_outputs=10)
    net.set_params(**params)
    net.fit(data.X_train, data.y_train)
    assert net.module_.layers[1].out_features == params["module__hidden1"]
    assert type(net.optimizer_).__name__ == "Adamax"
    assert net.optimizer_.param_groups[0]["lr"] == pytest.approx(params["lr"])

    all_out = tmp_path / "trials.csv"
    assert (
        run_hpo(
            "export", "tiny-digits", "--all", "--out", str(all_out), "--storage", sqlite_url
        ).returncode
        == 0
    )
    trials = pd.read_csv(all_out)
    assert list(trials["state"]) == ["COMPLETE", "COMPLETE"]
    assert len(json.loads(trials["fold_scores"][0])) == 2


def test_studies_lists_and_delete_removes(
    write_spec: Callable[..., Path], sqlite_url: str
) -> None:
    run_hpo("register", str(write_spec()), "--storage", sqlite_url)
    listed = run_hpo("studies", "--storage", sqlite_url, env={"COLUMNS": "200"})
    assert listed.returncode == 0 and "tiny-digits" in listed.stdout
    assert "0 of 4" in listed.stdout  # trials done of the spec's budget
    smoke = run_hpo("worker", "--study", "tiny-digits", "--trials", "1", "--storage", sqlite_url)
    assert smoke.returncode == 0, smoke.stderr
    listed = run_hpo("studies", "--storage", sqlite_url, env={"COLUMNS": "200"})
    assert "1 of 1 (--trials; the spec's 4)" in listed.stdout
    command = [sys.executable, "-m", "hpo", "delete", "tiny-digits", "--storage", sqlite_url]
    # it asks first: no, or no answer, keeps the study
    for answer in ("n\n", ""):
        kept = subprocess.run(command, input=answer, capture_output=True, text=True, timeout=120)
        assert kept.returncode == 1, kept.stderr
        assert "Delete study tiny-digits and its 1 trials?" in kept.stdout
        assert "Traceback" not in kept.stderr
    assert optuna.load_study(study_name="tiny-digits", storage=sqlite_url)
    asked = subprocess.run(command, input="y\n", capture_output=True, text=True, timeout=120)
    assert asked.returncode == 0, asked.stderr
    assert "deleted tiny-digits" in asked.stdout
    assert "left on disk" in asked.stderr and "results/tiny-digits/" in asked.stderr
    run_hpo("register", str(write_spec()), "--storage", sqlite_url)
    # --yes (or -y) does not ask: what scripts use
    for flag in ("--yes", "-y"):
        deleted = run_hpo("delete", "tiny-digits", flag, "--storage", sqlite_url)
        assert deleted.returncode == 0, deleted.stderr
        assert "Delete study" not in deleted.stdout
        run_hpo("register", str(write_spec()), "--storage", sqlite_url)
    assert run_hpo("delete", "tiny-digits", "--yes", "--storage", sqlite_url).returncode == 0
    missing = run_hpo("worker", "--study", "tiny-digits", "--storage", sqlite_url)
    assert missing.returncode == 1
    assert "no study named 'tiny-digits'" in " ".join(missing.stderr.split())
    assert "Traceback" not in missing.stderr
    none = run_hpo("studies", "--storage", sqlite_url)
    assert none.returncode == 0 and "no studies in sqlite:///" in " ".join(none.stderr.split())


def test_every_command_reads_postgresql_with_the_password_file(
    write_spec: Callable[..., Path], postgres_url: str, tmp_path: Path
) -> None:
    """As docker compose runs them: the URL without its password in HPO_STORAGE, the
    password in the file HPO_STORAGE_PASSWORD_FILE names; each command applies it once."""
    from optuna.distributions import FloatDistribution, IntDistribution
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    password = url.password
    assert password, "the test server's URL carries the hpo role's password"
    secret = tmp_path / "postgres_password"
    secret.write_text(password + "\n")
    env = {
        "HPO_STORAGE": url.set(password=None).render_as_string(hide_password=False),
        "HPO_STORAGE_PASSWORD_FILE": str(secret),
        "COLUMNS": "200",
    }

    def hpo(*args: str) -> subprocess.CompletedProcess[str]:
        result = run_hpo(*args, cwd=tmp_path, env=env)
        assert result.returncode == 0, (args, result.stderr)
        assert password not in result.stdout + result.stderr, args
        return result

    hpo("register", str(write_spec()))
    optuna.load_study(study_name="tiny-digits", storage=postgres_url).add_trial(
        optuna.trial.create_trial(
            params={"module__hidden1": 16, "lr": 0.01},
            distributions={
                "module__hidden1": IntDistribution(8, 32),
                "lr": FloatDistribution(1e-3, 1e-1, log=True),
            },
            value=0.9,
            user_attrs={"fold_scores": [0.9, 0.9]},
        )
    )
    listed = hpo("studies")
    assert "tiny-digits" in listed.stdout and "1 of 4" in listed.stdout
    hpo("enqueue", "tiny-digits", "module__hidden1=20", "lr=0.02")
    hpo("export", "tiny-digits", "--out", str(tmp_path / "best.csv"))
    best = read_best_params(tmp_path / "best.csv")
    assert (best["module__hidden1"], best["lr"]) == (16, 0.01)
    hpo("report", "tiny-digits", "--out", str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").is_file()
    hpo("delete", "tiny-digits", "--yes")
    none = hpo("studies")
    said = " ".join(none.stderr.split())  # however rich wraps it
    assert f"no studies in postgresql+psycopg://{url.username}:***@" in said


def test_brackets_in_what_the_user_typed_are_printed_as_text(sqlite_url: str) -> None:
    # rich reads "[/]" as markup: printed as is, it crashes the error printer or vanishes
    optuna.create_study(storage=sqlite_url)  # a storage, without those studies
    for command, name in (("delete", "[/]"), ("export", "[/x]"), ("refit", "[bold]x[/]")):
        result = run_hpo(command, name, "--storage", sqlite_url)
        assert result.returncode == 1, (command, result.stderr)
        assert "Traceback" not in result.stderr
        message = " ".join(result.stderr.split())  # however rich wraps it
        assert message.startswith(f"error: no study named {name!r} in this storage"), message
        assert message.count("error:") == 1, message


def test_storage_is_the_flag_else_hpo_storage_else_hpo_db_here(
    write_spec: Callable[..., Path], tmp_path: Path
) -> None:
    spec_file = str(write_spec())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    from_env = f"sqlite:///{tmp_path / 'from-env.db'}"
    from_flag = f"sqlite:///{tmp_path / 'from-flag.db'}"

    assert run_hpo("register", spec_file, cwd=elsewhere, env={"HPO_STORAGE": ""}).returncode == 0
    assert (elsewhere / "hpo.db").exists()
    assert run_hpo("register", spec_file, env={"HPO_STORAGE": from_env}).returncode == 0
    assert (tmp_path / "from-env.db").exists()
    assert (
        run_hpo(
            "register", spec_file, "--storage", from_flag, env={"HPO_STORAGE": from_env}
        ).returncode
        == 0
    )
    assert (tmp_path / "from-flag.db").exists()


def test_dashboard_serves_the_study_on_localhost(
    write_spec: Callable[..., Path], sqlite_url: str
) -> None:
    run_hpo("register", str(write_spec()), "--storage", sqlite_url)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "hpo",
        "dashboard",
        "--storage",
        sqlite_url,
        "--port",
        str(port),
    ]
    with served(command):
        body = get_json(f"http://127.0.0.1:{port}/api/studies")
        assert [s["study_name"] for s in body["study_summaries"]] == ["tiny-digits"]
        # bound to loopback only
        listening = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True
        )
        if listening.returncode == 0 and listening.stdout.strip():
            assert "127.0.0.1" in listening.stdout


def _dashboard_server(name: str) -> str:
    if name == "gunicorn":
        pytest.importorskip("gunicorn", reason="gunicorn: pip install -e '.[gunicorn]'")
    return name


@pytest.mark.parametrize("server", ["wsgiref", "gunicorn"])
def test_the_dashboard_started_before_any_study_makes_the_database_and_says_so(
    server: str, tmp_path: Path
) -> None:
    # (the other commands refuse a missing database: test_hostile.py)
    database = tmp_path / "first" / "hpo.db"
    store = tmp_path / "no-store-yet"
    port = free_port()
    command = [sys.executable, "-m", "hpo", "dashboard", "--port", str(port)]
    command += ["--server", _dashboard_server(server), "--storage", f"sqlite:///{database}"]
    with served([*command, "--artifact-dir", str(store)]) as loud:
        assert get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"] == []
    assert database.is_file()
    log = "".join(loud.communicate()[0].split())  # however rich wraps it
    assert "".join(f"no database at {database} yet: made an empty one".split()) in log
    assert "".join(f"no artifact folder {store} yet".split()) in log  # the name it was given
    assert "GET/api/studiesHTTP/1.1" in log  # a line per request, by either server ...
    with served([*command, "--quiet"]) as quiet:
        for _ in range(2):
            assert get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"] == []
    said = quiet.communicate()[0]
    assert "GET /api" not in said and "INFO" not in said  # ... but not with --quiet
    assert "(Ctrl-C to stop)" in said


def test_the_dashboard_without_gunicorn_serves_with_wsgiref_or_says_how_to_install_it(
    sqlite_url: str,
) -> None:
    # gunicorn made unimportable, as where it is not installed
    hidden = (
        "import sys; sys.modules['gunicorn'] = None; sys.argv[0] = 'hpo'; "
        "from hpo.service.cli import main; main()"
    )
    port = free_port()
    command = [sys.executable, "-c", hidden, "dashboard", "--storage", sqlite_url]
    refused = subprocess.run(
        [*command, "--port", str(port), "--server", "gunicorn"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1, refused.stderr
    message = " ".join(refused.stderr.split())
    wanted = "--server gunicorn needs gunicorn, which is not installed here: pip install gunicorn"
    assert wanted in message and "--server wsgiref" in message, message
    assert "Traceback" not in message and "Ctrl-C to stop" not in message
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()  # refused before opening

    with served([*command, "--port", str(port)]) as auto:  # --server auto: wsgiref
        assert get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"] == []
    assert "GET /api/studies HTTP/1.1" in auto.communicate()[0]


def test_unknown_option_prints_usage_not_a_traceback() -> None:
    result = run_hpo("run", "--nope")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "No such option" in result.stderr


def test_a_bad_hpo_threads_is_named_in_the_error() -> None:
    result = run_hpo("worker", "--study", "any", env={"HPO_THREADS": "0"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "HPO_THREADS" in result.stderr


def test_a_device_it_cannot_use_fails_the_worker_before_any_trial(
    write_spec: Callable[..., Path], sqlite_url: str
) -> None:
    path = write_spec(budget={"trials": 2})
    assert run_hpo("register", str(path), "--storage", sqlite_url).returncode == 0
    unusable = {"gpu": "hpo trains on cpu, cuda or cuda:N"}
    if not torch.cuda.is_available():
        unusable["cuda"] = "sees no CUDA GPU here"
    for device, message in unusable.items():
        worker = run_hpo(
            "worker", "--study", "tiny-digits", "--storage", sqlite_url, "--device", device
        )
        assert worker.returncode == 1, worker.stderr
        assert message in " ".join(worker.stderr.split())  # rich wraps long lines
        assert "Traceback" not in worker.stderr
    assert optuna.load_study(study_name="tiny-digits", storage=sqlite_url).trials == []


def test_ctrl_c_stops_the_run_and_says_how_to_resume(
    write_spec: Callable[..., Path], tmp_path: Path, sqlite_url: str
) -> None:
    # trials of a few seconds each, so that Ctrl-C lands in the middle of one
    path = write_spec(budget={"trials": 50}, fixed={"max_epochs": 300, "batch_size": 32})
    assert run_hpo("register", str(path), "--storage", sqlite_url).returncode == 0
    command = [sys.executable, "-m", "hpo", "run", str(path), "--workers", "2"]
    run = subprocess.Popen(
        [*command, "--storage", sqlite_url],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,  # its own process group, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )
    wait_for_running_trial("tiny-digits", sqlite_url)
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C sends: the runner and its workers
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "the same command resumes the study" in " ".join(stderr.split())
    study = optuna.load_study(study_name="tiny-digits", storage=sqlite_url)
    states = {t.state for t in study.get_trials(deepcopy=False)}
    assert optuna.trial.TrialState.RUNNING not in states  # stopped, re-queued
    assert optuna.trial.TrialState.WAITING in states


def test_a_port_in_use_is_reported_with_a_way_out(sqlite_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for command in ("dashboard", "storage-proxy"):
            result = run_hpo(command, "--storage", sqlite_url, "--port", port, timeout=60)
            assert result.returncode == 1, (command, result.stderr)
            message = " ".join(result.stderr.split())
            assert f"cannot listen on 127.0.0.1:{port}" in message, (command, message)
            assert "--port" in message and "Traceback" not in message


def test_listening_beyond_loopback_needs_expose_and_warns(sqlite_url: str) -> None:
    for command, danger in (
        ("dashboard", "plain HTTP (no TLS) and, without --auth-file, asks for no credential"),
        ("storage-proxy", "no authentication and no TLS"),
    ):
        for host in ("0.0.0.0", "10.0.0.1", "::"):
            refused = run_hpo(command, "--storage", sqlite_url, "--host", host, timeout=60)
            assert refused.returncode == 2, (command, host, refused.stderr)
            message = " ".join(refused.stderr.split())
            assert danger in message, message
            assert "--expose" in message and "ssh -L" in message, message
            assert "Traceback" not in message and "(Ctrl-C to stop)" not in message
        for port in ("0", "65536", "-1"):
            bad = run_hpo(command, "--storage", sqlite_url, "--port", port, timeout=60)
            assert bad.returncode == 2, (command, port, bad.stderr)
            assert "Invalid value for '--port'" in bad.stderr
            assert "Traceback" not in bad.stderr and "Ctrl-C to stop" not in bad.stderr

    port = free_port()
    command = [sys.executable, "-m", "hpo", "storage-proxy", "--storage", sqlite_url]
    exposed = ["--host", "0.0.0.0", "--port", str(port), "--expose", "--insecure"]
    with served([*command, *exposed]) as proxy:
        optuna.storages.GrpcStorageProxy(port=port).wait_server_ready(timeout=60)
    output = " ".join(proxy.stdout.read().split())  # type: ignore[union-attr]
    assert "warning: hpo storage-proxy has no authentication and no TLS" in output, output
    assert "read, rewrite or delete every study" in output


def test_optunas_own_lines_come_only_with_verbose(
    write_spec: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_spec()
    quiet = run_hpo("register", str(path), "--storage", f"sqlite:///{tmp_path / 'a.db'}")
    assert quiet.returncode == 0, quiet.stderr
    assert "A new study created" not in quiet.stdout + quiet.stderr
    verbose = run_hpo("register", str(path), "--storage", f"sqlite:///{tmp_path / 'b.db'}", "-v")
    assert verbose.returncode == 0, verbose.stderr
    assert "register (optuna): A new study created in RDB with name: tiny-digits" in verbose.stderr
