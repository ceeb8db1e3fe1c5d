"""Shared fixtures: real storages in temporary folders, and small specs that train in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A digits MLP study small enough to run a trial in about a second on one core."""
    spec: dict[str, Any] = {
        "name": "tiny-digits",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "sampler": {"name": "random", "seed": 0},
        "scoring": "accuracy",
        "cv": {"folds": 2, "shuffle": True, "seed": 0},
        "budget": {"trials": 4},
        "fixed": {"max_epochs": 3, "batch_size": 128},
        "space": {
            "module__hidden1": {"type": "int", "low": 8, "high": 32},
            "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        },
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hpo.db'}"


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec (``tiny_spec`` with overrides, or a given mapping) to a YAML file."""

    def write(
        spec: dict[str, Any] | None = None, name: str = "study.yaml", **overrides: Any
    ) -> Path:
        path = tmp_path / name
        path.write_text(
            yaml.safe_dump(spec if spec is not None else tiny_spec(**overrides), sort_keys=False)
        )
        return path

    return write


def run_hpo(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real ``hpo`` command in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
