"""Every benchmark under benchmarks/ runs: its ``--quick`` mode (the same code path end to end,
real workers, storage and training, at its smallest size) in a subprocess from the repository
root, as a user runs it, exits 0 and prints its figures. A benchmark that nothing runs breaks
silently: storage_scaling.py failed at main for weeks on a spec rule added after it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

#: Each script, and a line that its results always print.
FIGURES = {
    "chaos.py": "all passed: budgets exact, every grid point once",
    "flop_floor.py": "| net | threads | MFLOP per training batch | layers' GFLOP/s |",
    "epoch_reports.py": "| case | trials | over folds s/trial | over epochs s/trial |",
    "optimizer_step.py": "| case | after s | after loss |",
    "search_baselines.py": "| method | reached target | median to target s |",
    "stacked_folds.py": "| net | MFLOP per batch | one by one s | stacked s |",
    "storage_scaling.py": "| plain Optuna ms/trial | hpo / Optuna (range) |",
    # the FLOP floor's table, which comes after every case's own
    "trial_speed.py": "| case | threads | GFLOP per trial |",
    "user_nets.py": "| user net | MFLOP per batch | one by one |",
}


def test_every_benchmark_has_a_quick_run_here() -> None:
    scripts = sorted(path.name for path in (REPO / "benchmarks").glob("*.py"))
    assert scripts == sorted(FIGURES), "a benchmark without its --quick test below, or gone"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(FIGURES))
def test_the_benchmark_runs_quick_and_prints_its_figures(script: str) -> None:
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,  # about a minute each on 2 quiet cores; minutes when they are shared
    )

    shown = f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    assert done.returncode == 0, shown
    assert FIGURES[script] in done.stdout, shown
    assert "Traceback" not in done.stdout + done.stderr, shown
