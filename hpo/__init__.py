"""hpo: hyperparameter optimization for PyTorch models on Optuna, skorch and scikit-learn.

The Python API (``hpo.api``), importable from here::

    hpo.run(spec, workers=2, storage=None, trials=None) -> optuna.Study
    hpo.best_net(name) -> an unfitted skorch net with the best configuration
    hpo.refit(name) -> the best configuration fitted on train, scored once on test
    hpo.load_refit(name) -> that fitted net, from the study's artifacts
    hpo.skorch_params(row) -> keyword arguments for plain skorch nets

``import hpo`` is light: torch, skorch and Optuna load when one of these is first used.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("hpo")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from hpo.api import best_net, load_refit, refit, run, skorch_params

__all__ = ["__version__", "best_net", "load_refit", "refit", "run", "skorch_params"]

_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from hpo import api

        return getattr(api, name)
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")
