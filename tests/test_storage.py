"""SQLite storage settings: WAL, commits without an fsync each, and nothing lost to a kill."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
from sqlalchemy import text

from hpo.storage import open_storage

WRITE_THEN_DIE = """
import os, signal, sys
import optuna
from hpo.storage import open_storage
study = optuna.create_study(storage=open_storage(sys.argv[1]), study_name="killed")
trial = study.ask()
trial.set_user_attr("written", True)
trial.report(0.5, step=0)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sqlite_runs_wal_and_commits_without_syncing_each(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")
    with storage.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL


def test_an_in_memory_database_keeps_its_one_connection() -> None:
    study = optuna.create_study(storage=open_storage("sqlite:///:memory:"))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(study.trials) == 2


def test_what_a_killed_writer_committed_is_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    done = subprocess.run([sys.executable, "-c", WRITE_THEN_DIE, url], check=False)
    assert done.returncode == -9
    study = optuna.load_study(study_name="killed", storage=open_storage(url))
    (trial,) = study.trials
    assert trial.user_attrs == {"written": True}
    assert trial.intermediate_values == {0: 0.5}
