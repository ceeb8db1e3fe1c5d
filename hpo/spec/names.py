"""The names a study spec may use, as plain data: built-in models, datasets, optimizers.

A spec is validated against these tables, not against the engine's classes, so that
``hpo register``, ``export``, ``enqueue`` and ``studies`` never import torch. The engine keeps
its own registries (``hpo.engine.models.MODELS``, ``hpo.engine.nets.OPTIMIZERS``,
``hpo.engine.data.DATASETS``, ...); ``tests/spec/test_names.py`` checks that every table here
equals what the engine's classes and signatures say, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import NamedTuple

_MLP_ARGS: tuple[str, ...] = (
    "hidden1",
    "hidden2",
    "hidden3",
    "hidden4",
    "hidden5",
    "hidden6",
    "depth",
    "units",
    "dropout",
    "activation",
    "batch_norm",
    "weight_init",
)

#: Each built-in model's constructor arguments, the keys a spec may give as ``module__<arg>``
#: (``input_shape`` and ``n_outputs`` come from the data); see ``hpo.engine.models``.
MODELS: dict[str, tuple[str, ...]] = {
    "mlp": _MLP_ARGS,
    "cnn": (
        "conv1",
        "conv2",
        "conv3",
        "kernel_size",
        "padding",
        "pool",
        "batch_norm",
        "hidden1",
        "hidden2",
        "dropout",
        "activation",
        "weight_init",
    ),
    "regressor": _MLP_ARGS,
}


#: The class behind each built-in model, as ``package.module:Name``: the only code of hpo's own
#: that a spec may name by reference (``model: hpo.engine.models:MLP`` is ``model: mlp``).
#: hpo has no losses of its own (``CRITERIA`` are torch's), so no hpo loss is listed.
MODEL_CLASSES: dict[str, str] = {
    "mlp": "hpo.engine.models:MLP",
    "cnn": "hpo.engine.models:CNN",
    "regressor": "hpo.engine.models:MLP",
}


class DatasetNames(NamedTuple):
    """What a spec may say about one built-in dataset.

    Attributes:
        options: The loader's keyword options (the keys of the spec's ``dataset`` mapping
            besides ``name``).
        required: The options without a default, which a spec must give.
        fixed_validation: Whether the dataset comes with its own validation split, which early
            stopping then uses instead of holding out ``validation_fraction``.
        preprocess: The ``preprocess`` a study gets when its spec does not say: ``standard``
            for tables, whose columns come in any units; ``none`` for images, which the loader
            already scales to ``[0, 1]``, and for the 1-D synthetic data, already in ``[0, 1]``.
    """

    options: tuple[str, ...] = ()
    required: frozenset[str] = frozenset()
    fixed_validation: bool = False
    preprocess: str = "none"


_IMAGE_OPTIONS = ("root", "download", "max_train", "max_test", "test_fraction")

#: The built-in datasets, in the order messages list them; see ``hpo.engine.data``.
DATASETS: dict[str, DatasetNames] = {
    "digits": DatasetNames(fixed_validation=True),
    "diabetes": DatasetNames(("test_size", "seed"), preprocess="standard"),
    "synthetic_regression": DatasetNames(("n_train", "n_test", "noise", "seed")),
    "npz": DatasetNames(
        ("path", "task", "test_size", "seed"), frozenset({"path"}), preprocess="standard"
    ),
    "csv": DatasetNames(
        ("path", "target", "task", "test_size", "seed"),
        frozenset({"path", "target"}),
        preprocess="standard",
    ),
    "mnist": DatasetNames(_IMAGE_OPTIONS),
    "fashion_mnist": DatasetNames(_IMAGE_OPTIONS),
    "svhn": DatasetNames(("root", "download", "max_train", "max_test")),
    "mnist_5k": DatasetNames(),
}

#: Values of ``preprocess``: how a fold's features are scaled, fitted on its training rows only
#: (``standard``: zero mean, unit variance per feature; ``minmax``: each feature to ``[0, 1]``);
#: see ``hpo.engine.preprocess``.
PREPROCESSORS: tuple[str, ...] = ("standard", "minmax", "none")

#: Values of ``augment``: copies of a fit's own training rows added to what it trains on
#: (``shifts``: each image also shifted by one pixel up, down, left and right); see
#: ``hpo.engine.augment``.
AUGMENTATIONS: tuple[str, ...] = ("none", "shifts")

#: Names of the built-in losses ``criterion:`` may give (any other is ``package.module:Name``),
#: each the ``torch.nn`` class it stands for; see ``hpo.engine.nets.CRITERIA``. Without
#: ``criterion:`` a classifier uses cross_entropy and a regressor mse.
CRITERIA: dict[str, str] = {
    "cross_entropy": "CrossEntropyLoss",
    "nll": "NLLLoss",
    "mse": "MSELoss",
    "l1": "L1Loss",
    "huber": "HuberLoss",
    "smooth_l1": "SmoothL1Loss",
}

#: The loss of each task when the spec names none (``hpo.engine.nets``' default criteria).
DEFAULT_CRITERIA: dict[str, str] = {"classification": "cross_entropy", "regression": "mse"}

#: Names of the optimizers a spec may choose; see ``hpo.engine.nets.OPTIMIZERS``.
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "adamax", "sgd", "rmsprop")

#: Every constructor argument of any of ``OPTIMIZERS`` but ``params`` and ``lr``: the keys a
#: spec may give as ``optimizer__<arg>`` (the installed torch's, checked by the tests).
OPTIMIZER_ARGS: tuple[str, ...] = (
    "alpha",
    "amsgrad",
    "betas",
    "capturable",
    "centered",
    "dampening",
    "decoupled_weight_decay",
    "differentiable",
    "eps",
    "foreach",
    "fused",
    "maximize",
    "momentum",
    "nesterov",
    "weight_decay",
)

#: Values of ``module__activation``; see ``hpo.engine.models.ACTIVATIONS``.
ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "tanh", "sigmoid", "elu", "gelu")

#: Values of ``module__weight_init``; see ``hpo.engine.models.WEIGHT_INITS``.
WEIGHT_INITS: tuple[str, ...] = ("default", "xavier_uniform", "kaiming_normal", "normal")

#: Net-level keys a spec may set besides ``module__*`` and ``optimizer__*``.
NET_PARAMS: frozenset[str] = frozenset(
    {
        "lr",
        "batch_size",
        "max_epochs",
        "optimizer",
        "early_stopping_patience",
        "validation_fraction",
        "mixed_precision",
        "lr_schedule",
    }
)

#: Values of ``lr_schedule``: how the learning rate changes over a fit (``cosine``: from
#: ``lr`` down to 0 over ``max_epochs``, torch's ``CosineAnnealingLR`` stepped every epoch);
#: see ``hpo.engine.nets``.
LR_SCHEDULES: tuple[str, ...] = ("none", "cosine")

#: Parameters whose values are names, and the names each accepts.
NAMED_VALUES: dict[str, tuple[str, ...]] = {
    "optimizer": OPTIMIZERS,
    "module__activation": ACTIVATIONS,
    "module__weight_init": WEIGHT_INITS,
    "lr_schedule": LR_SCHEDULES,
}

#: Keys whose values are true or false (YAML's true/false, not a string).
BOOLEAN_PARAMS: tuple[str, ...] = ("mixed_precision", "module__batch_norm")
