"""From a spec and its data to the skorch net of one configuration.

``check_compatible`` refuses a model that cannot work on the data before any trial;
``build_net`` makes the unfitted net a trial's folds clone.
"""

from __future__ import annotations

from typing import Any

from skorch.dataset import Dataset
from skorch.helper import predefined_split

from hpo.engine.data import DataSplits
from hpo.engine.models import MODELS
from hpo.engine.nets import TunedClassifier, TunedRegressor
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
        spec: the study.
        data: the worker's data: its task picks classifier or regressor, its shape and
            classes size the module, its fixed validation split (if any) feeds early stopping.
        configuration: skorch ``set_params`` keys, fixed and searched
            (``StudySpec.configuration``).
        device: where the net trains.
    """
    net_class = TunedRegressor if data.task == "regression" else TunedClassifier
    kwargs: dict[str, Any] = {
        "module__input_shape": tuple(data.input_shape),
        "module__n_outputs": 1 if data.task == "regression" else data.n_classes,
        "device": device,
        **configuration,
    }
    if data.X_valid is not None and configuration.get("early_stopping_patience") is not None:
        kwargs["train_split"] = predefined_split(Dataset(data.X_valid, data.y_valid))
    return net_class(MODELS[spec.model], **kwargs)
