"""The refit net back from a study's artifacts, on any machine, without its dataset.

``load_refit`` reads which artifacts are the study's latest refit from the storage
(``hpo.results.artifacts``), downloads ``params.json`` and the weights from the artifact
folder, rebuilds the net with ``hpo.engine.build.net_for`` and gives it back fitted: its
weights loaded, its feature scaling (``scaling_``) and its classes (``classes_``) restored, so
``predict``, ``predict_proba`` and scikit-learn's scorers work on raw features as they did on
the machine that refit it.

The spec comes from a storage that others may write to, and rebuilding the net imports the
model (and loss) it names, so the spec is held to the trust rule before anything is downloaded
(``hpo.engine.user_code.admit_user_code``), and what ``params.json`` names is checked as the
spec was before it is imported.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from hpo.engine.build import net_for
from hpo.engine.device import resolve_device
from hpo.engine.preprocess import Scaling
from hpo.engine.user_code import admit_user_code
from hpo.results.artifacts import download_refit, refit_artifact_ids, resolve_artifacts_dir
from hpo.service.storage import as_storage
from hpo.service.study import load_spec_from_storage
from hpo.spec.references import allowed_prefixes, check_trusted, is_reference


def load_refit(
    name: str,
    storage: str | optuna.storages.BaseStorage | None = None,
    *,
    artifacts: str | Path | None = None,
    allow_modules: Sequence[str] = (),
    device: str = "cpu",
) -> Any:
    """The net ``hpo refit`` trained for study ``name``, fitted, ready to predict raw features.

    Args:
        name: A study that ``hpo refit`` has refit.
        storage: A storage URL or an Optuna storage. Default: ``$HPO_STORAGE``, else
            ``sqlite:///hpo.db``.
        artifacts: The artifact folder ``hpo refit`` uploaded to (or a copy of it). Default:
            ``$HPO_ARTIFACTS``, else ``results``.
        allow_modules: Module prefixes whose code the study may name (``model:``,
            ``criterion:``); ``$HPO_ALLOW_MODULES`` adds more.
        device: Where the net predicts: ``cpu``, ``cuda`` or ``cuda:N``. Default: ``cpu``.

    Returns:
        The fitted skorch ``NeuralNetClassifier`` / ``NeuralNetRegressor`` (hpo's
        ``TunedClassifier`` / ``TunedRegressor``).

    Raises:
        StudyError: No such study, or it has not been refit (run ``hpo refit NAME``).
        HpoError: The study names code that is not trusted here, or the artifact folder is
            missing or is not the one refit wrote to.
        DeviceError: ``device`` cannot be used here.
    """
    opened = as_storage(storage)
    spec = load_spec_from_storage(opened, name)
    # The trust rule first, as on every path: untrusted code is refused unimported, trusted
    # code imported and held to be a module class, before the refit is looked for.
    admit_user_code(spec, allow_modules, f"study {name}")
    prefixes = allowed_prefixes(allow_modules)
    record = refit_artifact_ids(opened, name)
    device = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="hpo-refit-") as folder:
        files = download_refit(
            record, resolve_artifacts_dir(artifacts), folder, kinds=("params", "model")
        )
        params = json.loads(files["params"].read_text(encoding="utf-8"))
        # What is imported is what params.json names; it is checked as the spec was.
        check_trusted(_references(params), prefixes)
        net = rebuild_net(params, device)
        net.initialize()
        net.load_params(f_params=str(files["model"]))
    return net


def rebuild_net(params: dict[str, Any], device: str = "cpu") -> Any:
    """The unfitted net a refit's ``params.json`` describes, with its learned feature scaling.

    Args:
        params: ``params.json`` as read (``hpo.results.refit``).
        device: Where the net runs. Default: ``cpu``.

    Returns:
        The net; ``initialize()`` and ``load_params`` then give it the refit's weights.
    """
    configuration = dict(params["configuration"])
    if params["task"] == "classification" and params.get("classes") is not None:
        # skorch's public way to fix ``classes_`` (which fit would infer from y), so that
        # scikit-learn's scorers see the classes the refit saw.
        configuration["classes"] = list(params["classes"])
    net = net_for(
        params["model"],
        task=params["task"],
        input_shape=tuple(params["input_shape"]),
        n_outputs=int(params["n_outputs"]),
        configuration=configuration,
        device=device,
    )
    scaling = params.get("scaling")
    net.scaling_ = None if scaling is None else Scaling.from_state(scaling)
    return net


def _references(params: dict[str, Any]) -> list[tuple[str, str]]:
    criterion = params["configuration"].get("criterion")
    named = (("model", params.get("model")), ("criterion", criterion))
    return [(key, value) for key, value in named if isinstance(value, str) and is_reference(value)]
