"""``pruner.over``: what a trial reports to its pruner (folds, epochs or both), the steps of
its epochs, hpo's defaults over epochs, the refusals, and the forgiving CV pruner."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from test_search import problems, spec_of

from hpo.spec.forgiving import ForgivingPruner
from hpo.spec.pruning import (
    EpochSteps,
    make_pruner,
    pruner_options,
    pruning_problem,
    report_every,
    reports_epochs,
    spec_max_epochs,
)


def test_a_trial_reports_its_folds_unless_the_spec_asks_for_epochs() -> None:
    assert spec_of(pruner={"name": "median"}).pruner.over == "folds"
    assert not reports_epochs(spec_of(pruner={"name": "median"}))
    assert reports_epochs(spec_of(pruner={"name": "median", "over": "epochs"}))
    assert reports_epochs(spec_of(pruner={"name": "median", "over": "both"}))
    wrong = problems(pruner={"name": "median", "over": "batches"})
    assert "pruner.over" in wrong and "'folds', 'epochs' or 'both'" in wrong
    assert "pruner.report_every" in problems(pruner={"name": "median", "report_every": 0})


def test_epoch_steps_are_epochs_and_each_fit_follows_the_last() -> None:
    every = EpochSteps(max_epochs=20, report_every=3)
    reported = [epoch for epoch in range(20) if every.reports_at(epoch)]
    assert reported == [2, 5, 8, 11, 14, 17, 19]  # and the last epoch, always
    assert [every.step(0, epoch) for epoch in reported] == reported  # a step is an epoch
    assert every.reports == 7
    assert [every.step(1, epoch) for epoch in reported] == [20 + epoch for epoch in reported]
    each = EpochSteps(max_epochs=4)
    assert [each.step(fit, epoch) for fit in range(2) for epoch in range(4)] == list(range(8))
    # A trial with fewer epochs than the spec's most steps the same grid as the others.
    short = EpochSteps(max_epochs=10, fit_epochs=20)
    assert short.reports_at(9) and short.step(1, 0) == 20


def test_without_report_every_a_fit_reports_about_ten_times() -> None:
    def every(epochs: int, **pruner: Any) -> int:
        spec = spec_of(
            pruner={"name": "median", "over": "epochs", **pruner},
            fixed={"max_epochs": epochs, "batch_size": 128},
        )
        return report_every(spec)

    assert every(10) == 1 and every(8) == 1
    assert every(30) == 3 and every(40) == 4 and every(45) == 5
    assert every(40, report_every=1) == 1  # the spec's own wins
    searched = spec_of(
        pruner={"name": "median", "over": "epochs"},
        fixed={"batch_size": 128},
        space={"max_epochs": {"type": "int", "low": 5, "high": 60}},
    )
    assert report_every(searched) == 6  # by the most epochs a trial may train
    assert EpochSteps.of(searched, 5).step(1, 0) == 60  # every trial's fits 60 steps apart


def test_over_epochs_the_pruners_wait_a_quarter_of_a_fit_and_hyperband_counts_epochs() -> None:
    def options(name: str, **pruner: Any) -> dict[str, Any]:
        fixed = {"max_epochs": 20, "batch_size": 128}
        return pruner_options(spec_of(pruner={"name": name, **pruner}, fixed=fixed))

    assert options("median")["n_warmup_steps"] == 1  # over folds: after the second fold
    assert options("median", over="epochs")["n_warmup_steps"] == 5  # epochs
    assert options("percentile", over="both", report_every=2)["n_warmup_steps"] == 5
    assert options("patient", over="epochs")["patience"] == 2  # reports: 10 of every 2 epochs
    assert options("patient", over="epochs", report_every=1)["patience"] == 5
    assert options("hyperband")["max_resource"] == 2  # the folds
    assert options("hyperband", over="epochs")["max_resource"] == "auto"
    chosen = options("median", over="epochs", options={"n_warmup_steps": 3})
    assert chosen["n_warmup_steps"] == 3  # the spec's own options win
    built = make_pruner(spec_of(pruner={"name": "median", "over": "epochs"}))
    assert isinstance(built, optuna.pruners.MedianPruner)


def test_the_most_epochs_of_a_trial_come_from_fixed_or_the_searched_range() -> None:
    assert spec_max_epochs(spec_of()) == 3
    searched = {"max_epochs": {"type": "int", "low": 5, "high": 30}}
    assert spec_max_epochs(spec_of(fixed={"batch_size": 128}, space=searched)) == 30
    assert spec_max_epochs(spec_of(fixed={"batch_size": 128})) == 10  # skorch's default


@pytest.mark.parametrize("name", ["wilcoxon", "forgiving"])
@pytest.mark.parametrize("over", ["epochs", "both"])
def test_rules_that_compare_fold_scores_are_refused_over_epochs_with_why(
    name: str, over: str
) -> None:
    refused = problems(pruner={"name": name, "over": over}, cv={"folds": 5})
    assert f"pruner: {name} with over: {over}" in refused
    assert "steps over folds only; write over: folds" in refused


def test_over_epochs_a_late_warm_up_is_not_refused_as_if_it_counted_folds() -> None:
    late = {"name": "median", "over": "epochs", "options": {"n_warmup_steps": 4}}
    assert pruning_problem(spec_of(pruner=late, cv={"folds": 3})) is None


def test_forgiving_is_refused_for_several_objectives_and_takes_its_one_option() -> None:
    several = problems(pruner={"name": "forgiving"}, scoring=["accuracy", "f1_macro"])
    assert "pruner: forgiving cannot stop a trial of several objectives" in several
    unknown = problems(pruner={"name": "forgiving", "options": {"patience": 2}})
    assert "pruner.options.patience: not an option of the forgiving pruner" in unknown
    assert "(valid: n_startup_trials)" in unknown
    built = make_pruner(spec_of(pruner={"name": "forgiving", "options": {"n_startup_trials": 2}}))
    assert isinstance(built, ForgivingPruner) and built.n_startup_trials == 2


def _incumbent(study: optuna.Study, folds: list[float]) -> None:
    trial = study.ask()
    trial.set_user_attr("fold_scores", folds)
    study.tell(trial, sum(folds) / len(folds))


def _asked(study: optuna.Study, running_mean: float) -> bool:
    trial = study.ask()
    trial.report(running_mean, 0)
    return trial.should_prune()


def test_forgiving_prunes_a_running_mean_below_the_incumbents_worst_fold() -> None:
    study = optuna.create_study(direction="maximize", pruner=ForgivingPruner())
    assert not _asked(study, 0.1)  # no incumbent yet
    _incumbent(study, [0.90, 0.80, 0.85])
    _incumbent(study, [0.70, 0.60, 0.95])  # worse mean: not the incumbent
    assert _asked(study, 0.79)
    assert not _asked(study, 0.81)  # a bad first fold of a good trial is forgiven
    assert not _asked(study, 0.80)


def test_forgiving_minimizing_prunes_above_the_incumbents_worst_fold() -> None:
    study = optuna.create_study(direction="minimize", pruner=ForgivingPruner())
    _incumbent(study, [1.0, 2.0, 1.5])
    assert _asked(study, 2.1)
    assert not _asked(study, 1.9)


def test_forgiving_waits_for_its_start_up_trials_and_needs_the_fold_scores() -> None:
    study = optuna.create_study(direction="maximize", pruner=ForgivingPruner(n_startup_trials=2))
    _incumbent(study, [0.9, 0.9])
    assert not _asked(study, 0.1)
    plain = study.ask()
    study.tell(plain, 0.99)  # the incumbent now, but without fold scores
    assert not _asked(study, 0.1)
    with pytest.raises(ValueError, match="at least 1"):
        ForgivingPruner(n_startup_trials=0)
