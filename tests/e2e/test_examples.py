"""The README's "From Python" and the examples under examples/ run as a user runs them:
real processes in a fresh working directory, the default SQLite storage and artifact folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def run_python(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HPO_STORAGE", "HPO_ARTIFACTS")}
    env.pop("HPO_ALLOW_MODULES", None)
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def readme_python() -> str:
    """The first Python block of the README's "From Python" section."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README's From Python section has no python block"
    return match.group(1)


def test_the_readmes_from_python_runs(tmp_path: Path) -> None:
    shutil.copytree(REPO / "studies", tmp_path / "studies")
    (tmp_path / "from_python.py").write_text(readme_python())

    shown = run_python("from_python.py", cwd=tmp_path).stdout.splitlines()

    assert (tmp_path / "hpo.db").is_file() and (tmp_path / "results").is_dir()
    predicted = shown[-1].strip("[]").split()
    assert len(predicted) == 10 and all(p.isdigit() for p in predicted)


def test_the_custom_module_example_searches_refits_and_loads_in_another_process(
    tmp_path: Path,
) -> None:
    example = REPO / "examples" / "custom_module"

    searched = run_python(str(example / "search.py"), cwd=tmp_path).stdout
    assert "best CV accuracy" in searched and "refit: test accuracy" in searched

    loaded = run_python(str(example / "predict.py"), cwd=tmp_path).stdout
    match = re.search(r"ResidualMLP loaded; test accuracy (\d\.\d+)", loaded)
    assert match and float(match.group(1)) > 0.8, loaded
    refit = float(re.search(r"refit: test accuracy (\d\.\d+)", searched).group(1))  # type: ignore[union-attr]
    assert float(match.group(1)) == pytest.approx(refit, abs=1e-3)  # the same net, reloaded


def test_the_tabular_csv_example_runs(tmp_path: Path) -> None:
    shown = run_python(str(REPO / "examples" / "tabular_csv" / "search.py"), cwd=tmp_path).stdout
    assert (tmp_path / "data" / "breast_cancer.csv").is_file()
    auc = float(re.search(r"best CV ROC AUC (\d\.\d+)", shown).group(1))  # type: ignore[union-attr]
    assert auc > 0.9, shown
    assert "plain skorch pipeline: training accuracy" in shown
