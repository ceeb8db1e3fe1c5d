"""The spec's sampler: its names, the ``auto`` rule and the Optuna sampler built from it, in
one place.

``sampler.name`` is one of ``SAMPLERS`` (each an Optuna sampler; ``sampler.options`` go to its
constructor and are checked against its signature), ``grid`` (every point queued at
registration, so its workers only pop them) or ``auto``, which ``resolved_sampler`` turns into
one of them by a fixed rule, offline (Optuna's own AutoSampler is on OptunaHub and would be
fetched at run time):

- a space with a categorical parameter, or a budget over ``GP_MAX_TRIALS``: ``tpe``;
- else (numbers only, a small budget): ``gp``, Optuna's Gaussian-process sampler, which makes
  the most of few trials on a smooth numeric space, but fits a GP to every trial so far before
  each new one (cubic in their number).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna

if TYPE_CHECKING:
    from hpo.spec.study_spec import StudySpec

#: The samplers a spec may name, with the Optuna class each one builds.
SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "random": optuna.samplers.RandomSampler,
    "tpe": optuna.samplers.TPESampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler,
    "nsgaii": optuna.samplers.NSGAIISampler,
}
#: Every ``sampler.name``: the Optuna samplers, ``grid`` and ``auto``.
SAMPLER_NAMES = ("grid", "auto", *SAMPLERS)
#: ``auto`` picks ``gp`` up to this many trials (and a numeric space), else ``tpe``.
GP_MAX_TRIALS = 100
#: Samplers that draw the same sequence whatever the worker, by trial number: every worker
#: gets the spec's seed, so N workers share one low-discrepancy sequence (a QMC sampler
#: seeded per worker would lay N sequences over one another).
SHARED_SEED = frozenset({"qmc"})


def resolved_sampler(spec: StudySpec) -> str:
    """The sampler a spec runs: its ``sampler.name``, or for ``auto`` the rule's pick."""
    name = str(spec.sampler.name)
    if name != "auto":
        return name
    from hpo.spec.spaces import CategoricalParam

    categorical = any(isinstance(p, CategoricalParam) for p in spec.space.values())
    if categorical or has_conditions(spec) or spec.n_trials > GP_MAX_TRIALS:
        return "tpe"
    return "gp"


def has_conditions(spec: StudySpec) -> bool:
    """Whether some parameter of the spec exists only under a condition (``when``)."""
    return any(param.when for param in spec.space.values())


def sampler_options(spec: StudySpec, name: str) -> dict[str, object]:
    """The options the spec's sampler is built with: the spec's own, and for TPE on a space
    with conditions ``multivariate`` and ``group`` (unless the spec says otherwise), which
    make Optuna's TPE model the parameters that trials share jointly and each conditional
    group apart, instead of each parameter alone."""
    options = dict(spec.sampler.options)
    if name == "tpe" and has_conditions(spec):
        options = {"multivariate": True, "group": True, **options}
    return options


def make_sampler(spec: StudySpec, worker_index: int | None = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded for this worker.

    Worker 0 uses the spec's seed as it is, so a one-worker study is reproducible; other
    workers derive their own seed from it, so N workers do not replay the same start-up
    samples (optuna#4714). ``worker_index=None`` (a worker started on its own) draws one.
    A grid's points are all enqueued at registration, so its workers only ever pop them
    (a random sampler stands by). QMC keeps the spec's seed on every worker (``SHARED_SEED``).
    """
    name = resolved_sampler(spec)
    seed = spec.sampler.seed
    if seed is not None and worker_index != 0 and name not in SHARED_SEED:
        salt = str(worker_index) if worker_index is not None else os.urandom(8).hex()
        seed = int.from_bytes(hashlib.sha256(f"{seed}:{salt}".encode()).digest()[:4], "big")
    sampler = SAMPLERS.get(name, optuna.samplers.RandomSampler)
    return sampler(seed=seed, **sampler_options(spec, name))


def object_only_options(cls: Callable[..., object]) -> frozenset[str]:
    """The constructor arguments of an Optuna sampler or pruner that take a Python object (a
    callable, another sampler, a mutation, trials), which a YAML spec cannot give."""
    import inspect
    import re

    parameters = inspect.signature(cls).parameters
    objects = re.compile(r"Callable|Base[A-Z]\w*|FrozenTrial")
    return frozenset(
        name for name, p in parameters.items() if objects.search(str(p.annotation or ""))
    )
