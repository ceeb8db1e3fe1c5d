"""The spec's plain-data names (``hpo/spec/names.py``) say what the engine's classes say.

Spec validation reads only ``hpo.spec.names`` so that it never imports torch; these tests read
the engine's real registries and signatures, so a model, dataset or optimizer changed on one
side and not the other fails here, naming the file to update.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from skorch import NeuralNet

from hpo.engine import data, models, nets
from hpo.spec import names

UPDATE = "update hpo/spec/names.py to match the engine (or the engine to match it)"

#: Constructor arguments a spec never sets: the engine passes them from the data.
FROM_THE_DATA = ("input_shape", "n_outputs")


def keyword_args(
    function: Callable[..., Any], *, leave_out: tuple[str, ...] = ()
) -> tuple[str, ...]:
    parameters = inspect.signature(function).parameters
    return tuple(
        name
        for name, parameter in parameters.items()
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        and name not in leave_out
    )


# --- models ---------------------------------------------------------------------------------


def test_model_names_are_the_engines() -> None:
    assert tuple(names.MODELS) == tuple(models.MODELS), f"hpo.engine.models.MODELS: {UPDATE}"


def test_model_classes_name_the_engines_classes() -> None:
    """The only references into hpo that the trust rule admits are these classes."""
    engine = {name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in models.MODELS.items()}
    assert names.MODEL_CLASSES == engine, f"hpo.engine.models.MODELS: {UPDATE}"


def test_criterion_names_are_torch_losses() -> None:
    for name, class_name in names.CRITERIA.items():
        loss = getattr(torch.nn, class_name, None)
        assert isinstance(loss, type) and issubclass(loss, torch.nn.modules.loss._Loss), (
            f"criterion {name}: torch.nn has no loss {class_name}; {UPDATE}"
        )


@pytest.mark.parametrize("model", sorted(names.MODELS))
def test_module_keys_are_the_model_constructors_arguments(model: str) -> None:
    engine = keyword_args(models.MODELS[model], leave_out=FROM_THE_DATA)
    assert names.MODELS[model] == engine, f"{model}'s constructor arguments changed: {UPDATE}"


@pytest.mark.parametrize("model", sorted(names.MODELS))
def test_model_constructors_take_input_shape_and_n_outputs(model: str) -> None:
    parameters = inspect.signature(models.MODELS[model]).parameters
    assert set(FROM_THE_DATA) <= set(parameters), (
        f"{model} no longer takes {FROM_THE_DATA}, which hpo/engine/objective.py passes"
    )


def test_activations_are_the_engines() -> None:
    assert names.ACTIVATIONS == tuple(models.ACTIVATIONS), (
        f"hpo.engine.models.ACTIVATIONS: {UPDATE}"
    )


def test_weight_inits_are_the_engines() -> None:
    assert names.WEIGHT_INITS == models.WEIGHT_INITS, f"hpo.engine.models.WEIGHT_INITS: {UPDATE}"


@pytest.mark.parametrize("weight_init", names.WEIGHT_INITS)
@pytest.mark.parametrize("activation", names.ACTIVATIONS)
def test_every_named_activation_and_weight_init_builds_a_model(
    activation: str, weight_init: str
) -> None:
    model = models.MLP(input_shape=(4,), activation=activation, weight_init=weight_init)
    assert model(torch.zeros(2, 4)).shape == (2, 10)


# --- optimizers and the net -----------------------------------------------------------------


def test_optimizer_names_are_the_engines() -> None:
    assert names.OPTIMIZERS == tuple(nets.OPTIMIZERS), f"hpo.engine.nets.OPTIMIZERS: {UPDATE}"


def test_optimizer_args_are_the_union_of_the_optimizers_arguments() -> None:
    engine = {
        arg
        for optimizer in nets.OPTIMIZERS.values()
        for arg in keyword_args(optimizer, leave_out=("params", "lr"))
    }
    assert names.OPTIMIZER_ARGS == tuple(sorted(engine)), (
        f"the installed torch's optimizer arguments differ: {UPDATE}; missing "
        f"{sorted(engine - set(names.OPTIMIZER_ARGS))}, extra "
        f"{sorted(set(names.OPTIMIZER_ARGS) - engine)}"
    )


@pytest.mark.parametrize("net", [nets.TunedClassifier, nets.TunedRegressor])
def test_net_params_are_arguments_of_the_tuned_nets(net: type) -> None:
    accepted = set(keyword_args(net.__init__)) | set(keyword_args(NeuralNet.__init__))
    assert names.NET_PARAMS <= accepted, (
        f"{sorted(names.NET_PARAMS - accepted)} are no arguments of {net.__name__}: {UPDATE}"
    )


def test_every_knob_the_tuned_nets_add_is_a_net_param() -> None:
    added = set(keyword_args(nets.TunedClassifier.__init__)) - set(
        keyword_args(NeuralNet.__init__)
    )
    # random_state is set by the engine per trial, not by a spec; preprocess and augment are
    # the spec's top-level keys of those names.
    assert added - {"random_state", "preprocess", "augment"} <= names.NET_PARAMS, (
        f"hpo.engine.nets's nets take {sorted(added - names.NET_PARAMS)}: {UPDATE} (NET_PARAMS)"
    )


def test_boolean_params_are_the_arguments_defaulting_to_a_bool() -> None:
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(nets.TunedClassifier.__init__).parameters.items()
    }
    defaults.update(
        (f"module__{name}", parameter.default)
        for model in models.MODELS.values()
        for name, parameter in inspect.signature(model).parameters.items()
    )
    engine = {key for key, default in defaults.items() if isinstance(default, bool)}
    spec_keys = names.NET_PARAMS | {key for key in defaults if key.startswith("module__")}
    assert set(names.BOOLEAN_PARAMS) == engine & spec_keys, f"BOOLEAN_PARAMS: {UPDATE}"


def test_named_values_are_the_engines_registries() -> None:
    assert names.NAMED_VALUES == {
        "optimizer": tuple(nets.OPTIMIZERS),
        "module__activation": tuple(models.ACTIVATIONS),
        "module__weight_init": models.WEIGHT_INITS,
        "lr_schedule": ("none", *nets.LR_SCHEDULERS),
    }, f"NAMED_VALUES: {UPDATE}"


# --- datasets -------------------------------------------------------------------------------


def test_dataset_names_are_the_engines() -> None:
    assert tuple(names.DATASETS) == tuple(data.DATASETS), f"hpo.engine.data.DATASETS: {UPDATE}"


@pytest.mark.parametrize("dataset", sorted(names.DATASETS))
def test_dataset_options_are_the_loaders_arguments(dataset: str) -> None:
    loader = data.DATASETS[dataset]
    parameters = inspect.signature(loader).parameters
    required = {n for n, p in parameters.items() if p.default is inspect.Parameter.empty}
    assert names.DATASETS[dataset].options == keyword_args(loader), (
        f"the options of {loader.__name__} changed: {UPDATE}"
    )
    assert names.DATASETS[dataset].required == required, (
        f"the required options of {loader.__name__} changed: {UPDATE}"
    )


@pytest.mark.parametrize("dataset", ["digits", "diabetes", "synthetic_regression", "mnist_5k"])
def test_fixed_validation_is_whether_the_loaded_data_has_a_validation_split(dataset: str) -> None:
    loaded = data.load_dataset(dataset)
    assert names.DATASETS[dataset].fixed_validation == (loaded.X_valid is not None), (
        f"{dataset}'s validation split changed: {UPDATE} (fixed_validation)"
    )


def test_only_offline_datasets_checked_above_have_a_fixed_validation_split() -> None:
    # The file and downloaded image datasets cannot be loaded here; none of their loaders sets
    # X_valid.
    fixed = {name for name, dataset in names.DATASETS.items() if dataset.fixed_validation}
    assert fixed == {"digits"}


def test_default_criteria_are_the_tuned_nets_defaults() -> None:
    defaults = {"classification": nets.TunedClassifier, "regression": nets.TunedRegressor}
    for task, net in defaults.items():
        named = getattr(torch.nn, names.CRITERIA[names.DEFAULT_CRITERIA[task]])
        assert named is net.default_criterion, f"{task}: {UPDATE} (DEFAULT_CRITERIA)"
