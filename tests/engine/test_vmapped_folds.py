"""A user's own module stacked through torch.func: each fold computes what its own skorch fit
computes, within float rounding; a module the probe refuses still scores, one fold after another
or in fold processes."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from fold_checks import WEIGHT_DECAY, assert_folds_end_as_their_own_fits, stacking_case
from sklearn.model_selection import cross_val_score
from torch import nn

from hpo.engine.build import build_net
from hpo.engine.folds.plan import VMAPPED_NET_FLOPS, FoldOptions, spec_stacks_folds, stackable
from hpo.engine.folds.processes import FoldPool
from hpo.engine.folds.vmapped import VmappedFolds, net_refusal, vmap_refusal
from hpo.engine.nets import TunedClassifier
from hpo.engine.objective import evaluate, make_folds
from hpo.engine.threads import torch_threads
from hpo.engine.user_code import model_class

# The modules live in tests/user_nets.py and are named as a spec names them.
CASES: dict[str, tuple[dict[str, Any], str]] = {
    # 3 folds of 666/667 rows: the last batch of an epoch differs in size between folds and
    # runs fold by fold.
    "mlp-adam": (
        {
            "model": "tests.user_nets:UserMLP",
            "fixed": {
                "max_epochs": 3,
                "batch_size": 64,
                "module__hidden": 32,
                "optimizer": "adam",
                "lr": 0.01,
            },
        },
        "digits",
    ),
    "cnn-sgd": (
        {
            "model": "tests.user_nets:UserCNN",
            "fixed": {
                "max_epochs": 2,
                "batch_size": 32,
                "module__channels": 4,
                "module__hidden": 16,
                "optimizer": "sgd",
                "optimizer__momentum": 0.5,
                "lr": 0.05,
            },
        },
        "digits",
    ),
    "regressor-rmsprop": (
        {
            "model": "tests.user_nets:UserMLP",
            "scoring": "neg_mean_squared_error",
            "fixed": {
                "max_epochs": 5,
                "batch_size": 32,
                "module__hidden": 16,
                "optimizer": "rmsprop",
                "lr": 0.003,
            },
        },
        "synthetic_regression",
    ),
}

REFUSED = {
    "tests.user_nets:DropoutMLP": "draws random numbers",
    "tests.user_nets:BatchNormMLP": r"training changes its buffers \(norm\.running_mean",
    "tests.user_nets:BranchingMLP": "data-dependent control flow",
}


def _spec(case: str, **changes: Any) -> tuple[Any, Any]:
    return stacking_case(CASES, case, **changes)


def _net(spec: Any, data: Any, **changes: Any) -> Any:
    params = {**spec.fixed, "optimizer__weight_decay": WEIGHT_DECAY, **changes}
    return build_net(spec, data, params, "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_each_vmapped_fold_ends_where_its_own_fit_ends(case: str) -> None:
    # Measured: weights within 1.2e-7 of their own fit's, losses within a relative 1.2e-7.
    spec, data = _spec(case)
    fit = assert_folds_end_as_their_own_fits(_net(spec, data), spec, data, rtol=1e-5, atol=1e-6)
    assert isinstance(fit.module, VmappedFolds)


@pytest.mark.slow
def test_with_early_stopping_each_vmapped_fold_stops_and_keeps_its_best_epoch() -> None:
    spec, data = _spec("mlp-adam")
    net = _net(spec, data, max_epochs=40, early_stopping_patience=2, lr=0.05)
    # Measured on one thread (a worker's, or after a test that set one): weights within 3.9e-6
    # of their own fit's after 7 epochs at lr 0.05 (2 threads: within 1e-6); the tolerance
    # of hpo's own stacked folds.
    fit = assert_folds_end_as_their_own_fits(net, spec, data, rtol=1e-4, atol=1e-5)
    epochs = [fit.epochs(fold) for fold in range(spec.cv.folds)]
    assert max(epochs) < 40  # every fold stopped early


@pytest.mark.slow
def test_evaluate_stacks_a_user_module_and_scores_as_cross_val_score() -> None:
    spec, data = _spec("mlp-adam")
    assert spec_stacks_folds(spec, validation=False)
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    study.tell(trial, evaluate(trial, spec, data, "cpu"))

    assert trial.user_attrs["folds_plan"].startswith("folds stacked")
    expected = cross_val_score(
        _net(spec, data), data.X_train, data.y_train, cv=make_folds(spec), scoring=spec.scoring
    )
    np.testing.assert_allclose(trial.user_attrs["fold_scores"], expected, rtol=1e-6)


@pytest.mark.parametrize(("model", "reason"), list(REFUSED.items()))
def test_a_module_the_probe_refuses_says_why(model: str, reason: str) -> None:
    module = model_class(model)(input_shape=(1, 8, 8), n_outputs=10)
    before = {name: value.clone() for name, value in module.state_dict().items()}
    batch = torch.randn(4, 1, 8, 8)
    generator = torch.get_rng_state()

    refusal = vmap_refusal(module, batch)

    assert refusal is not None
    assert re.search(reason, refusal), refusal
    # the probe ran on a copy, and drew nothing from torch's generator
    assert torch.equal(torch.get_rng_state(), generator)
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("model", list(REFUSED))
def test_a_refused_module_still_scores_fold_by_fold_as_cross_val_score(model: str) -> None:
    spec, data = _spec("mlp-adam", model=model)
    net = _net(spec, data)
    assert spec_stacks_folds(spec, validation=False)  # the spec may stack; this net does not
    assert not stackable(net, [666, 667, 667], "cpu")
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    study.tell(trial, evaluate(trial, spec, data, "cpu"))

    assert trial.user_attrs["folds_plan"].startswith("folds one by one")
    expected = cross_val_score(
        net, data.X_train, data.y_train, cv=make_folds(spec), scoring=spec.scoring
    )
    np.testing.assert_allclose(trial.user_attrs["fold_scores"], expected, rtol=1e-6)


@pytest.mark.slow
def test_a_refused_module_scores_in_fold_processes_as_cross_val_score() -> None:
    spec, data = _spec("mlp-adam", model="tests.user_nets:DropoutMLP")
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    with FoldPool(data, processes=1, threads=1) as pool, torch_threads(1):
        options = FoldOptions(folds_at_once=2)
        study.tell(trial, evaluate(trial, spec, data, "cpu", pool=pool, options=options))

    assert trial.user_attrs["folds_plan"] == "2 folds at once (1 fold process), 1 thread each"
    expected = cross_val_score(
        _net(spec, data), data.X_train, data.y_train, cv=make_folds(spec), scoring=spec.scoring
    )
    np.testing.assert_allclose(trial.user_attrs["fold_scores"], expected, rtol=1e-6)


class _Tied(nn.Module):
    """An autoencoder-like module whose decoder reuses its encoder's weight."""

    def __init__(self, input_shape: tuple[int, ...], n_outputs: int) -> None:
        super().__init__()
        self.encode = nn.Linear(64, 16)
        self.decode = nn.Linear(16, 64)
        self.decode.weight = nn.Parameter(self.encode.weight.t().contiguous())
        self.tied = self.encode  # the same layer under a second name
        self.head = nn.Linear(64, n_outputs)
        self.register_buffer("offset", torch.full((64,), 0.5))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.tied(X.flatten(1) - self.offset))
        return self.head(self.decode(h))


def test_fold_state_dict_has_every_name_a_tied_module_has_and_loads() -> None:
    module = _Tied((1, 8, 8), 10)
    assert vmap_refusal(module, torch.zeros(2, 1, 8, 8)) is None  # a constant buffer is fine
    stacked = VmappedFolds(module, 3)
    with torch.no_grad():
        stacked.stacked[0][1].add_(1.0)  # fold 1's encoder weight, shared with tied.weight

    state = stacked.fold_state_dict(1)

    assert state.keys() == module.state_dict().keys()
    torch.testing.assert_close(state["tied.weight"], module.encode.weight + 1.0)
    assert torch.equal(state["offset"], module.offset)
    fresh = _Tied((1, 8, 8), 10)
    fresh.load_state_dict(state)
    outputs = stacked([torch.ones(5, 1, 8, 8)] * 3)
    torch.testing.assert_close(outputs[1], fresh(torch.ones(5, 1, 8, 8)))


def test_a_module_too_big_to_gain_from_vmap_is_not_stacked() -> None:
    spec, data = _spec("mlp-adam")
    small = _net(spec, data)
    big = _net(spec, data, module__hidden=1024, batch_size=128)  # about 17 MFLOP per batch
    assert net_refusal(small, VMAPPED_NET_FLOPS) is None
    assert "MFLOP per batch" in (net_refusal(big, VMAPPED_NET_FLOPS) or "")
    assert not stackable(big, [666, 667, 667], "cpu")


def test_a_module_without_input_shape_is_not_probed() -> None:
    net = TunedClassifier(nn.Linear, module__in_features=64, module__out_features=10)
    assert "takes no input_shape" in (net_refusal(net, VMAPPED_NET_FLOPS) or "")
