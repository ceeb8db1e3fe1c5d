"""hpo's fast path scores as plain skorch does, and TensorBatches batches as a DataLoader does.

The fast path is everything ``TunedClassifier`` / ``TunedRegressor`` change about a fit for
speed: ``TensorBatches`` instead of skorch's ``DataLoader``, callbacks called only for the hooks
they implement, no per-batch mode switch, batch losses kept on the device until the epoch ends,
bigger evaluation batches, a train step without skorch's closure, and fused or foreach
optimizers. With shuffling off and the same seed, a fit must train and score as plain skorch
does: up to float rounding against skorch's defaults (the fused kernels sum in another order),
bit for bit when plain skorch is given the same optimizer options. And every optimizer hpo
names must train, alone or with the folds stacked.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import get_scorer
from sklearn.model_selection import KFold
from skorch import NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import Callback
from skorch.dataset import Dataset, ValidSplit
from torch import nn
from torch.utils.data import Subset

from hpo.engine.data import load_dataset
from hpo.engine.folds.stacked_fit import fit_stacked
from hpo.engine.models import CNN, MLP
from hpo.engine.nets import OPTIMIZERS, TensorBatches, TunedClassifier, TunedRegressor

SEED = 0


def _digits(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset("digits")
    return data.X_train[:n], data.y_train[:n]


def _cases() -> list[Any]:
    X, y = _digits()
    reg = load_dataset("synthetic_regression")
    mlp = {"module__hidden1": 32, "module__hidden2": 16}
    cnn = {"module__conv1": 4, "module__conv2": 8, "module__hidden1": 16}
    as_float = y.astype(np.float32).reshape(-1, 1)  # a CNN regressing the digit's value
    return [
        pytest.param(
            TunedClassifier, NeuralNetClassifier, MLP, mlp, X, y, "accuracy", id="clf-mlp"
        ),
        pytest.param(
            TunedClassifier, NeuralNetClassifier, CNN, cnn, X, y, "accuracy", id="clf-cnn"
        ),
        pytest.param(
            TunedRegressor,
            NeuralNetRegressor,
            MLP,
            {"module__hidden1": 16},
            reg.X_train,
            reg.y_train,
            "neg_mean_squared_error",
            id="reg-mlp",
        ),
        pytest.param(
            TunedRegressor,
            NeuralNetRegressor,
            CNN,
            cnn,
            X,
            as_float,
            "neg_mean_squared_error",
            id="reg-cnn",
        ),
    ]


@pytest.mark.parametrize(
    ("tuned_class", "plain_class", "module", "module_params", "X", "y", "scoring"), _cases()
)
@pytest.mark.slow
def test_fast_path_scores_like_plain_skorch(
    tuned_class: Any,
    plain_class: Any,
    module: type[nn.Module],
    module_params: dict[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    scoring: str,
) -> None:
    n_outputs = 1 if tuned_class is TunedRegressor else 10
    common = {
        "module__input_shape": X.shape[1:],
        "module__n_outputs": n_outputs,
        "lr": 0.01,
        "batch_size": 32,
        "max_epochs": 4,
        **module_params,
    }
    folds = KFold(3, shuffle=True, random_state=SEED)
    fast = tuned_class(module, iterator_train__shuffle=False, random_state=SEED, **common)
    # Plain skorch: DataLoader batches (collated row by row), every callback hook, a mode
    # switch per batch; seeded as the tuned net seeds itself, just before each fit.
    plain = plain_class(
        module,
        criterion=tuned_class.default_criterion,
        optimizer=torch.optim.Adam,
        train_split=None,
        verbose=0,
        **common,
    )
    scorer = get_scorer(scoring)
    scores: dict[str, list[float]] = {"fast": [], "plain": []}
    losses: dict[str, list[list[float]]] = {"fast": [], "plain": []}
    for train, test in folds.split(X, y):
        for name, net in (("fast", fast), ("plain", plain)):
            torch.manual_seed(SEED)
            fitted = clone(net).fit(X[train], y[train])
            scores[name].append(scorer(fitted, X[test], y[test]))
            losses[name].append(fitted.history[:, "train_loss"])

    assert losses["plain"][0][-1] < losses["plain"][0][0]  # it did learn something
    np.testing.assert_allclose(losses["fast"], losses["plain"], rtol=1e-5)
    np.testing.assert_allclose(scores["fast"], scores["plain"], rtol=1e-5)


@pytest.mark.slow
def test_validation_loss_matches_plain_skorch_on_a_valid_split() -> None:
    X, y = _digits()
    common = {
        "module__input_shape": X.shape[1:],
        "module__hidden1": 32,
        "lr": 0.01,
        "batch_size": 32,
        "max_epochs": 3,
        "train_split": ValidSplit(4),
    }
    fast = TunedClassifier(MLP, iterator_train__shuffle=False, random_state=SEED, **common)
    fast.fit(X, y)
    torch.manual_seed(SEED)
    plain = NeuralNetClassifier(
        MLP, criterion=nn.CrossEntropyLoss, optimizer=torch.optim.Adam, verbose=0, **common
    ).fit(X, y)
    for key in ("train_loss", "valid_loss", "valid_acc"):
        np.testing.assert_allclose(fast.history[:, key], plain.history[:, key], rtol=1e-5)


def test_batches_have_the_batch_size_and_a_smaller_last_batch() -> None:
    X = np.arange(10, dtype=np.float32).reshape(10, 1)
    batches = TensorBatches(Dataset(X, np.arange(10)), batch_size=4)
    sizes = [len(Xb) for Xb, _ in batches]
    assert sizes == [4, 4, 2]
    assert len(batches) == 3
    assert torch.cat([Xb for Xb, _ in batches]).flatten().tolist() == list(range(10))


def test_shuffle_covers_every_row_once_per_epoch_in_a_new_order() -> None:
    X = np.arange(50, dtype=np.float32).reshape(50, 1)
    y = np.arange(50)
    batches = TensorBatches(Dataset(X, y), batch_size=8, shuffle=True)
    torch.manual_seed(SEED)
    orders = []
    for _ in range(2):
        rows = [(Xb.flatten(), yb) for Xb, yb in batches]
        assert [len(yb) for _, yb in rows] == [8] * 6 + [2]
        seen = torch.cat([yb for _, yb in rows])
        assert all(torch.equal(Xb.long(), yb) for Xb, yb in rows)  # pairs stay together
        assert sorted(seen.tolist()) == list(range(50))
        orders.append(seen.tolist())
    assert orders[0] != orders[1]
    assert orders[0] != list(range(50))


def test_a_subset_from_valid_split_yields_its_rows() -> None:
    X = np.arange(20, dtype=np.float32).reshape(20, 1)
    y = np.arange(20)
    train, valid = ValidSplit(4)(Dataset(X, y), y)
    assert isinstance(valid, Subset)
    rows = torch.cat([yb for _, yb in TensorBatches(valid, batch_size=3)]).tolist()
    assert rows == list(np.asarray(valid.indices))
    assert len(rows) == 5


def test_data_already_on_the_device_is_not_copied() -> None:
    X = torch.rand(6, 2)
    batches = TensorBatches(Dataset(X, torch.arange(6)), batch_size=6, device="cpu")
    assert batches.X.data_ptr() == X.data_ptr()


def test_anything_but_arrays_is_refused_with_a_way_out() -> None:
    with pytest.raises(TypeError, match="iterator_train=torch.utils.data.DataLoader"):
        TensorBatches([1, 2, 3], batch_size=2)


@pytest.mark.slow
def test_predict_without_targets_in_eval_mode() -> None:
    X, y = _digits(200)
    net = TunedClassifier(
        MLP, module__input_shape=(1, 8, 8), module__dropout=0.5, max_epochs=2, batch_size=16
    ).fit(X, y)
    batches = list(TensorBatches(Dataset(X[:5]), batch_size=2))
    assert [yb for _, yb in batches] == [None, None, None]
    first, second = net.predict_proba(X), net.predict_proba(X)
    np.testing.assert_array_equal(first, second)  # dropout is off when predicting
    assert net.predict(X).shape == (200,)
    net.iterator_valid__batch_size = 7  # (skorch's set_params refuses it on a fitted net)
    small = net.predict_proba(X)
    np.testing.assert_allclose(small, first, rtol=1e-5, atol=1e-7)


class _Recorder(Callback):
    """Records what a user's callback sees during a fit."""

    def initialize(self) -> _Recorder:
        self.modes: list[bool] = []
        self.grads = 0
        self.losses: list[Any] = []
        return self

    def on_grad_computed(self, net: Any, named_parameters: Any, **kwargs: Any) -> None:
        self.grads += 1

    def on_batch_end(self, net: Any, training: bool = False, **kwargs: Any) -> None:
        if training:
            self.modes.append(net.module_.training)
            self.losses.append(kwargs["loss"].item())


@pytest.mark.slow
def test_user_callbacks_see_every_batch_in_train_mode() -> None:
    X, y = _digits(100)
    recorder = _Recorder()
    net = TunedClassifier(
        MLP,
        module__input_shape=(1, 8, 8),
        module__dropout=0.2,
        max_epochs=3,
        batch_size=25,
        callbacks=[("recorder", recorder)],
    )
    net.fit(X, y)
    net.predict(X)  # eval mode in between
    net.partial_fit(X, y)
    # 4 batches x 3 epochs, twice
    assert recorder.grads == 24
    assert recorder.modes == [True] * 24
    batches = [b for epoch in net.history for b in epoch["batches"]]
    assert len(batches) == 24
    assert all(type(b["train_loss"]) is float for b in batches)
    np.testing.assert_allclose([b["train_loss"] for b in batches], recorder.losses, rtol=1e-6)


@pytest.mark.parametrize(
    ("optimizer", "options"),
    [
        ("adam", {"optimizer__weight_decay": 1e-3}),
        ("adamw", {}),
        ("adamax", {}),
        ("sgd", {"optimizer__momentum": 0.9, "optimizer__nesterov": True}),
        ("rmsprop", {"optimizer__centered": True}),
        ("adam", {"optimizer__param_groups": [("layers.1.*", {"lr": 0.05})]}),
    ],
)
@pytest.mark.slow
def test_weights_are_bit_for_bit_those_of_plain_skorch(optimizer: str, options: dict) -> None:
    # Adam, AdamW and SGD step with torch's fused kernel, Adamax and RMSprop with its foreach
    # loop; plain skorch is told to use the same, so both compute the same ops in the same
    # order, in one process on the same threads: equal by construction. (The fused kernels
    # round a few last bits unlike torch's default loop; the scores test above compares with
    # the default.)
    fused = optimizer in ("adam", "adamw", "sgd")
    multi_tensor = {"optimizer__fused": True} if fused else {"optimizer__foreach": True}
    X, y = _digits(200)
    common = {
        "module__input_shape": (1, 8, 8),
        "module__hidden1": 24,
        "module__hidden2": 12,
        "module__batch_norm": True,
        "lr": 0.01,
        "batch_size": 32,
        "max_epochs": 2,
        **options,
    }
    fast = TunedClassifier(
        MLP, optimizer=optimizer, iterator_train__shuffle=False, random_state=SEED, **common
    ).fit(X, y)
    torch.manual_seed(SEED)
    plain = NeuralNetClassifier(
        MLP,
        criterion=nn.CrossEntropyLoss,
        optimizer=OPTIMIZERS[optimizer],
        train_split=None,
        verbose=0,
        **multi_tensor,
        **common,
    ).fit(X, y)
    for key, value in multi_tensor.items():
        assert fast.optimizer_.defaults[key.removeprefix("optimizer__")] is value
    fast_state, plain_state = fast.module_.state_dict(), plain.module_.state_dict()
    assert fast_state.keys() == plain_state.keys()
    for key, value in plain_state.items():
        assert torch.equal(fast_state[key], value), key


def _initial_and_final_weights(way: str, optimizer: Any) -> tuple[dict, dict, list[float]]:
    X, y = _digits(200)
    params = {
        "module__input_shape": (1, 8, 8),
        "module__hidden1": 24,
        "module__batch_norm": True,
        "optimizer": optimizer,
        "lr": 0.01,
        "batch_size": 32,
        "max_epochs": 4,
    }
    net = TunedClassifier(MLP, **params)
    initial = clone(net).initialize().module_.state_dict()
    if way == "fit":
        net.fit(X, y)
        return initial, net.module_.state_dict(), list(net.history[:, "train_loss"])
    X_all, y_all = torch.as_tensor(X), torch.as_tensor(y)
    halves = [slice(0, 100), slice(100, 200)]
    fit = fit_stacked(net, [X_all[rows] for rows in halves], [y_all[rows] for rows in halves])
    return initial, fit.fold_net(1).module_.state_dict(), fit.losses(1)


@pytest.mark.parametrize(
    ("optimizer", "way"),
    [
        *[(name, way) for name in OPTIMIZERS for way in ("fit", "stacked")],
        (torch.optim.Adagrad, "fit"),  # stands for the optimizers skorch steps itself
    ],
)
@pytest.mark.slow
def test_every_optimizer_trains(optimizer: Any, way: str) -> None:
    # hpo steps its own optimizers without skorch's closure, and the stacked folds without
    # skorch at all; an optimizer that silently stopped stepping would leave every weight
    # where it started.
    initial, final, losses = _initial_and_final_weights(way, optimizer)
    learned = [key for key, value in initial.items() if value.is_floating_point()]
    assert learned
    for key in learned:
        assert not torch.equal(final[key], initial[key]), key
    assert losses[-1] < 0.95 * losses[0]


@pytest.mark.slow
def test_an_optimizer_that_calls_the_closure_more_than_once_trains() -> None:
    X, y = _digits(200)
    net = TunedClassifier(
        MLP,
        module__input_shape=(1, 8, 8),
        optimizer=torch.optim.LBFGS,
        lr=0.5,
        optimizer__max_iter=4,
        batch_size=-1,
        max_epochs=5,
    ).fit(X, y)
    losses = net.history[:, "train_loss"]
    assert losses[-1] < 0.5 * losses[0]


class _WithASecondOptimizer(TunedClassifier):
    """A subclass that adds an optimizer of its own (lr 0: it only counts its steps)."""

    def initialize_optimizer(self, triggered_directly: Any = None) -> Any:
        super().initialize_optimizer(triggered_directly)
        self.second_optimizer_ = torch.optim.Adam(self.module_.parameters(), lr=0.0)
        return self


@pytest.mark.slow
def test_a_subclass_with_an_optimizer_of_its_own_steps_both() -> None:
    X, y = _digits(100)
    net = _WithASecondOptimizer(
        MLP, module__input_shape=(1, 8, 8), max_epochs=2, batch_size=25
    ).fit(X, y)
    steps = 2 * 4
    for optimizer in (net.optimizer_, net.second_optimizer_):
        counts = {int(state["step"]) for state in optimizer.state.values()}
        assert counts == {steps}


@pytest.mark.slow
def test_a_pickled_net_trains_on_as_the_original() -> None:
    X, y = _digits(200)
    net = TunedClassifier(MLP, module__input_shape=(1, 8, 8), max_epochs=2, batch_size=32)
    net.fit(X, y)
    copy = pickle.loads(pickle.dumps(net))
    for each in (net, copy):
        torch.manual_seed(SEED)
        each.partial_fit(X, y)
    np.testing.assert_array_equal(copy.predict_proba(X), net.predict_proba(X))
    assert copy.history[-1, "train_loss"] == net.history[-1, "train_loss"]


@pytest.mark.slow
def test_tensors_already_on_the_device_fit_with_a_validation_split() -> None:
    # What the objective passes for a dataset without a fixed validation split: each fold as
    # tensors on the trial's device, from which early stopping holds out a ValidSplit.
    X, y = _digits(200)
    net = TunedClassifier(
        MLP,
        module__input_shape=(1, 8, 8),
        max_epochs=30,
        batch_size=32,
        early_stopping_patience=2,
        device="cpu",
    ).fit(torch.as_tensor(X), torch.as_tensor(y))
    assert len(net.history) < 30
    assert np.isfinite(net.history[-1, "valid_loss"])
    assert net.predict(torch.as_tensor(X)).shape == (200,)


def test_convolutions_run_channels_last_on_the_cpu() -> None:
    # oneDNN's fast layout; test_fast_path_scores_like_plain_skorch shows the scores hold.
    net = TunedClassifier(
        CNN, module__input_shape=(1, 8, 8), module__conv1=4, module__conv2=8, device="cpu"
    ).initialize()
    convs = [m for m in net.module_.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


@pytest.mark.parametrize(
    ("module", "module_params"),
    [
        (MLP, {"module__hidden1": 64, "module__dropout": 0.1}),
        (CNN, {"module__conv1": 8, "module__conv2": 16, "module__batch_norm": True}),
    ],
)
@pytest.mark.slow
def test_mixed_precision_runs_the_forward_in_bfloat16_and_scores_like_float32(
    module: type[nn.Module], module_params: dict[str, Any]
) -> None:
    # On the GPU where there is one; torch.autocast is the same on the CPU, only slower.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    X, y = _digits(900)
    outputs: dict[bool, set[torch.dtype]] = {}
    scores: dict[bool, float] = {}
    for mixed in (False, True):
        net = TunedClassifier(
            module,
            module__input_shape=X.shape[1:],
            lr=0.01,
            batch_size=64,
            max_epochs=8,
            mixed_precision=mixed,
            device=device,
            **module_params,
        ).initialize()
        layer = next(m for m in net.module_.modules() if isinstance(m, nn.Linear))
        outputs[mixed] = set()
        layer.register_forward_hook(lambda _, __, out, seen=outputs[mixed]: seen.add(out.dtype))
        torch.manual_seed(SEED)  # partial_fit shuffles from the caller's generator
        net.partial_fit(X[:600], y[:600])  # keeps the initialized module and its hook
        assert net.predict_proba(X[600:]).dtype == np.float32
        assert all(p.dtype == torch.float32 for p in net.module_.parameters())
        assert np.isfinite(net.history[-1, "train_loss"])
        scores[mixed] = net.score(X[600:], y[600:])
    assert outputs == {False: {torch.float32}, True: {torch.bfloat16}}
    assert scores[False] > 0.8  # it learned
    # bfloat16 rounds each activation to 8 bits of mantissa; on 300 held-out digits after 8
    # epochs that moves the CNN with batch norm by up to 0.04 depending on torch's thread count
    # (0.877 against 0.913 measured on two threads; the test passed on one).
    assert scores[True] == pytest.approx(scores[False], abs=0.05)


def test_mixed_precision_must_be_a_boolean() -> None:
    net = TunedClassifier(MLP, mixed_precision="yes")
    with pytest.raises(ValueError, match="mixed_precision must be true or false, got 'yes'"):
        net.initialize()


@pytest.mark.slow
def test_a_cosine_schedule_lowers_lr_to_zero_over_max_epochs() -> None:
    X, y = _digits()
    net = TunedClassifier(MLP, lr=0.1, max_epochs=4, lr_schedule="cosine", optimizer="sgd")
    net.fit(X, y)
    # The lr each epoch ran at: lr * (1 + cos(pi * epoch / max_epochs)) / 2.
    expected = [0.1 * (1 + np.cos(np.pi * epoch / 4)) / 2 for epoch in range(4)]
    np.testing.assert_allclose(net.history[:, "event_lr"], expected, rtol=1e-6)
    assert net.optimizer_.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_an_unknown_lr_schedule_names_the_choices() -> None:
    net = TunedClassifier(MLP, lr_schedule="step")
    with pytest.raises(ValueError, match="lr_schedule must be one of none, cosine, got 'step'"):
        net.initialize()


# --- the estimator contract -----------------------------------------------------------------


def test_the_constructor_stores_its_arguments_unchanged() -> None:
    net = TunedClassifier(MLP, module__hidden1=8, early_stopping_patience=2)
    params = net.get_params()
    assert params["criterion"] is None and params["train_split"] is None
    assert clone(net).get_params().keys() == params.keys()
    assert TunedRegressor(MLP, criterion="huber").get_params()["criterion"] == "huber"


#: What ``_SeesTrainSplit`` saw (a list outside the callback, which ``clone`` copies).
SEEN_SPLITS: list[Any] = []


class _SeesTrainSplit(Callback):
    def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
        SEEN_SPLITS.append(net.train_split)


@pytest.mark.slow
def test_a_fit_draws_from_its_own_seed_and_leaves_the_callers_generator_and_split_alone() -> None:
    X, y = _digits(200)
    SEEN_SPLITS.clear()
    net = TunedClassifier(
        MLP,
        module__input_shape=(1, 8, 8),
        module__dropout=0.2,
        max_epochs=3,
        batch_size=32,
        early_stopping_patience=5,
        callbacks=[("sees", _SeesTrainSplit())],
    )
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = clone(net).fit(X, y)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator, untouched
    torch.manual_seed(456)  # another caller state: the fit does not depend on it
    again = clone(net).fit(X, y)
    np.testing.assert_array_equal(first.predict_proba(X), again.predict_proba(X))
    assert first.history[:, "valid_loss"] == again.history[:, "valid_loss"]  # it validated
    assert SEEN_SPLITS == [None] * 6  # train_split is never reassigned during the fits
    batch = first.history[-1, "batches", 0]
    assert isinstance(batch["train_loss"], float) and batch["train_batch_size"] == 32
