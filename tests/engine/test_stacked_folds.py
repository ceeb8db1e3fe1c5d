"""Stacked folds: each fold computes what its own skorch fit computes, within float rounding."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import pytest
import torch
from conftest import tiny_spec
from fold_checks import WEIGHT_DECAY, assert_folds_end_as_their_own_fits, stacking_case
from sklearn.base import clone

from hpo.engine.build import build_net
from hpo.engine.data import load_dataset
from hpo.engine.folds.fold import WorkerStopped
from hpo.engine.folds.plan import FoldOptions, fold_groups, spec_stacks_folds, stackable
from hpo.engine.folds.stacked_fit import fit_and_score_stacked
from hpo.engine.folds.stacked_layers import StackedFolds
from hpo.engine.models import CNN
from hpo.engine.objective import evaluate, make_folds
from hpo.service.study import make_pruner
from hpo.spec.pruning import PruningStart, pruning_start
from hpo.spec.study_spec import parse_spec

CASES: dict[str, tuple[dict[str, Any], str]] = {
    # Dropout and batch norm in an MLP, SGD with momentum; 3 folds of 666/667 rows, so the
    # last batch of an epoch differs in size between folds and runs fold by fold.
    "mlp": (
        {
            "model": "mlp",
            "fixed": {
                "max_epochs": 3,
                "batch_size": 64,
                "module__hidden1": 32,
                "module__hidden2": 16,
                "module__dropout": 0.3,
                "module__batch_norm": True,
                "optimizer": "sgd",
                "optimizer__momentum": 0.9,
                "lr": 0.05,
            },
        },
        "digits",
    ),
    # Max pooling picks one of near-equal values, so float rounding can move a gradient to
    # another pixel; with dropout after it that grows to ~1e-4 in a few epochs, as it does
    # between one and two threads. The cases keep to what is exact to float rounding: max
    # pooling without dropout, average pooling with it.
    "cnn": (
        {
            "model": "cnn",
            "fixed": {
                "max_epochs": 2,
                "batch_size": 32,
                "module__conv1": 8,
                "module__conv2": 16,
                "module__hidden1": 32,
                "module__batch_norm": True,
                "optimizer": "sgd",
                "optimizer__momentum": 0.5,
                "lr": 0.05,
            },
        },
        "digits",
    ),
    # Batch norm makes the conv bias's gradient zero up to rounding, which Adam and Adamax
    # scale up to full steps; so the adaptive optimizers are tested without it.
    "cnn-adamax": (
        {
            "model": "cnn",
            "fixed": {
                "max_epochs": 2,
                "batch_size": 64,
                "module__conv1": 8,
                "module__conv2": 16,
                "module__hidden1": 16,
                "module__dropout": 0.25,
                "module__pool": "avg",
                "module__activation": "tanh",
                "optimizer": "adamax",
                "lr": 0.01,
            },
        },
        "digits",
    ),
    "regressor": (
        {
            "model": "regressor",
            "scoring": "neg_mean_squared_error",
            "fixed": {
                "max_epochs": 5,
                "batch_size": 32,
                "module__hidden1": 16,
                "module__dropout": 0.1,
                "optimizer": "adam",
                "lr": 0.01,
            },
        },
        "synthetic_regression",
    ),
}


def _spec_and_net(case: str) -> tuple[Any, Any, Any]:
    spec, data = stacking_case(CASES, case)
    params = {**spec.fixed, "optimizer__weight_decay": WEIGHT_DECAY}
    return spec, data, build_net(spec, data, params, "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_each_stacked_fold_ends_where_its_own_fit_ends(case: str) -> None:
    spec, data, net = _spec_and_net(case)
    assert_folds_end_as_their_own_fits(net, spec, data, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_with_early_stopping_each_stacked_fold_stops_and_keeps_its_best_epoch() -> None:
    spec, data, net = _spec_and_net("mlp")
    net = build_net(
        spec,
        data,
        {**spec.fixed, "max_epochs": 40, "early_stopping_patience": 2, "lr": 0.2},
        "cpu",
    )
    splits = list(make_folds(spec).split(data.X_train, data.y_train))
    assert not stackable(net, [len(train) for train, _ in splits], "cpu", validation=False)
    fit = assert_folds_end_as_their_own_fits(net, spec, data, rtol=1e-4, atol=1e-5)
    epochs = [fit.epochs(fold) for fold in range(len(splits))]
    assert max(epochs) < 40  # every fold stopped early
    assert len(set(epochs)) > 1  # at different epochs: the stopped ones trained on, unused


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_with_augmentation_each_stacked_fold_trains_on_its_own_copies(case: str) -> None:
    spec, data, net = _spec_and_net(case)
    # Batches of 100 leave each fold a last batch of 30 or 35 of its 3,330 or 3,335 rows: of
    # 64, fold 0's would hold 2, where batch norm divides by the spread of two values, which
    # can be near 0, and so magnifies the stacked fit's float rounding past the tolerance
    # (fold 0's weights 0.03 apart on one 2-core VM; within it where CI passed).
    net.set_params(augment="shifts", preprocess="minmax", max_epochs=2, batch_size=100)
    fit = assert_folds_end_as_their_own_fits(net, spec, data, rtol=1e-4, atol=1e-5)
    assert [len(rows) for rows in fit.data[0]] == [666, 667, 667]  # raw rows kept for scoring


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mlp", "cnn-adamax"])
def test_with_a_cosine_schedule_each_stacked_fold_steps_its_lr_as_its_own_fit(case: str) -> None:
    spec, data, net = _spec_and_net(case)
    net.set_params(lr_schedule="cosine", max_epochs=3)
    scheduled = assert_folds_end_as_their_own_fits(net, spec, data, rtol=1e-4, atol=1e-5)
    constant = assert_folds_end_as_their_own_fits(
        clone(net).set_params(lr_schedule="none"), spec, data, rtol=1e-4, atol=1e-5
    )
    # The first epoch runs at lr either way; the schedule lowers it for the next ones.
    assert scheduled.losses(0)[0] == pytest.approx(constant.losses(0)[0], rel=1e-6)
    assert scheduled.losses(0)[-1] != pytest.approx(constant.losses(0)[-1], rel=1e-3)


@pytest.mark.slow
def test_evaluate_reports_the_same_fold_scores_stacked_or_not() -> None:
    spec = parse_spec(tiny_spec(cv={"folds": 4}, fixed={"max_epochs": 3, "batch_size": 64}))
    data = load_dataset("digits")
    study = optuna.create_study(direction="maximize")
    params = {"module__hidden1": 24, "lr": 0.05}
    trials = []
    for stack_folds in (True, False):
        study.enqueue_trial(params)
        trial = study.ask()
        options = FoldOptions(stack_folds=stack_folds)
        study.tell(trial, evaluate(trial, spec, data, "cpu", options=options))
        trials.append(study.trials[-1])
    stacked, separate = trials
    np.testing.assert_allclose(
        stacked.user_attrs["fold_scores"], separate.user_attrs["fold_scores"], rtol=1e-6
    )
    assert stacked.intermediate_values == pytest.approx(separate.intermediate_values)
    assert stacked.user_attrs["epochs"] == separate.user_attrs["epochs"] == [3] * 4


def test_with_a_pruner_the_folds_it_may_stop_after_are_fitted_first() -> None:
    assert fold_groups(5, None) == [[0, 1, 2, 3, 4]]
    assert fold_groups(5, 1) == [[0, 1], [2, 3, 4]]  # the median pruner's warm-up of 1 step
    assert fold_groups(5, 0) == [[0], [1, 2, 3, 4]]
    assert fold_groups(2, 3) == [[0, 1]]


@pytest.mark.parametrize(
    ("pruner", "start"),
    [
        ({"name": "none"}, None),
        ({"name": "median"}, PruningStart(startup_trials=5, first_fold=1)),
        ({"name": "median", "options": {"n_warmup_steps": 0}}, PruningStart(5, 0)),
        ({"name": "hyperband"}, PruningStart(startup_trials=0, first_fold=0)),
    ],
)
def test_the_pruning_start_is_read_from_the_spec(pruner: dict, start: PruningStart | None) -> None:
    spec = parse_spec(tiny_spec(pruner=pruner))
    assert pruning_start(spec) == start
    built = make_pruner(spec)  # the pruner Optuna gets is built from the same options
    if start is not None and pruner["name"] == "median":
        assert isinstance(built, optuna.pruners.MedianPruner)
        # what Optuna's pruner keeps of them (private attributes: a loud check that the
        # options hpo reads are the ones Optuna's pruner uses)
        assert built._n_warmup_steps == start.first_fold
        assert built._n_startup_trials == start.startup_trials


@pytest.mark.slow
def test_while_the_pruner_starts_up_all_folds_are_stacked_at_once() -> None:
    median = {"name": "median", "options": {"n_startup_trials": 1, "n_warmup_steps": 0}}
    spec = parse_spec(
        tiny_spec(cv={"folds": 4}, fixed={"max_epochs": 2, "batch_size": 64}, pruner=median)
    )
    data = load_dataset("digits")
    study = optuna.create_study(direction="maximize", pruner=make_pruner(spec))
    for _ in range(2):
        study.enqueue_trial({"module__hidden1": 32, "lr": 0.05})
    study.optimize(lambda t: evaluate(t, spec, data, "cpu"), n_trials=2)
    first, second = (t.user_attrs["fit_seconds"] for t in study.trials)
    assert len(set(first)) == 1  # one stacked fit, its time shared out
    assert len(set(second[1:])) == 1 and second[0] != second[1]  # fold 0, then the rest


@pytest.mark.slow
def test_a_net_too_big_to_gain_is_fitted_fold_by_fold() -> None:
    small = {"module__conv1": 8, "module__conv2": None}
    big = {"module__conv1": 32, "module__conv2": 32}  # over 21 MFLOP per batch of 64
    data = load_dataset("digits")
    seconds = {}
    for name, fixed in (("small", small), ("big", big)):
        spec = parse_spec(
            tiny_spec(model="cnn", fixed={"max_epochs": 1, "batch_size": 64, **fixed})
        )
        net = build_net(spec, data, {**spec.fixed, "module__hidden1": 8}, "cpu")
        assert stackable(net, [500, 500], "cpu")
        study = optuna.create_study(direction="maximize")
        study.optimize(lambda t, spec=spec: evaluate(t, spec, data, "cpu"), n_trials=1)
        seconds[name] = study.trials[0].user_attrs["fit_seconds"]
    assert len(set(seconds["small"])) == 1  # one stacked fit, its time shared out
    assert len(set(seconds["big"])) == 2


@pytest.mark.slow
def test_a_diverging_stacked_fold_raises_in_its_place() -> None:
    spec = parse_spec(
        tiny_spec(
            model="regressor",
            dataset={"name": "synthetic_regression"},
            scoring="neg_mean_squared_error",
            cv={"folds": 3},
            fixed={"max_epochs": 3, "batch_size": 16, "optimizer": "sgd", "lr": 1e7},
            space={"module__hidden1": {"type": "int", "low": 8, "high": 8}},
        )
    )
    data = load_dataset("synthetic_regression")
    net = build_net(spec, data, {**spec.fixed, "module__hidden1": 8}, "cpu")
    splits = list(make_folds(spec).split(data.X_train, data.y_train))
    results = fit_and_score_stacked(net, data, [0, 1, 2], splits, spec.scoring)
    with pytest.raises(FloatingPointError, match="in fold 0: the configuration diverged"):
        next(results)


@pytest.mark.slow
def test_should_stop_ends_a_stacked_fit() -> None:
    spec, data, net = _spec_and_net("mlp")
    splits = list(make_folds(spec).split(data.X_train, data.y_train))
    batches = []

    def should_stop() -> bool:
        batches.append(1)
        return len(batches) == 3

    results = fit_and_score_stacked(
        net, data, [0, 1, 2], splits, "accuracy", should_stop=should_stop
    )
    with pytest.raises(WorkerStopped):
        next(results)
    assert len(batches) == 3


def test_what_is_not_stacked() -> None:
    spec, data, net = _spec_and_net("mlp")
    sizes = [666, 667, 667]
    assert stackable(net, sizes, "cpu")
    assert not stackable(net, sizes, "cuda")
    assert not stackable(net, sizes[:1], "cpu")  # one fold
    assert not stackable(net, [640, 641, 641], "cpu")  # 10 batches against 11
    assert not stackable(clone(net).set_params(early_stopping_patience=2), sizes, "cpu")
    assert not stackable(clone(net).set_params(optimizer=torch.optim.LBFGS), sizes, "cpu")
    assert not stackable(clone(net).set_params(criterion=torch.nn.NLLLoss), sizes, "cpu")
    assert not stackable(clone(net).set_params(module=torch.nn.Linear), sizes, "cpu")
    assert not stackable(clone(net).set_params(mixed_precision=True), sizes, "cpu")

    assert spec_stacks_folds(spec, validation=False)
    mixed = parse_spec(tiny_spec(fixed={"max_epochs": 3, "mixed_precision": True}))
    assert not spec_stacks_folds(mixed, validation=False)
    patience = parse_spec(tiny_spec(fixed={"max_epochs": 3, "early_stopping_patience": 2}))
    assert spec_stacks_folds(patience, validation=True)
    assert not spec_stacks_folds(patience, validation=False)


def test_a_module_with_a_layer_it_cannot_stack_is_refused_by_name() -> None:
    module = CNN(input_shape=(1, 8, 8), conv1=4, conv2=None, hidden1=8)
    module.features[0][0] = torch.nn.Conv2d(1, 4, 3, padding="same", groups=1, bias=False)
    with pytest.raises(ValueError, match=r"bias-free .* \(features\.0\.0\)"):
        StackedFolds(module, 2)
