"""budget.target and budget.patience end a study: no new trial starts, and it says why."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from conftest import run_hpo, tiny_spec
from optuna.trial import TrialState

from hpo.errors import SpecError
from hpo.service.notes import ENDED_ATTR, ENDED_LINE_START
from hpo.service.storage import open_storage
from hpo.service.study import register_study
from hpo.service.worker import run_worker
from hpo.spec.stopping import stop_reason
from hpo.spec.study_spec import parse_spec


def completed(values: list[float], direction: str = "maximize") -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(direction=direction)
    for value in values:
        study.add_trial(optuna.trial.create_trial(value=value))
    return study.get_trials()


def test_a_target_ends_the_study_once_a_trial_reaches_it() -> None:
    spec = parse_spec(tiny_spec(budget={"trials": 50, "target": 0.9}))
    assert stop_reason(spec, completed([0.5, 0.85])) == ""
    reason = stop_reason(spec, completed([0.5, 0.93, 0.7]))
    assert reason.startswith("budget.target reached: trial 1 scored 0.93 (>= 0.9)")


def test_patience_counts_the_trials_completed_since_the_best() -> None:
    spec = parse_spec(tiny_spec(budget={"trials": 50, "patience": 2}))
    assert stop_reason(spec, completed([0.5, 0.6, 0.55])) == ""
    reason = stop_reason(spec, completed([0.5, 0.6, 0.55, 0.58]))
    assert reason.startswith("budget.patience of 2 reached: 2 trials completed since the best")
    assert stop_reason(spec, completed([0.5, 0.6, 0.55, 0.7])) == ""  # a new best resets it


def test_several_objectives_refuse_the_stop_rules() -> None:
    raw = tiny_spec(
        scoring=["accuracy", "n_parameters"],
        pruner={"name": "none"},
        budget={"trials": 10, "target": 0.9, "patience": 3},
    )
    with pytest.raises(SpecError) as refused:
        parse_spec(raw)
    assert any("budget.target: a study of several objectives" in p for p in refused.value.problems)
    assert any("budget.patience: a study of several" in p for p in refused.value.problems)


@pytest.mark.parametrize("budget", [{"target": float("nan")}, {"patience": 0}])
def test_a_target_or_patience_no_study_can_meet_is_refused(budget: dict[str, float]) -> None:
    with pytest.raises(SpecError):
        parse_spec(tiny_spec(budget={"trials": 10, **budget}))


def scripted(values: list[float]) -> Callable[..., float]:
    """A trial objective that returns ``values`` in turn (the worker loop's own test double:
    the rule, not the nets, is under test)."""
    given: Iterator[float] = iter(values)

    def objective(trial: optuna.Trial, should_stop: Callable[[], bool]) -> float:
        return next(given)

    return objective


@pytest.mark.parametrize(
    ("budget", "values", "ran", "says"),
    [
        ({"target": 0.8}, [0.5, 0.85, 0.9, 0.95], 2, "budget.target reached: trial 1"),
        ({"patience": 2}, [0.5, 0.6, 0.55, 0.58, 0.9, 0.9], 4, "budget.patience of 2 reached"),
    ],
)
def test_a_worker_starts_no_trial_once_a_rule_ends_the_study(
    budget: dict[str, float],
    values: list[float],
    ran: int,
    says: str,
    sqlite_url: str,
) -> None:
    spec = parse_spec(tiny_spec(budget={"trials": 20, **budget}))
    register_study(spec, open_storage(sqlite_url))
    summary = run_worker(
        spec.name, sqlite_url, worker_index=0, heartbeat_seconds=0, objective=scripted(values)
    )
    assert summary.states == {"COMPLETE": ran} and not summary.gave_up
    study = optuna.load_study(study_name=spec.name, storage=sqlite_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * ran
    assert study.user_attrs[ENDED_ATTR].startswith(says)
    from optuna_dashboard import get_note

    assert f"{ENDED_LINE_START}{says}" in get_note(study)
    # a worker started later finds the study ended, and starts nothing
    again = run_worker(
        spec.name, sqlite_url, worker_index=1, heartbeat_seconds=0, objective=scripted([])
    )
    assert sum(again.states.values()) == 0


@pytest.mark.slow
def test_hpo_studies_says_why_a_study_ended(sqlite_url: str, tmp_path: Path) -> None:
    spec = parse_spec(tiny_spec(budget={"trials": 20, "target": 0.5}))
    register_study(spec, open_storage(sqlite_url))
    run_worker(
        spec.name, sqlite_url, worker_index=0, heartbeat_seconds=0, objective=scripted([0.9])
    )
    listed = run_hpo("studies", "--storage", sqlite_url, env={"COLUMNS": "250"})
    assert listed.returncode == 0, listed.stderr
    assert "budget.target reached: trial 0 scored 0.9" in " ".join(listed.stdout.split())
