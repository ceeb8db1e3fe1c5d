"""From a spec and its data to the skorch net of one configuration.

``check_compatible`` refuses a model that cannot work on the data before any trial;
``build_net`` makes the unfitted net a trial's folds clone.
"""

from __future__ import annotations

from typing import Any

from skorch.dataset import Dataset
from skorch.helper import predefined_split

from hpo.engine.augment import check_augmentation
from hpo.engine.data import DataSplits
from hpo.engine.nets import TunedClassifier, TunedRegressor
from hpo.engine.user_code import data_arguments, model_class
from hpo.errors import HpoError
from hpo.spec.study_spec import StudySpec


def check_compatible(spec: StudySpec, data: DataSplits) -> None:
    """Refuse a model, scorer or CV setting that cannot work on this data.

    Raises:
        HpoError: naming the key to change.
    """
    if spec.model == "regressor" and data.task != "regression":
        raise HpoError(
            f"model: regressor needs a regression dataset, but {data.name!r} is a "
            "classification dataset; use model: mlp or cnn"
        )
    if spec.cv.stratified and data.task == "regression":
        raise HpoError(
            f"cv.stratified: stratified folds need class labels, but {data.name!r} "
            "is a regression dataset; remove cv.stratified"
        )
    try:
        check_augmentation(spec.augment, data.input_shape)
    except ValueError as error:
        raise HpoError(f"{error} (dataset {data.name!r})") from None
    if spec.model == "cnn" and len(data.input_shape) != 3:
        raise HpoError(
            f"model: cnn needs images (channels, height, width), but {data.name!r} "
            f"has rows of shape {data.input_shape}; use model: mlp"
        )


def build_net(
    spec: StudySpec, data: DataSplits, configuration: dict[str, Any], device: str
) -> TunedClassifier | TunedRegressor:
    """The unfitted skorch net of one configuration.

    Args:
        spec: the study: its ``model`` (built-in, or the user's module, imported).
        data: the worker's data: its task picks classifier or regressor, its shape and
            classes size the module, its fixed validation split (if any) feeds early stopping.
        configuration: skorch ``set_params`` keys, fixed and searched
            (``StudySpec.configuration``).
        device: where the net trains.
    """
    net = net_for(
        spec.model,
        task=data.task,
        input_shape=tuple(data.input_shape),
        n_outputs=outputs_of(data),
        configuration=configuration,
        device=device,
    )
    if data.X_valid is not None and configuration.get("early_stopping_patience") is not None:
        net.set_params(train_split=predefined_split(Dataset(data.X_valid, data.y_valid)))
    return net


def outputs_of(data: DataSplits) -> int:
    """The module's outputs: one per class, or one value for a regression."""
    return 1 if data.task == "regression" or data.n_classes is None else data.n_classes


def net_for(
    model: str,
    *,
    task: str,
    input_shape: tuple[int, ...],
    n_outputs: int,
    configuration: dict[str, Any],
    device: str = "cpu",
) -> TunedClassifier | TunedRegressor:
    """The unfitted net of ``model`` for a task and data shape, without the data itself (what
    ``hpo.load_refit`` rebuilds a refit net from). ``input_shape`` and ``n_outputs`` go to
    the module's constructor when it takes arguments of those names (hpo's models do)."""
    module = model_class(model)
    given = {"input_shape": input_shape, "n_outputs": n_outputs}
    kwargs: dict[str, Any] = {f"module__{name}": given[name] for name in data_arguments(module)}
    net_class = TunedRegressor if task == "regression" else TunedClassifier
    return net_class(module, device=device, **kwargs, **configuration)
