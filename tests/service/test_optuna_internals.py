"""The Optuna tables hpo reads directly are still there, on a fresh database of every kind."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from sqlalchemy import create_engine, text

from hpo.errors import StorageError
from hpo.service import optuna_internals
from hpo.service.storage import open_backend


def test_optunas_schema_still_has_what_hpo_reads(storage_url: str) -> None:
    # A bare RDBStorage, as Optuna itself creates the tables (open_backend checks them too).
    engine = RDBStorage(storage_url).engine
    problems = optuna_internals.schema_problems(engine)
    assert not problems, (
        f"Optuna's schema changed: {'; '.join(problems)}; update "
        "hpo/service/optuna_internals.py (its queries read these)"
    )


def test_optunas_stale_trial_query_is_still_there(storage_url: str) -> None:
    # RDBStorage._get_stale_trial_ids is private; hpo's sweep calls it (stale_trial_ids).
    backend = open_backend(storage_url, heartbeat=1)
    study = optuna.create_study(storage=backend.storage)
    assert (
        optuna_internals.stale_trial_ids(backend.storage, backend.study_id(study.study_name)) == []
    )


def test_a_missing_table_or_column_is_a_clear_error_when_the_storage_opens(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    engine = RDBStorage(url).engine
    with engine.begin() as connection:
        # (RDBStorage creates a missing table again: rename the column instead)
        connection.execute(text("ALTER TABLE trial_heartbeats RENAME trial_id TO trial"))
        connection.execute(text("ALTER TABLE trials DROP COLUMN datetime_start"))
    engine.dispose()

    with pytest.raises(StorageError) as caught:
        open_backend(url)

    message = str(caught.value)
    assert message.startswith("Optuna's schema changed: ")
    assert "table trial_heartbeats has no column trial_id" in message
    assert "table trials has no column datetime_start" in message
    assert "update hpo/service/optuna_internals.py" in message


def test_missing_tables_are_named() -> None:
    problems = optuna_internals.schema_problems(create_engine("sqlite://"))
    assert problems == ["there is no table trials", "there is no table trial_heartbeats"]
