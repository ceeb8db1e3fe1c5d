"""Storage settings: SQLite with WAL, commits without an fsync each, nothing lost to a kill;
and a database that cannot be opened, reported without its password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import free_port
from sqlalchemy import text
from sqlalchemy.engine import make_url

from hpo.errors import StorageError
from hpo.service.storage import open_storage

WRITE_THEN_DIE = """
import os, signal, sys
import optuna
from hpo.service.storage import open_storage
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


def test_a_database_it_cannot_open_is_a_storage_error_that_hides_the_password(
    postgres_url: str,
) -> None:
    url = make_url(postgres_url)
    wrong_password = url.set(password="not-the-password").render_as_string(hide_password=False)
    nowhere = url.set(port=free_port()).render_as_string(hide_password=False)
    no_database = url.set(database="no_such_hpo_db").render_as_string(hide_password=False)
    for bad, reason in (
        (wrong_password, "password authentication failed"),
        (nowhere, "Connection refused"),
        (no_database, 'database "no_such_hpo_db" does not exist'),
    ):
        with pytest.raises(StorageError, match="cannot open the storage") as caught:
            open_storage(bad)
        message = str(caught.value)
        assert reason in message
        assert "not-the-password" not in message and url.password not in message
        assert f"{url.username}:***@" in message
