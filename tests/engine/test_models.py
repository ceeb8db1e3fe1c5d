from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from hpo.engine.models import ACTIVATIONS, CNN, MLP, MODELS, WEIGHT_INITS, Dropout


def _linear_sizes(module: nn.Module) -> list[int]:
    return [layer.out_features for layer in module.modules() if isinstance(layer, nn.Linear)]


def _forward_backward(module: nn.Module, X: torch.Tensor) -> torch.Tensor:
    out = module(X)
    out.sum().backward()
    return out


def test_registry_names() -> None:
    assert MODELS == {"mlp": MLP, "cnn": CNN, "regressor": MLP}
    assert set(ACTIVATIONS) == {"relu", "leaky_relu", "tanh", "sigmoid", "elu", "gelu"}
    assert WEIGHT_INITS == ("default", "xavier_uniform", "kaiming_normal", "normal")


@pytest.mark.parametrize(
    ("kwargs", "hidden"),
    [
        ({}, [100]),
        ({"hidden1": 32}, [32]),
        ({"hidden1": 32, "hidden2": 16, "hidden3": 8}, [32, 16, 8]),
        ({f"hidden{i}": 4 + i for i in range(1, 7)}, [5, 6, 7, 8, 9, 10]),
        ({"depth": 3, "units": 16}, [16, 16, 16]),
        ({"depth": 1, "units": 7}, [7]),
    ],
)
def test_mlp_hidden_styles(kwargs: dict[str, Any], hidden: list[int]) -> None:
    model = MLP(input_shape=(64,), n_outputs=10, **kwargs)
    assert _linear_sizes(model) == [*hidden, 10]
    assert _forward_backward(model, torch.randn(5, 64)).shape == (5, 10)


@pytest.mark.parametrize("input_shape", [(64,), [64], (1, 8, 8), [3, 4, 5]])
def test_mlp_flattens_any_input_shape(input_shape: Any) -> None:
    model = MLP(input_shape=input_shape, n_outputs=3, hidden1=8)
    assert model.input_shape == tuple(input_shape)
    assert model(torch.randn(4, *input_shape)).shape == (4, 3)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("weight_init", WEIGHT_INITS)
def test_mlp_every_activation_and_init(activation: str, weight_init: str) -> None:
    model = MLP(
        input_shape=(6,),
        n_outputs=1,
        depth=2,
        units=8,
        activation=activation,
        weight_init=weight_init,
    )
    assert sum(isinstance(m, ACTIVATIONS[activation]) for m in model.modules()) == 2
    out = _forward_backward(model, torch.randn(4, 6))
    assert out.shape == (4, 1)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("weight_init", ["xavier_uniform", "kaiming_normal", "normal"])
def test_weight_init_zeroes_biases(weight_init: str) -> None:
    model = CNN(input_shape=(1, 8, 8), conv1=4, conv2=None, hidden1=8, weight_init=weight_init)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in layers)


def test_normal_init_has_small_weights() -> None:
    torch.manual_seed(0)
    model = MLP(input_shape=(200,), hidden1=200, weight_init="normal")
    weight = model.layers[1].weight
    assert weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert abs(weight.mean().item()) < 1e-3


def test_mlp_batch_norm_and_dropout() -> None:
    model = MLP(input_shape=(10,), hidden1=16, hidden2=8, batch_norm=True, dropout=0.5)
    kinds = [type(m) for m in model.layers]
    assert kinds == [
        nn.Flatten,
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        Dropout,
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        Dropout,
        nn.Linear,
    ]
    assert _forward_backward(model, torch.randn(6, 10)).shape == (6, 10)
    model.eval()
    X = torch.randn(3, 10)
    assert torch.equal(model(X), model(X))  # dropout is off in eval mode


def test_mlp_without_dropout_has_no_dropout_layer() -> None:
    model = MLP(hidden1=8, dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


@pytest.mark.parametrize(
    ("input_shape", "kwargs", "linear_sizes"),
    [
        ((1, 8, 8), {}, [128, 10]),
        ((1, 8, 8), {"conv3": 16, "batch_norm": True}, [128, 10]),
        ((1, 8, 8), {"pool": "none", "padding": 0, "conv2": None, "hidden1": None}, [10]),
        ((1, 8, 8), {"pool": "avg", "kernel_size": 5, "hidden2": 32}, [128, 32, 10]),
        ((1, 28, 28), {}, [128, 10]),
        ((1, 28, 28), {"conv3": 8, "batch_norm": True, "dropout": 0.3}, [128, 10]),
        ((3, 16, 12), {"padding": 1, "activation": "gelu"}, [128, 10]),
    ],
)
def test_cnn_shapes(
    input_shape: tuple[int, ...], kwargs: dict[str, Any], linear_sizes: list[int]
) -> None:
    model = CNN(input_shape=input_shape, n_outputs=10, **kwargs)
    assert _linear_sizes(model) == linear_sizes
    assert _forward_backward(model, torch.randn(4, *input_shape)).shape == (4, 10)


def test_cnn_flattened_size_matches_the_image() -> None:
    # 28 -> pool 14 -> pool 7, with 64 channels out of conv2.
    model = CNN(input_shape=[1, 28, 28], conv1=32, conv2=64, hidden1=128)
    assert model.classifier[0].in_features == 64 * 7 * 7
    model = CNN(input_shape=(1, 8, 8), conv1=4, conv2=None, padding=0, hidden1=16)
    assert model.classifier[0].in_features == 4 * 3 * 3  # 8 -> conv 6 -> pool 3


def test_lenet_is_expressible() -> None:
    model = CNN(
        input_shape=(1, 28, 28),
        n_outputs=10,
        conv1=6,
        conv2=16,
        kernel_size=5,
        padding=2,
        pool="max",
        hidden1=120,
        hidden2=84,
    )
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 6, (5, 5)),
        (6, 16, (5, 5)),
    ]
    assert _linear_sizes(model) == [120, 84, 10]
    assert model.classifier[0].in_features == 16 * 7 * 7
    assert _forward_backward(model, torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_cnn_batch_norm_starts_with_fresh_statistics() -> None:
    model = CNN(input_shape=(1, 8, 8), batch_norm=True)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 2
    assert all(int(norm.num_batches_tracked) == 0 for norm in norms)
    assert model.training and all(norm.training for norm in norms)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (MLP, {"hidden1": 8, "hidden3": 8}, "hidden2 is None while hidden3 is set"),
        (MLP, {"hidden2": 8}, "hidden1 is None while hidden2 is set"),
        (MLP, {"hidden1": 8, "depth": 2, "units": 8}, "not both"),
        (MLP, {"hidden1": 8, "units": 8}, "not both"),
        (MLP, {"depth": 2}, "`depth` and `units` must be set together"),
        (MLP, {"units": 2}, "`depth` and `units` must be set together"),
        (MLP, {"depth": 0, "units": 4}, "`depth` must be a positive integer"),
        (MLP, {"hidden1": 0}, "`hidden1` must be a positive integer"),
        (MLP, {"activation": "swish"}, "relu, leaky_relu, tanh, sigmoid, elu, gelu"),
        (MLP, {"weight_init": "he"}, "default, xavier_uniform, kaiming_normal, normal"),
        (MLP, {"dropout": 1.0}, "0 <= dropout < 1"),
        (CNN, {"activation": "Relu"}, "`activation` must be one of"),
        (CNN, {"weight_init": "orthogonal"}, "`weight_init` must be one of"),
        (CNN, {"pool": "min"}, "`pool` must be one of max, avg, none"),
        (CNN, {"padding": "full"}, "`padding` must be one of same, valid"),
        (CNN, {"conv2": None, "conv3": 8}, "conv2 is None while conv3 is set"),
        (CNN, {"hidden1": None, "hidden2": 8}, "hidden1 is None while hidden2 is set"),
        (CNN, {"input_shape": (64,)}, "(channels, height, width)"),
    ],
)
def test_bad_arguments_raise(cls: type[nn.Module], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("input_shape", "kwargs", "block"),
    [
        # 8 -> conv 4 -> pool 2; a 5x5 kernel does not fit a 2x2 image.
        ((1, 8, 8), {"kernel_size": 5, "padding": 0}, "conv2"),
        ((1, 4, 4), {"kernel_size": 5, "padding": "valid"}, "conv1"),
        # 'same' padding keeps the size but three 2x2 pools empty a 4x4 image.
        ((1, 4, 4), {"conv3": 8}, "conv3"),
    ],
)
def test_collapsing_cnn_names_the_block(
    input_shape: tuple[int, ...], kwargs: dict[str, Any], block: str
) -> None:
    with pytest.raises(ValueError, match=f"{block} block cannot process") as info:
        CNN(input_shape=input_shape, **kwargs)
    assert "padding='same'" in str(info.value)


@pytest.mark.parametrize(
    ("cls", "kwargs", "shape"),
    [
        (MLP, {"depth": 2, "units": 16, "batch_norm": True}, (64,)),
        (MLP, {"hidden1": 16, "weight_init": "kaiming_normal"}, (64,)),
        (CNN, {"batch_norm": True}, (1, 8, 8)),
        (CNN, {"weight_init": "xavier_uniform", "hidden2": 8}, (1, 8, 8)),
    ],
)
def test_construction_is_deterministic_under_manual_seed(
    cls: type[nn.Module], kwargs: dict[str, Any], shape: tuple[int, ...]
) -> None:
    torch.manual_seed(7)
    first = cls(input_shape=shape, **kwargs).state_dict()
    torch.manual_seed(7)
    second = cls(input_shape=shape, **kwargs).state_dict()
    torch.manual_seed(8)
    other = cls(input_shape=shape, **kwargs).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_constructor_stores_its_arguments() -> None:
    # skorch and the spec validator read the constructor signature; the stored values must match.
    model = CNN(input_shape=[1, 8, 8], conv1=6, kernel_size=5, padding=2, pool="avg")
    assert (model.conv1, model.kernel_size, model.padding, model.pool) == (6, 5, 2, "avg")
    model = MLP(depth=2, units=4, activation="tanh")
    assert (model.depth, model.units, model.activation, model.hidden1) == (2, 4, "tanh", None)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_and_scales_as_torch_does(p: float) -> None:
    X = torch.ones(400, 500, requires_grad=True)
    layer = Dropout(p)
    torch.manual_seed(0)
    out = layer(X)
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.01)
    assert torch.allclose(out[kept], torch.tensor(1 / (1 - p)))
    out.sum().backward()
    assert torch.equal(X.grad, out.detach())  # the gradient is the scaled mask
    torch.manual_seed(0)
    assert torch.equal(layer(X), out)  # a seed fixes the mask
    reference = nn.Dropout(p)(X)  # torch's: the same distribution, from other draws
    assert (reference != 0).float().mean().item() == pytest.approx(1 - p, abs=0.01)
    layer.eval()
    assert torch.equal(layer(X), X)
