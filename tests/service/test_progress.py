"""What ``hpo run`` shows while it runs: the workers' log lines through its own console, in
one format with Optuna's; a progress bar on a terminal (a real pseudo-terminal here), progress
lines elsewhere; ``-q`` and ``-v``."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_hpo

pytestmark = pytest.mark.slow  # the real hpo command, with worker processes

#: A line in hpo's one log format: date, time, level, origin, message.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) [\w ()]+: ")
#: The start of a log line in Optuna's own format (``[I 2026-12-02 06:51:46,834] ...``).
OPTUNA_FORMAT = re.compile(r"^\[[DIWE] \d{4}-", re.MULTILINE)


def test_off_a_terminal_run_prints_worker_lines_and_progress_lines(
    write_spec: Callable[..., Path], tmp_path: Path, sqlite_url: str
) -> None:
    path = write_spec(budget={"trials": 4})
    result = run_hpo("run", str(path), "--workers", "2", "--storage", sqlite_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "registered study tiny-digits\nstarting 2 workers (torch, data) for tiny-digits" in err
    # the workers' lines came through hpo run, each whole, in the one format
    for worker in (0, 1):
        assert re.search(rf"^.* INFO worker {worker}: started on tiny-digits: cpu", err, re.M)
    finished = re.findall(r"^.* INFO worker [01]: trial \d COMPLETE in .*$", err, re.M)
    assert len(finished) == 4, err
    assert all(LOG_LINE.match(line) for line in finished)
    assert not OPTUNA_FORMAT.search(err)
    # the last progress line, then the summary
    assert re.search(
        r"^tiny-digits: 4 of 4 trials done \(4 COMPLETE\), 0 running, best 0\.\d{4} \(trial \d\)",
        err,
        re.M,
    ), err
    assert "\x1b[" not in err  # no terminal codes in a log file


def test_quiet_and_verbose(write_spec: Callable[..., Path], tmp_path: Path) -> None:
    quiet = run_hpo(
        "run",
        str(write_spec(budget={"trials": 2})),
        "-q",
        "--storage",
        f"sqlite:///{tmp_path / 'quiet.db'}",
        cwd=tmp_path,
    )
    assert quiet.returncode == 0, quiet.stderr
    assert " INFO " not in quiet.stderr  # no line per trial, no start-up line
    assert "tiny-digits: 2 of 2 trials done" in quiet.stderr  # progress stays

    verbose = run_hpo(
        "run",
        str(write_spec(budget={"trials": 2})),
        "-v",
        "--storage",
        f"sqlite:///{tmp_path / 'verbose.db'}",
        cwd=tmp_path,
    )
    assert verbose.returncode == 0, verbose.stderr
    # Optuna's own info lines, in hpo's format, naming Optuna as their source
    created = re.search(r"^.* INFO run \(optuna\): A new study created", verbose.stderr, re.M)
    assert created and LOG_LINE.match(created.group(0)), verbose.stderr
    assert not OPTUNA_FORMAT.search(verbose.stderr)
    assert len(re.findall(r" INFO worker 0: trial \d COMPLETE", verbose.stderr)) == 2


def test_on_a_terminal_the_workers_lines_go_above_the_progress_bar(
    write_spec: Callable[..., Path], tmp_path: Path, sqlite_url: str
) -> None:
    path = write_spec(budget={"trials": 4})
    primary, secondary = pty.openpty()
    command = [sys.executable, "-m", "hpo", "run", str(path), "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "xterm", "COLUMNS": "200"}
    with subprocess.Popen(
        [*command, "--storage", sqlite_url],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        cwd=tmp_path,
        env=env,
    ) as process:
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's last writer has gone
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=300) == 0
    os.close(primary)
    screen = b"".join(chunks).decode("utf-8", "replace")
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    # while the workers import torch and load the data, the bar says so
    assert "starting 2 workers (torch, data)" in plain
    # each worker line is printed whole on a cleared line, never in the middle of the bar
    lines = [line.rstrip("\r").split("\r")[-1] for line in plain.split("\n")]  # ONLCR: \r\n
    finished = [line for line in lines if re.search(r"worker [01]: trial \d COMPLETE", line)]
    assert len(finished) == 4, plain
    assert all(LOG_LINE.match(line) for line in finished), finished
    assert re.search(r"tiny-digits .* 4/4 best 0\.\d{4} \(trial \d\)", plain)
