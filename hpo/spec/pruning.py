"""The spec's pruner with hpo's defaults filled in: the one place that decides them.

``hpo.service.study.make_pruner`` builds Optuna's pruner from ``pruner_options``, and the
engine reads ``pruning_start`` to know after which fold a trial may first be pruned (it fits
the folds before that one together), so neither asks the pruner object for its settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpo.spec.study_spec import StudySpec

#: hpo's defaults per pruner name, under the spec's own ``pruner.options``. Median: Optuna's
#: 5 start-up trials, and no pruning before the second fold's running mean (one fold's score
#: is too noisy to judge a configuration by).
PRUNER_DEFAULTS: dict[str, dict[str, Any]] = {
    "median": {"n_startup_trials": 5, "n_warmup_steps": 1},
    "hyperband": {"min_resource": 1},
}


def pruner_options(spec: StudySpec) -> dict[str, Any]:
    """The keyword arguments of the spec's Optuna pruner: hpo's defaults, then the spec's
    ``pruner.options``; hyperband's ``max_resource`` is the number of folds."""
    name = spec.pruner.name
    options = dict(PRUNER_DEFAULTS.get(name, {}))
    if name == "hyperband":
        options["max_resource"] = spec.cv.folds
    options.update(spec.pruner.options)
    return options


@dataclass(frozen=True)
class PruningStart:
    """When a trial may first be pruned.

    Attributes:
        startup_trials: complete trials the study needs before the pruner prunes at all.
        first_fold: the first fold after which a trial may be pruned (0-based).
    """

    startup_trials: int
    first_fold: int


def pruning_start(spec: StudySpec) -> PruningStart | None:
    """When the spec's pruner may first stop a trial; None when it has no pruner."""
    if spec.pruner.name == "none":
        return None
    options = pruner_options(spec)
    return PruningStart(
        startup_trials=int(options.get("n_startup_trials", 0)),
        first_fold=int(options.get("n_warmup_steps", 0)),
    )
