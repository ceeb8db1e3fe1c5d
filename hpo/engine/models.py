"""The PyTorch modules a study can search over.

Every architectural knob is a constructor argument, so skorch can route it as
``module__<name>`` and a search-space key is directly a skorch parameter. The modules return raw
logits (classifiers) or one value per sample (the regressor); the loss applies any softmax.

``MODELS`` maps the names a study spec uses to the module classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}

WEIGHT_INITS: tuple[str, ...] = ("default", "xavier_uniform", "kaiming_normal", "normal")

POOLS: tuple[str, ...] = ("max", "avg", "none")

# The gain kaiming_normal_ should use for each activation; torch has no gain for ELU or GELU, and
# both behave like ReLU for positive inputs.
_KAIMING_NONLINEARITY: dict[str, Literal["relu", "leaky_relu", "tanh", "sigmoid"]] = {
    "relu": "relu",
    "leaky_relu": "leaky_relu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "elu": "relu",
    "gelu": "relu",
}

_DEFAULT_HIDDEN_UNITS = 100


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask is a uniform draw compared with ``p``.

    torch's CPU dropout draws its mask with ``bernoulli_``, which on the small batches of a
    search costs more than the layer's arithmetic, more than twice what
    ``rand_like(x).ge_(p)`` costs (measured: docs/benchmarks.md). Each unit is kept with the same
    probability ``1 - p`` and the kept ones are scaled by ``1 / (1 - p)``, as torch does; the
    draws come from torch's global generator, so a seed fixes them. On a GPU (and in eval mode,
    or in place) torch's own kernel runs.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.inplace or input.device.type != "cpu":
            return super().forward(input)
        return input * keep_mask(torch.rand_like(input), self.p)


def keep_mask(uniform: torch.Tensor, p: float) -> torch.Tensor:
    """``Dropout``'s mask from uniform draws, in place: ``1 / (1 - p)`` where a draw is at
    least ``p``, else 0."""
    return uniform.ge_(p).mul_(1.0 / (1.0 - p))


def _check_choice(argument: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{argument}` must be one of {', '.join(choices)}, but got {value!r}.")


def _check_positive(argument: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"`{argument}` must be a positive integer, but got {value!r}.")


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`0 <= dropout < 1` must hold, but got dropout={dropout!r}.")


def _consecutive_sizes(prefix: str, sizes: Sequence[int | None]) -> list[int]:
    """Return the leading non-None sizes; a size set after a None is an error, not ignored."""
    kept: list[int] = []
    for index, size in enumerate(sizes, start=1):
        if size is None:
            later = [
                f"{prefix}{i}" for i, s in enumerate(sizes, start=1) if i > index and s is not None
            ]
            if later:
                raise ValueError(
                    f"`{prefix}1..{prefix}{len(sizes)}` must be set consecutively, but "
                    f"{prefix}{index} is None while {', '.join(later)} is set."
                )
            break
        _check_positive(f"{prefix}{index}", size)
        kept.append(size)
    return kept


def _initialize(module: nn.Module, weight_init: str, activation: str) -> None:
    """Re-initialize every Linear and Conv2d layer of ``module`` in place."""
    if weight_init == "default":
        return
    for layer in module.modules():
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            continue
        if weight_init == "xavier_uniform":
            nn.init.xavier_uniform_(layer.weight)
        elif weight_init == "kaiming_normal":
            nn.init.kaiming_normal_(layer.weight, nonlinearity=_KAIMING_NONLINEARITY[activation])
        else:
            nn.init.normal_(layer.weight, mean=0.0, std=0.01)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    """A fully connected network; any input shape is flattened first.

    Hidden layers are given in one of two styles, never both: explicit sizes ``hidden1`` ..
    ``hidden6`` (consecutive, stopping at the first None), or ``depth`` layers of ``units``
    each. With neither, the network has one hidden layer of 100 units. Each hidden block is
    Linear -> BatchNorm1d (if ``batch_norm``) -> activation -> Dropout (if ``dropout > 0``).

    Args:
        input_shape: Shape of one sample; a list is accepted. Default ``(64,)``.
        n_outputs: Number of outputs: classes for a classifier, 1 for a regressor. Default 10.
        hidden1: Units of hidden layer 1. Default None.
        hidden2: Units of hidden layer 2; needs ``hidden1``. Default None.
        hidden3: Units of hidden layer 3; needs ``hidden2``. Default None.
        hidden4: Units of hidden layer 4; needs ``hidden3``. Default None.
        hidden5: Units of hidden layer 5; needs ``hidden4``. Default None.
        hidden6: Units of hidden layer 6; needs ``hidden5``. Default None.
        depth: Number of equal hidden layers; needs ``units``. Default None.
        units: Units of each of the ``depth`` hidden layers. Default None.
        dropout: Dropout probability after each hidden activation, in ``[0, 1)``. Default 0.0.
        activation: One of relu, leaky_relu, tanh, sigmoid, elu, gelu. Default ``"relu"``.
        batch_norm: Whether to normalize each hidden layer before its activation. Default False.
        weight_init: One of default (torch's own), xavier_uniform, kaiming_normal, normal
            (N(0, 0.01) weights); all but default zero the biases. Default ``"default"``.

    Raises:
        ValueError: If the hidden sizes mix or break the two styles, or a name or size is
            invalid.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (64,),
        n_outputs: int = 10,
        hidden1: int | None = None,
        hidden2: int | None = None,
        hidden3: int | None = None,
        hidden4: int | None = None,
        hidden5: int | None = None,
        hidden6: int | None = None,
        depth: int | None = None,
        units: int | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        weight_init: str = "default",
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.n_outputs = n_outputs
        self.hidden1 = hidden1
        self.hidden2 = hidden2
        self.hidden3 = hidden3
        self.hidden4 = hidden4
        self.hidden5 = hidden5
        self.hidden6 = hidden6
        self.depth = depth
        self.units = units
        self.dropout = dropout
        self.activation = activation
        self.batch_norm = batch_norm
        self.weight_init = weight_init

        _check_choice("activation", activation, list(ACTIVATIONS))
        _check_choice("weight_init", weight_init, WEIGHT_INITS)
        _check_dropout(dropout)
        _check_positive("n_outputs", n_outputs)

        sizes = self._hidden_sizes()
        layers: list[nn.Module] = [nn.Flatten()]
        in_features = math.prod(self.input_shape)
        for size in sizes:
            layers.append(nn.Linear(in_features, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(Dropout(dropout))
            in_features = size
        layers.append(nn.Linear(in_features, n_outputs))
        self.layers = nn.Sequential(*layers)
        _initialize(self, weight_init, activation)

    def _hidden_sizes(self) -> list[int]:
        explicit = [
            self.hidden1,
            self.hidden2,
            self.hidden3,
            self.hidden4,
            self.hidden5,
            self.hidden6,
        ]
        uses_explicit = any(size is not None for size in explicit)
        uses_depth = self.depth is not None or self.units is not None
        if uses_explicit and uses_depth:
            raise ValueError(
                "Give hidden layers either as hidden1..hidden6 or as depth and units, not both, "
                f"but got hidden sizes {explicit} and depth={self.depth}, units={self.units}."
            )
        if uses_depth:
            if self.depth is None or self.units is None:
                raise ValueError(
                    "`depth` and `units` must be set together, but got "
                    f"depth={self.depth}, units={self.units}."
                )
            _check_positive("depth", self.depth)
            _check_positive("units", self.units)
            return [self.units] * self.depth
        if uses_explicit:
            return _consecutive_sizes("hidden", explicit)
        return [_DEFAULT_HIDDEN_UNITS]

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map a batch of shape ``(N, *input_shape)`` to outputs of shape ``(N, n_outputs)``."""
        outputs: torch.Tensor = self.layers(X)
        return outputs


class CNN(nn.Module):
    """A small convolutional network for images of shape ``(C, H, W)``.

    Up to three conv blocks (``conv1`` .. ``conv3``, stopping at the first None), each
    Conv2d -> BatchNorm2d (if ``batch_norm``) -> activation -> 2x2 pooling (unless ``pool`` is
    ``"none"``), then up to two fully connected hidden layers (``hidden1``, ``hidden2``), each
    Linear -> activation -> Dropout (if ``dropout > 0``), then a Linear layer to ``n_outputs``.
    LeNet-5 is ``conv1=6, conv2=16, kernel_size=5, padding=2, hidden1=120, hidden2=84``.

    Args:
        input_shape: Shape ``(C, H, W)`` of one image; a list is accepted. Default
            ``(1, 28, 28)``.
        n_outputs: Number of classes. Default 10.
        conv1: Channels of conv block 1. Default 32.
        conv2: Channels of conv block 2, or None for one block. Default 64.
        conv3: Channels of conv block 3; needs ``conv2``. Default None.
        kernel_size: Side of every square convolution kernel. Default 3.
        padding: Padding of every convolution: a non-negative int, ``"same"`` or ``"valid"``.
            Default ``"same"``.
        pool: Pooling after each conv block: max, avg or none. Default ``"max"``.
        batch_norm: Whether to normalize each conv block before its activation. Default False.
        hidden1: Units of fully connected layer 1, or None for none. Default 128.
        hidden2: Units of fully connected layer 2; needs ``hidden1``. Default None.
        dropout: Dropout probability after each fully connected activation, in ``[0, 1)``.
            Default 0.0.
        activation: One of relu, leaky_relu, tanh, sigmoid, elu, gelu. Default ``"relu"``.
        weight_init: One of default, xavier_uniform, kaiming_normal, normal; as for `MLP`.
            Default ``"default"``.

    Raises:
        ValueError: If a name or size is invalid, or a conv block shrinks the image to nothing.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        n_outputs: int = 10,
        conv1: int = 32,
        conv2: int | None = 64,
        conv3: int | None = None,
        kernel_size: int = 3,
        padding: int | str = "same",
        pool: str = "max",
        batch_norm: bool = False,
        hidden1: int | None = 128,
        hidden2: int | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
        weight_init: str = "default",
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.n_outputs = n_outputs
        self.conv1 = conv1
        self.conv2 = conv2
        self.conv3 = conv3
        self.kernel_size = kernel_size
        self.padding = padding
        self.pool = pool
        self.batch_norm = batch_norm
        self.hidden1 = hidden1
        self.hidden2 = hidden2
        self.dropout = dropout
        self.activation = activation
        self.weight_init = weight_init

        if len(self.input_shape) != 3:
            raise ValueError(
                f"`input_shape` must be (channels, height, width), but got {self.input_shape}."
            )
        _check_choice("activation", activation, list(ACTIVATIONS))
        _check_choice("weight_init", weight_init, WEIGHT_INITS)
        _check_choice("pool", pool, POOLS)
        _check_dropout(dropout)
        _check_positive("n_outputs", n_outputs)
        _check_positive("kernel_size", kernel_size)
        if isinstance(padding, str):
            _check_choice("padding", padding, ("same", "valid"))
        elif padding < 0:
            raise ValueError(f"`padding` must be >= 0, 'same' or 'valid', but got {padding!r}.")

        channels = _consecutive_sizes("conv", [conv1, conv2, conv3])
        if not channels:
            raise ValueError("`conv1` must be set: a CNN needs at least one conv block.")
        blocks: list[nn.Module] = []
        in_channels = self.input_shape[0]
        for out_channels in channels:
            block: list[nn.Module] = [
                nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
            ]
            if batch_norm:
                block.append(nn.BatchNorm2d(out_channels))
            block.append(ACTIVATIONS[activation]())
            if pool == "max":
                block.append(nn.MaxPool2d(2))
            elif pool == "avg":
                block.append(nn.AvgPool2d(2))
            blocks.append(nn.Sequential(*block))
            in_channels = out_channels
        self.features = nn.Sequential(*blocks, nn.Flatten())

        in_features = self._flattened_size()
        layers: list[nn.Module] = []
        for size in _consecutive_sizes("hidden", [hidden1, hidden2]):
            layers += [nn.Linear(in_features, size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(Dropout(dropout))
            in_features = size
        layers.append(nn.Linear(in_features, n_outputs))
        self.classifier = nn.Sequential(*layers)
        _initialize(self, weight_init, activation)

    def _flattened_size(self) -> int:
        """Run a zero image through the conv blocks, naming the block that empties it."""
        # Eval mode so BatchNorm accepts a batch of one and its running statistics stay untouched.
        self.features.eval()
        X = torch.zeros(1, *self.input_shape)
        with torch.no_grad():
            for index, block in enumerate(self.features[:-1], start=1):
                height, width = X.shape[2:]
                try:
                    X = block(X)
                except RuntimeError as error:
                    raise self._collapse_error(index, height, width) from error
                if X.shape[2] == 0 or X.shape[3] == 0:
                    raise self._collapse_error(index, height, width)
        self.features.train()
        return X[0].numel()

    def _collapse_error(self, index: int, height: int, width: int) -> ValueError:
        return ValueError(
            f"conv{index} block cannot process its {height}x{width} input with "
            f"kernel_size={self.kernel_size}, padding={self.padding!r}, pool={self.pool!r}: the "
            "image shrinks to nothing. Use padding='same', a smaller kernel_size, pool='none', "
            f"or drop conv{index}."
        )

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map a batch of shape ``(N, C, H, W)`` to logits of shape ``(N, n_outputs)``."""
        logits: torch.Tensor = self.classifier(self.features(X))
        return logits


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "regressor": MLP}
