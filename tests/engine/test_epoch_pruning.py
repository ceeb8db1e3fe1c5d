"""Pruning by the epoch (``pruner.over: epochs | both``): what a trial reports at its epochs,
that a pruned trial stops training mid-fit, that reporting changes no fold's score, and that
every pruner with every fold strategy and axis works or is refused with why."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import pytest
from conftest import tiny_spec
from sklearn.model_selection import cross_val_score

from hpo.engine.build import build_net
from hpo.engine.data import load_dataset
from hpo.engine.folds.plan import FoldOptions, fold_groups, worker_fold_plan
from hpo.engine.objective import evaluate, make_folds
from hpo.engine.reports import TrialReports
from hpo.errors import SpecError
from hpo.spec.pruning import PRUNER_NAMES, make_pruner
from hpo.spec.study_spec import StudySpec, parse_spec

STACKED = FoldOptions()
ONE_BY_ONE = FoldOptions(stack_folds=False)
GOOD = {"module__hidden1": 32, "lr": 0.05}
HOPELESS = {"module__hidden1": 8, "lr": 0.0011}  # barely learns in a few epochs


def epoch_spec(
    over: str, pruner: str = "median", folds: int = 3, epochs: int = 4, **options: Any
) -> StudySpec:
    chosen = {"name": pruner, "over": over, "options": options}
    return parse_spec(
        tiny_spec(
            cv={"folds": folds}, fixed={"max_epochs": epochs, "batch_size": 64}, pruner=chosen
        )
    )


def intermediate(study: optuna.Study, number: int = -1) -> dict[int, float]:
    return dict(study.trials[number].intermediate_values)


def test_over_epochs_the_folds_stack_at_once_and_over_both_the_first_two_first() -> None:
    assert fold_groups(5, 1, "epochs") == [[0, 1, 2, 3, 4]]
    assert fold_groups(5, None, "both") == [[0, 1], [2, 3, 4]]  # whether or not it started
    assert fold_groups(3, None, "both") == [[0, 1], [2]]
    assert fold_groups(2, None, "both") == [[0], [1]]


def test_a_trial_that_reports_epochs_never_plans_fold_processes() -> None:
    spec = epoch_spec("epochs")
    unstacked = FoldOptions(stack_folds=False)
    plan = worker_fold_plan(spec, device="cpu", threads=2, validation=False, options=unstacked)
    assert plan.strategy == "one by one"
    folds_spec = epoch_spec("folds")
    plan = worker_fold_plan(
        folds_spec, device="cpu", threads=2, validation=False, options=unstacked
    )
    assert plan.strategy == "fold processes"


@pytest.mark.slow
@pytest.mark.parametrize("options", [STACKED, ONE_BY_ONE], ids=["stacked", "one-by-one"])
def test_reporting_epochs_leaves_every_fold_as_cross_val_score_scores_it(
    options: FoldOptions,
) -> None:
    spec = epoch_spec("epochs", pruner="none")
    data = load_dataset("digits")
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(GOOD)
    trial = study.ask()
    value = evaluate(trial, spec, data, "cpu", options=options)
    study.tell(trial, value)
    net = build_net(spec, data, spec.configuration(trial.params), "cpu")
    expected = cross_val_score(
        net, data.X_train, data.y_train, cv=make_folds(spec), scoring=spec.scoring
    )
    np.testing.assert_allclose(study.trials[0].user_attrs["fold_scores"], expected, rtol=1e-6)
    steps = intermediate(study)
    stacked = options is STACKED
    # Stacked: the 3 folds' 4 epochs at once; one by one, each fold's 4 epochs in turn.
    assert sorted(steps) == list(range(4 if stacked else 12))
    # The last report is the trial's CV mean: every fold at its last epoch.
    assert steps[max(steps)] == pytest.approx(expected.mean(), rel=1e-6)
    assert (
        study.trials[0]
        .user_attrs["folds_plan"]
        .startswith("folds stacked" if stacked else "folds one by one")
    )


@pytest.mark.slow
def test_with_early_stopping_a_stacked_trial_reports_its_folds_final_scores_last() -> None:
    # Folds that stop early keep their best epoch's score; the others report their weights
    # of each epoch until the last, where every fold counts with its final score.
    spec = parse_spec(
        tiny_spec(
            cv={"folds": 3},
            fixed={"max_epochs": 8, "batch_size": 64, "early_stopping_patience": 2},
            pruner={"name": "none", "over": "epochs", "report_every": 1},
        )
    )
    data = load_dataset("digits")
    study = optuna.create_study(direction="maximize")
    for params in (GOOD, HOPELESS):
        study.enqueue_trial(params)
    study.optimize(lambda t: evaluate(t, spec, data, "cpu", options=STACKED), n_trials=2)
    for trial in study.trials:
        steps = intermediate(study, trial.number)
        assert trial.value is not None
        assert steps[max(steps)] == pytest.approx(trial.value, rel=1e-9)
        assert trial.user_attrs["folds_plan"].startswith("folds stacked")


@pytest.mark.slow
def test_over_both_the_first_two_folds_report_their_epochs_then_the_rest() -> None:
    spec = epoch_spec("both", pruner="none", folds=4, epochs=3)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(GOOD)
    study.optimize(lambda t: evaluate(t, spec, load_dataset("digits"), "cpu"), n_trials=1)
    steps = intermediate(study)
    assert sorted(steps) == list(range(6))  # two stacked fits of 3 epochs
    folds = study.trials[0].user_attrs["fold_scores"]
    # After the first fit, its two folds' mean; after the second, all four.
    assert steps[2] == pytest.approx(np.mean(folds[:2]), rel=1e-6)
    assert steps[5] == pytest.approx(np.mean(folds), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("options", [STACKED, ONE_BY_ONE], ids=["stacked", "one-by-one"])
def test_a_hopeless_trial_is_pruned_mid_fit_and_trains_fewer_epochs(options: FoldOptions) -> None:
    spec = epoch_spec("epochs", epochs=12, n_startup_trials=2, n_warmup_steps=2)
    data = load_dataset("digits")
    study = optuna.create_study(direction="maximize", pruner=make_pruner(spec))
    for params in (GOOD, GOOD, HOPELESS):
        study.enqueue_trial(params)
    study.optimize(lambda t: evaluate(t, spec, data, "cpu", options=options), n_trials=3)
    pruned = study.trials[-1]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    stopped = pruned.user_attrs["pruned_at"]
    assert 3 <= stopped["epoch"] < 12  # after the warm-up, well before the last epoch
    assert stopped["folds"] == ([0, 1, 2] if options is STACKED else [0])
    assert "fold_scores" not in pruned.user_attrs  # no fold finished
    assert max(pruned.intermediate_values) == stopped["step"]


def test_a_trial_is_not_pruned_once_its_last_fit_has_stopped_early() -> None:
    spec = epoch_spec("epochs", pruner="none", epochs=12)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(2.0))
    trial = study.ask()  # every value is under 2: the pruner says prune at every report
    reports = TrialReports(trial, spec, folds=3, max_epochs=12, may_prune=True)
    reports.epoch_scored(4, {0: 0.5, 1: 0.5, 2: 0.5}, ended=True)  # all stopped: nothing to save
    reports.epoch_scored(11, {0: 0.5, 1: 0.5, 2: 0.5})  # the last epoch
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 5 of folds 0, 1"):
        reports.epoch_scored(4, {0: 0.5, 1: 0.5}, ended=True)  # a first fit: 2 left to save


def _every_pruner() -> list[tuple[str, str]]:
    return [(name, over) for name in PRUNER_NAMES for over in ("folds", "epochs", "both")]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "over"), _every_pruner())
@pytest.mark.parametrize("options", [STACKED, ONE_BY_ONE], ids=["stacked", "one-by-one"])
def test_every_pruner_with_every_strategy_and_axis_runs_or_is_refused(
    name: str, over: str, options: FoldOptions
) -> None:
    try:
        spec = epoch_spec(over, pruner=name, folds=5, epochs=2)
    except SpecError as refused:
        assert name in ("wilcoxon", "forgiving") and over != "folds"
        assert "steps over folds only" in str(refused)
        return
    data = load_dataset("digits")
    study = optuna.create_study(direction="maximize", pruner=make_pruner(spec))
    for params in (GOOD, HOPELESS, GOOD):
        study.enqueue_trial(params)
    study.optimize(lambda t: evaluate(t, spec, data, "cpu", options=options), n_trials=3)
    assert all(t.state.is_finished() for t in study.trials)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    steps = sorted(intermediate(study, 0))
    if over == "folds":
        assert steps == list(range(5))
    else:
        fits = 5 if options is ONE_BY_ONE else (1 if over == "epochs" else 2)
        assert steps == list(range(2 * fits))
