"""A hung test fails, named, and the run goes on (pytest-timeout with tests/conftest.py's timer),
also when it hangs on a process it started: CI then reports which test hung instead of running
into its deadline with every test after it unrun."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

HUNG = """
import subprocess, sys, time
import pytest

@pytest.mark.timeout(2)
def test_waits_on_a_process_that_never_ends():
    with subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.PIPE, text=True
    ) as process:
        for _ in process.stdout:
            pass

def test_after_it():
    pass
"""


@pytest.mark.slow
def test_a_test_hung_on_its_process_fails_named_and_the_next_one_runs(tmp_path: Path) -> None:
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_hung.py").write_text(HUNG)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "timeout",
         "test_hung.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ran past 2 s (pytest-timeout): killed its 1 processes" in done.stdout, done.stdout
    assert "1 failed, 1 passed" in done.stdout, done.stdout
