"""The commands that only touch the storage never import torch, skorch or torchvision.

Importing torch takes seconds; ``hpo register``, ``export``, ``studies``, ``enqueue`` and
``delete`` need none of it. Each command runs for real under ``python -X importtime``, and a
heavy import is reported with the chain of modules that pulled it in.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from conftest import tiny_spec

import hpo.spec

pytestmark = pytest.mark.slow  # the real hpo command in subprocesses

HEAVY = frozenset({"torch", "skorch", "torchvision"})


def run_with_importtime(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -X importtime <args>``; the import report goes to stderr."""
    return subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def imports_of(stderr: str) -> list[tuple[int, str]]:
    """``(depth, module)`` of every ``import time:`` line, in the order Python printed them
    (a module after the modules it imported, one level less indented)."""
    entries = []
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        column = line.split("|")[-1]
        if column.strip() == "imported package":
            continue  # the header
        depth = (len(column) - len(column.lstrip()) - 1) // 2
        entries.append((depth, column.strip()))
    return entries


def heavy_import_chains(stderr: str) -> list[str]:
    """``"a > b > torch"`` for each heavy module imported by a module that is not heavy."""
    entries = imports_of(stderr)
    chains = []
    for index, (depth, module) in enumerate(entries):
        if module.partition(".")[0] not in HEAVY:
            continue
        chain = [module]
        for parent_depth, parent in entries[index + 1 :]:
            if parent_depth < depth:
                chain.insert(0, parent)
                depth = parent_depth
        if not any(part.partition(".")[0] in HEAVY for part in chain[:-1]):
            chains.append(" > ".join(chain))
    return chains


def other_output(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))


def test_heavy_import_chains_reads_importtime_output() -> None:
    stderr = run_with_importtime("-c", "import json, email.mime.text").stderr
    assert imports_of(stderr), "python -X importtime printed no import lines"
    assert heavy_import_chains(stderr) == []
    fake = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       1 |          1 |       torch._C\n"
        "import time:       1 |          2 |     torch\n"
        "import time:       1 |          3 |   hpo.engine.nets\n"
        "import time:       1 |          4 | hpo.spec.study_spec\n"
        "import time:       1 |          1 | skorch\n"
    )
    assert heavy_import_chains(fake) == [
        "hpo.spec.study_spec > hpo.engine.nets > torch",
        "skorch",
    ]


def test_the_declaration_room_imports_no_torch() -> None:
    modules = [f"hpo.spec.{m.name}" for m in pkgutil.iter_modules(hpo.spec.__path__)]
    assert "hpo.spec.study_spec" in modules
    result = run_with_importtime("-c", f"import {', '.join(modules)}")
    assert result.returncode == 0, other_output(result.stderr)
    assert heavy_import_chains(result.stderr) == []


def test_storage_commands_import_no_torch(
    write_spec: Callable[..., Path], tmp_path: Path, sqlite_url: str
) -> None:
    spec_file = write_spec()
    name = tiny_spec()["name"]
    heavy: dict[str, list[str]] = {}

    def hpo(*args: str) -> None:
        result = run_with_importtime("-m", "hpo", *args, "--storage", sqlite_url)
        assert result.returncode == 0, f"hpo {args[0]} failed:\n{other_output(result.stderr)}"
        if chains := heavy_import_chains(result.stderr):
            heavy[f"hpo {args[0]}"] = chains

    hpo("register", str(spec_file))
    # A completed trial for export, made with plain Optuna: running one would need torch.
    study = optuna.load_study(study_name=name, storage=sqlite_url)
    trial = study.ask()
    trial.suggest_int("module__hidden1", 8, 32)
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    study.tell(trial, 0.5)
    hpo("export", name, "--out", str(tmp_path / "best.csv"))
    assert (tmp_path / "best.csv").read_text().count("\n") == 2
    hpo("studies")
    hpo("enqueue", name, "module__hidden1=16", "lr=0.01")
    hpo("delete", name, "--yes")

    assert heavy == {}, "these commands import a heavy package (importer > ... > package):\n" + (
        "\n".join(f"{command}: {chain}" for command, chains in heavy.items() for chain in chains)
    )
