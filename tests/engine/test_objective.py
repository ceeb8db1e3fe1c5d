"""The objective scores folds exactly as cross_val_score does, reports them, and prunes."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from conftest import tiny_spec
from sklearn.model_selection import cross_val_score

from hpo.engine.build import build_net, check_compatible
from hpo.engine.data import load_dataset
from hpo.engine.folds.plan import forward_flops
from hpo.engine.models import MLP
from hpo.engine.nets import TunedClassifier
from hpo.engine.objective import evaluate, make_folds
from hpo.errors import HpoError
from hpo.service.study import make_pruner
from hpo.spec.study_spec import parse_spec


@pytest.mark.parametrize(
    ("overrides", "dataset"),
    [
        ({}, "digits"),
        (
            {"model": "cnn", "fixed": {"max_epochs": 2, "batch_size": 64, "module__conv2": None}},
            "digits",
        ),
        (
            {
                "model": "regressor",
                "scoring": "neg_mean_squared_error",
                "fixed": {"max_epochs": 5, "batch_size": 32},
                "cv": {"folds": 3, "seed": 1},
            },
            "synthetic_regression",
        ),
        (
            {
                "cv": {"folds": 3, "stratified": True},
                "fixed": {"max_epochs": 2, "batch_size": 64, "module__dropout": 0.3},
            },
            "digits",
        ),
    ],
)
@pytest.mark.slow
def test_fold_scores_equal_cross_val_score(overrides: dict, dataset: str) -> None:
    spec = parse_spec(tiny_spec(dataset={"name": dataset}, **overrides))
    data = load_dataset(dataset)
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    value = evaluate(trial, spec, data, "cpu")
    study.tell(trial, value)

    params = spec.configuration(trial.params)
    net = build_net(spec, data, params, "cpu")
    expected = cross_val_score(
        net, data.X_train, data.y_train, cv=make_folds(spec), scoring=spec.scoring
    )

    np.testing.assert_allclose(trial.user_attrs["fold_scores"], expected, rtol=1e-6)
    assert value == pytest.approx(expected.mean())
    # The fold scores agree to rtol 1e-6; their spread is a difference of such values, so
    # it is held to the same absolute error (a relative one on a small std flakes).
    spread_tolerance = 1e-6 * float(np.abs(expected).max())
    assert trial.user_attrs["score_std"] == pytest.approx(expected.std(), abs=spread_tolerance)
    assert len(trial.user_attrs["fit_seconds"]) == spec.cv.folds
    assert trial.user_attrs["device"] == "cpu"


@pytest.mark.slow
def test_running_mean_is_reported_after_every_fold() -> None:
    spec = parse_spec(tiny_spec(cv={"folds": 3}))
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    evaluate(trial, spec, load_dataset("digits"), "cpu")
    scores = trial.user_attrs["fold_scores"]
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.intermediate_values == pytest.approx(
        {0: scores[0], 1: np.mean(scores[:2]), 2: np.mean(scores)}
    )


@pytest.mark.slow
def test_a_trial_far_below_the_median_is_pruned_before_its_last_fold() -> None:
    median = {"name": "median", "options": {"n_startup_trials": 2, "n_warmup_steps": 0}}
    spec = parse_spec(
        tiny_spec(cv={"folds": 4}, fixed={"max_epochs": 4, "batch_size": 64}, pruner=median)
    )
    data = load_dataset("digits")
    study = optuna.create_study(direction="maximize", pruner=make_pruner(spec))
    good = {"module__hidden1": 32, "lr": 0.05}
    for _ in range(2):
        study.enqueue_trial(good)
    study.enqueue_trial({"module__hidden1": 8, "lr": 0.001})  # barely learns in 4 epochs
    study.optimize(lambda t: evaluate(t, spec, data, "cpu"), n_trials=3)
    last = study.trials[-1]
    assert last.state == optuna.trial.TrialState.PRUNED
    # Its folds are stacked, but the first (the pruner's warm-up is 0) is fitted alone first.
    assert len(last.user_attrs["fold_scores"]) == 1


@pytest.mark.slow
def test_a_diverging_configuration_raises_with_the_reason() -> None:
    spec = parse_spec(
        tiny_spec(
            model="regressor",
            dataset={"name": "synthetic_regression"},
            scoring="neg_mean_squared_error",
            fixed={"max_epochs": 3, "batch_size": 16, "optimizer": "sgd"},
            space={"lr": {"type": "float", "low": 1e6, "high": 1e7}},
        )
    )
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(FloatingPointError, match="diverged"):
        evaluate(trial, spec, load_dataset("synthetic_regression"), "cpu")


@pytest.mark.slow
def test_early_stopping_uses_the_fixed_validation_split_and_stops_early() -> None:
    spec = parse_spec(
        tiny_spec(fixed={"max_epochs": 200, "batch_size": 128, "early_stopping_patience": 2})
    )
    data = load_dataset("digits")
    assert data.X_valid is not None
    net = build_net(spec, data, {**spec.fixed, "module__hidden1": 16, "lr": 0.05}, "cpu")
    net.fit(data.X_train, data.y_train)
    assert len(net.history) < 200
    assert np.isfinite(net.history[-1, "valid_loss"])


@pytest.mark.parametrize(
    ("overrides", "dataset", "message"),
    [
        ({"model": "regressor", "scoring": "r2"}, "digits", "regression dataset"),
        (
            {"model": "mlp", "scoring": "r2", "cv": {"stratified": True}},
            "synthetic_regression",
            "stratified",
        ),
        ({"model": "cnn"}, "synthetic_regression", "images"),
    ],
)
def test_incompatible_model_and_data_are_refused(
    overrides: dict, dataset: str, message: str
) -> None:
    spec = parse_spec(tiny_spec(dataset={"name": dataset}, **overrides))
    with pytest.raises(HpoError, match=message):
        check_compatible(spec, load_dataset(dataset))


def test_forward_flops_counts_a_training_batch() -> None:
    net = TunedClassifier(MLP, module__input_shape=(64,), module__hidden1=32, batch_size=16)
    # two matrix products per batch: 16 rows x (64 x 32 + 32 x 10) multiply-adds, 2 FLOPs each
    assert forward_flops(net, (64,)) == 2 * 16 * (64 * 32 + 32 * 10)


def test_forward_flops_of_a_batch_larger_than_memory_allocates_one_row() -> None:
    # A batch_size of 10**9 (the whole fold, for any fold) once allocated 256 GB to count.
    net = TunedClassifier(MLP, module__input_shape=(64,), module__hidden1=32, batch_size=10**9)
    assert forward_flops(net, (64,)) == 2 * 10**9 * (64 * 32 + 32 * 10)


def test_forward_flops_of_the_whole_fold_as_one_batch_counts_the_folds_rows() -> None:
    whole = TunedClassifier(MLP, module__input_shape=(64,), module__hidden1=32, batch_size=-1)
    per_row = 2 * (64 * 32 + 32 * 10)
    assert forward_flops(whole, (64,), train_rows=667) == 667 * per_row
    batches = TunedClassifier(MLP, module__input_shape=(64,), module__hidden1=32, batch_size=512)
    assert forward_flops(whole, (64,), train_rows=667) > forward_flops(batches, (64,), 667)


@pytest.mark.slow
def test_a_trial_of_whole_fold_batches_is_planned_by_its_real_batch() -> None:
    """batch_size: -1 once counted one row (0.005 MFLOP here), so the largest batch was planned
    as a tiny net on one thread; 500 rows of it are 2.4 MFLOP, over SMALL_NET_FLOPS."""
    spec = parse_spec(
        tiny_spec(
            fixed={"max_epochs": 2, "batch_size": -1, "module__hidden1": 32},
            space={"lr": {"type": "float", "low": 1e-3, "high": 1e-2}},
        )
    )
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    study.tell(trial, evaluate(trial, spec, load_dataset("digits"), "cpu", threads=2))
    assert study.trials[0].user_attrs["threads"] == 2
