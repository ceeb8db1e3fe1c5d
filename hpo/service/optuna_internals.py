"""The one place hpo reads Optuna's database tables directly, where Optuna has no public way.

Two questions a worker asks at every claim have no cheap public answer:

- How many of a study's trials are in each state? ``BaseStorage.get_n_trials`` and
  ``get_all_trials`` load every trial with its parameters and attributes: seconds in a study
  of 10,000 trials, under the claim lock. Here it is one ``GROUP BY``.
- Which RUNNING trials never recorded a heartbeat? Optuna's ``fail_stale_trials`` looks only at
  trials whose heartbeat went quiet, never at one whose worker died between claim and first
  beat. Optuna exposes no query for those.

And one Optuna answers only privately: which RUNNING trials' heartbeats went quiet
(``stale_trial_ids``); hpo fails them itself, to write why before they are finished.

The queries read Optuna's ``trials`` and ``trial_heartbeats`` tables, which are not a public
API: an Optuna release may rename them. ``schema_problems`` lists what these queries need and is
missing; the storage backends call ``check_schema`` when they open a database, and
tests/service/test_optuna_internals.py runs it against a fresh database of every kind, so a changed
schema is a clear error rather than a worker retrying what looks like a database outage.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import Engine, text

from hpo.errors import StorageError

#: The tables and columns the queries below read.
READS: dict[str, tuple[str, ...]] = {
    "trials": ("trial_id", "study_id", "state", "datetime_start"),
    "trial_heartbeats": ("trial_id",),
}


def schema_problems(engine: Engine) -> list[str]:
    """What the queries of this module read and the database lacks; empty when all is there."""
    inspector = sqlalchemy.inspect(engine)
    tables = set(inspector.get_table_names())
    problems = []
    for table, columns in READS.items():
        if table not in tables:
            problems.append(f"there is no table {table}")
            continue
        present = {column["name"] for column in inspector.get_columns(table)}
        problems += [f"table {table} has no column {c}" for c in columns if c not in present]
    return problems


def check_schema(engine: Engine) -> None:
    """Fail loudly when Optuna's tables no longer hold what hpo's queries read.

    Raises:
        StorageError: a table or column is gone; the message names it and this module.
    """
    problems = schema_problems(engine)
    if problems:
        raise StorageError(
            f"Optuna's schema changed: {'; '.join(problems)}. hpo reads these directly (no "
            "public Optuna API answers the question cheaply); update hpo/service/"
            "optuna_internals.py for this Optuna version"
        )


def count_states(engine: Engine, study_id: int) -> Counter[TrialState]:
    """How many of the study's trials are in each state, in one ``GROUP BY``."""
    query = text("SELECT state, COUNT(*) FROM trials WHERE study_id = :study_id GROUP BY state")
    with engine.connect() as connection:
        rows = connection.execute(query, {"study_id": study_id}).all()
    # The column holds the enum's name ("RUNNING"); older schemas wrote "TrialState.RUNNING".
    return Counter({TrialState[str(state).rsplit(".", 1)[-1]]: count for state, count in rows})


def stale_trial_ids(storage: RDBStorage, study_id: int) -> list[int]:
    """The study's RUNNING trials whose heartbeat is older than the storage's grace period,
    as Optuna's own sweep finds them (``RDBStorage._get_stale_trial_ids``, private): hpo
    writes a fail_reason before it fails them, which Optuna's sweep leaves no room for.

    Raises:
        StorageError: this Optuna has no such method (it was renamed or removed).
    """
    find = getattr(storage, "_get_stale_trial_ids", None)
    if find is None:
        raise StorageError(
            "Optuna's RDBStorage has no _get_stale_trial_ids any more; update "
            "hpo/service/optuna_internals.py for this Optuna version"
        )
    return list(find(study_id))


def running_without_heartbeat(engine: Engine, study_id: int) -> list[tuple[int, datetime | None]]:
    """The study's RUNNING trials that never recorded a heartbeat: (trial id, start time)."""
    query = text(
        "SELECT t.trial_id, t.datetime_start FROM trials t "
        "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.study_id = :study_id AND t.state = 'RUNNING' AND h.trial_id IS NULL"
    )
    with engine.connect() as connection:
        rows = connection.execute(query, {"study_id": study_id}).all()
    # SQLite hands the timestamp back as text.
    return [
        (trial_id, datetime.fromisoformat(started) if isinstance(started, str) else started)
        for trial_id, started in rows
    ]
