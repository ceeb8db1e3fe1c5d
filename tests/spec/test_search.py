"""Samplers and pruners beyond TPE and median: each name builds Optuna's class with the spec's
options (checked against its signature), ``auto`` follows its rule, each runs a real study,
and the pruners that could never prune K folds are refused with why."""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import optuna
import pytest
from conftest import tiny_spec
from optuna.trial import TrialState

from hpo.errors import SpecError
from hpo.service.storage import open_storage
from hpo.service.study import register_study
from hpo.service.worker import run_worker
from hpo.spec.pruning import PRUNERS, make_pruner, pruning_problem, pruning_start
from hpo.spec.sampling import GP_MAX_TRIALS, SAMPLERS, make_sampler, resolved_sampler
from hpo.spec.study_spec import StudySpec, parse_spec

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

NUMERIC_SPACE = {
    "module__hidden1": {"type": "int", "low": 8, "high": 32},
    "lr": {"type": "float", "low": 0.005, "high": 0.05, "log": True},
}


def spec_of(**overrides: Any) -> StudySpec:
    return parse_spec(tiny_spec(**overrides))


def problems(**overrides: Any) -> str:
    with pytest.raises(SpecError) as raised:
        parse_spec(tiny_spec(**overrides))
    return str(raised.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_each_sampler_builds_its_optuna_class_and_runs_a_real_study(
    name: str, sqlite_url: str
) -> None:
    spec = spec_of(name=f"tiny-{name}", sampler={"name": name, "seed": 3}, space=NUMERIC_SPACE)
    assert type(make_sampler(spec)) is SAMPLERS[name]
    register_study(spec, open_storage(sqlite_url))
    summary = run_worker(spec.name, sqlite_url, worker_index=0, heartbeat_seconds=0)
    assert summary.states == Counter({"COMPLETE": 4}), summary
    study = optuna.load_study(study_name=spec.name, storage=sqlite_url)
    assert len({(t.params["module__hidden1"], t.params["lr"]) for t in study.trials}) == 4


def test_sampler_options_are_checked_against_the_optuna_signature() -> None:
    gp = spec_of(sampler={"name": "gp", "options": {"n_startup_trials": 2}})
    assert type(make_sampler(gp)) is optuna.samplers.GPSampler
    unknown = problems(sampler={"name": "cmaes", "options": {"sigma": 0.5}})
    assert "sampler.options.sigma: not an option of the cmaes sampler" in unknown
    assert "did you mean 'sigma0'" in unknown
    # options that take Python objects cannot come from a file
    objects = problems(sampler={"name": "nsgaii", "options": {"mutation": "uniform"}})
    assert "sampler.options.mutation: takes a Python object" in objects
    assert "seed goes in sampler.seed" in problems(sampler={"name": "qmc", "options": {"seed": 1}})
    assert "auto picks its sampler by a rule" in problems(
        sampler={"name": "auto", "options": {"n_startup_trials": 2}}
    )


def test_auto_picks_gp_for_a_small_numeric_search_else_tpe() -> None:
    numeric = spec_of(sampler={"name": "auto"}, space=NUMERIC_SPACE)
    assert resolved_sampler(numeric) == "gp"
    assert type(make_sampler(numeric)) is optuna.samplers.GPSampler
    with_choice = {**NUMERIC_SPACE, "optimizer": {"type": "categorical", "choices": ["adam"]}}
    assert resolved_sampler(spec_of(sampler={"name": "auto"}, space=with_choice)) == "tpe"
    big = spec_of(
        sampler={"name": "auto"}, space=NUMERIC_SPACE, budget={"trials": GP_MAX_TRIALS + 1}
    )
    assert resolved_sampler(big) == "tpe"


def test_qmc_workers_share_one_sequence_and_other_samplers_seed_each_worker() -> None:
    def first_points(name: str) -> list[dict[str, Any]]:
        """Each of three workers' first point, each in a study of its own."""
        spec = spec_of(sampler={"name": name, "seed": 5}, space=NUMERIC_SPACE)
        points = []
        for worker in range(3):
            study = optuna.create_study(sampler=make_sampler(spec, worker))
            trial = study.ask()
            points.append({"lr": trial.suggest_float("lr", 0.005, 0.05, log=True)})
        return points

    qmc = first_points("qmc")
    assert qmc[0] == qmc[1] == qmc[2]  # one sequence: the study's trial number picks the point
    tpe = first_points("tpe")
    assert len({p["lr"] for p in tpe}) == 3


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_each_pruner_builds_its_optuna_class(name: str) -> None:
    spec = spec_of(pruner={"name": name}, cv={"folds": 5})
    assert type(make_pruner(spec)) is PRUNERS[name]
    start = pruning_start(spec)
    assert start is not None and start.first_fold < 4


def test_pruners_that_could_never_prune_three_folds_are_refused_with_why() -> None:
    wilcoxon = problems(pruner={"name": "wilcoxon"}, cv={"folds": 3})
    assert "pruner: wilcoxon with cv.folds: 3 can never prune" in wilcoxon
    assert "1/2^2 = 0.25, not under its p_threshold 0.1" in wilcoxon
    assert "use median, percentile or successive_halving" in wilcoxon
    # with a threshold above 1/2^2, or 5 folds (1/2^4 = 0.0625), it can
    assert (
        pruning_problem(
            spec_of(pruner={"name": "wilcoxon", "options": {"p_threshold": 0.3}}, cv={"folds": 3})
        )
        is None
    )
    assert pruning_problem(spec_of(pruner={"name": "wilcoxon"}, cv={"folds": 5})) is None
    patient = problems(pruner={"name": "patient"}, cv={"folds": 3})
    assert "patient with cv.folds: 3 can never prune" in patient
    assert "lower pruner.options.patience" in patient
    late = problems(pruner={"name": "median", "options": {"n_warmup_steps": 2}}, cv={"folds": 3})
    assert "lower pruner.options.n_warmup_steps" in late
    wrapped = problems(pruner={"name": "patient", "options": {"wrapped_pruner": "median"}})
    assert "takes a Python object" in wrapped and "patient wraps a median pruner" in wrapped


@pytest.mark.slow
def test_wilcoxon_is_fed_each_folds_own_score_and_prunes_a_bad_trial(sqlite_url: str) -> None:
    """WilcoxonPruner pairs a trial's fold scores with the best trial's on the same folds, so
    each fold's own score is reported (not the running mean the other pruners compare)."""
    spec = spec_of(
        name="tiny-wilcoxon",
        pruner={"name": "wilcoxon"},
        cv={"folds": 5, "shuffle": True, "seed": 0},
        budget={"trials": 2},
        fixed={"max_epochs": 5, "batch_size": 64, "optimizer": "adam"},
        space={"lr": {"type": "float", "low": 1e-7, "high": 0.05, "log": True}},
        enqueue=[{"lr": 0.02}, {"lr": 1e-7}],  # a good net, then one that cannot learn
    )
    register_study(spec, open_storage(sqlite_url))
    run_worker(spec.name, sqlite_url, worker_index=0, heartbeat_seconds=0)
    good, bad = optuna.load_study(study_name=spec.name, storage=sqlite_url).trials
    assert good.state == TrialState.COMPLETE
    assert list(good.intermediate_values.values()) == good.user_attrs["fold_scores"]
    assert bad.state == TrialState.PRUNED
    # it had to see 4 folds: the smallest p-value of 3 pairs (1/8) is above 0.1
    assert list(bad.intermediate_values.values()) == bad.user_attrs["fold_scores"]
    assert len(bad.user_attrs["fold_scores"]) == 4
