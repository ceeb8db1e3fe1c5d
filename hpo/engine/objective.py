"""One trial: parameters → skorch net → K folds, scored as ``cross_val_score`` scores them.

Read top to bottom, a trial:

1. draws its parameters (``suggest``) and merges them with the spec's fixed ones
   (``StudySpec.configuration``);
2. builds its unfitted skorch net (``build_net``);
3. plans how its folds run (``hpo.engine.folds.plan.trial_fold_plan``: stacked, in fold
   processes, or one by one) and takes that plan's runner (``fold_runner``);
4. fits and scores the folds, reading their results in fold order; ``TrialReports`` tells the
   pruner what ``pruner.over`` asks for (``hpo.spec.pruning``): after each fold the running
   mean (each fold's own score for the Wilcoxon pruner), or after the fits' epochs the folds'
   mean held-out score, so the pruner can stop a bad trial before its last fold or its last
   epoch (optuna-integration's ``SkorchPruningCallback`` reports a validation split's score
   per epoch, but it breaks ``sklearn.clone``);
5. writes its fold scores, fit seconds, epochs and plan to its user_attrs, once per trial:
   each write is a round trip to the database.

Each fold fits a ``clone`` of the same net and is scored by the spec's scikit-learn scorer,
exactly what ``sklearn.model_selection.cross_val_score(net, X, y, cv=folds, scoring=...)``
computes, whichever strategy runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import torch
from sklearn.model_selection import BaseCrossValidator, KFold, StratifiedKFold

from hpo.engine.augment import augmented_rows
from hpo.engine.build import build_net
from hpo.engine.data import DataSplits
from hpo.engine.folds.fold import FoldResult
from hpo.engine.folds.plan import FoldOptions, first_prunable_fold, trial_fold_plan
from hpo.engine.folds.processes import FoldPool
from hpo.engine.folds.runners import fold_runner
from hpo.engine.measures import measure
from hpo.engine.reports import TrialReports
from hpo.spec.objectives import (
    constraint_values,
    extra_scorers,
    is_multi_objective,
    needed_measures,
    objective_names,
    scorers,
)
from hpo.spec.pruning import pruning_start
from hpo.spec.spaces import suggest
from hpo.spec.study_spec import StudySpec


def make_folds(spec: StudySpec) -> BaseCrossValidator:
    """``KFold`` (or ``StratifiedKFold``) with the spec's folds, shuffle and seed."""
    splitter = StratifiedKFold if spec.cv.stratified else KFold
    seed = spec.cv.seed if spec.cv.shuffle else None
    return splitter(n_splits=spec.cv.folds, shuffle=spec.cv.shuffle, random_state=seed)


def evaluate(
    trial: optuna.Trial,
    spec: StudySpec,
    data: DataSplits,
    device: str,
    should_stop: Callable[[], bool] | None = None,
    pool: FoldPool | None = None,
    options: FoldOptions | None = None,
    *,
    threads: int | None = None,
) -> float | list[float]:
    """Score one trial's configuration by K-fold cross-validation on the training split.

    Args:
        trial: the trial to suggest parameters for and report to.
        spec: the study.
        data: the worker's data.
        device: where the folds train.
        should_stop: polled after every batch; true ends the trial with ``WorkerStopped``.
        pool: the worker's fold processes, when its plan has them; without, the folds are
            stacked or fitted one by one.
        options: the worker's options for how folds run. Default: ``FoldOptions()``.
        threads: the worker's torch CPU threads, the most the trial uses. Default: the
            process's current count.

    Returns:
        The mean fold score (greater is better, as for every scikit-learn scorer); for a
        study of several objectives, each objective's value (``hpo.spec.objectives``). A
        spec's constraints go to Optuna as the trial's constraint values, and the measures
        and extra scores it names to the trial's user_attrs (``measures``, ``extra_scores``).

    Raises:
        optuna.TrialPruned: the pruner stopped the trial after a fold.
        FloatingPointError: a fold's training loss stopped being finite.
        WorkerStopped: ``should_stop()`` turned true.
    """
    configuration = spec.configuration(suggest(trial, spec.space))
    net = build_net(spec, data, configuration, device)
    splits = list(make_folds(spec).split(data.X_train, data.y_train))
    start = pruning_start(spec)
    plan = trial_fold_plan(
        spec,
        net,
        [augmented_rows(net.augment, len(train)) for train, _ in splits],
        tuple(data.input_shape),
        device=device,
        threads=torch.get_num_threads() if threads is None else threads,
        validation=data.X_valid is not None,
        options=options,
        fold_processes=pool is not None,
        # The pruner's start-up count is a storage read: asked only when it decides something.
        first_prunable=lambda: first_prunable_fold(start, lambda: _complete_trials(trial)),
    )
    trial.set_user_attr("device", device)
    trial.set_user_attr("folds_plan", plan.describe())
    trial.set_user_attr("threads", plan.threads)

    multi = is_multi_objective(spec)
    reports = TrialReports(
        trial,
        spec,
        len(splits),
        int(net.max_epochs),
        may_prune=start is not None and not multi,
        report=not multi,  # Optuna takes intermediate values of one objective only
    )
    runner = fold_runner(plan, pool)
    results = runner.fold_results(net, data, splits, scorers(spec), should_stop, reports.listener)
    folded = _score_folds(trial, results, reports)
    if not (multi or spec.constraints):
        return folded.mean
    return _objectives_and_constraints(trial, spec, net, data, folded)


def _objectives_and_constraints(
    trial: optuna.Trial, spec: StudySpec, net: Any, data: DataSplits, folded: _Folded
) -> float | list[float]:
    """The trial's objective values (one, or a list) once its folds are read; on the way, its
    constraint values go to Optuna and the measures and extra scores to its user_attrs."""
    values = {
        spec.scoring: folded.mean,
        **dict(zip(extra_scorers(spec), folded.extra_means, strict=True)),
        **measure(needed_measures(spec), net, data.X_train, folded.seconds),
    }
    if needed_measures(spec):
        trial.set_user_attr("measures", {n: values[n] for n in needed_measures(spec)})
    if extra_scorers(spec):
        trial.set_user_attr("extra_scores", {n: values[n] for n in extra_scorers(spec)})
    for name, value in constraint_values(spec, values).items():
        trial.set_constraint(name, value)
    if not is_multi_objective(spec):
        return folded.mean
    return [values[name] for name in objective_names(spec)]


def _complete_trials(trial: optuna.Trial) -> int:
    states = (optuna.trial.TrialState.COMPLETE,)
    return len(trial.study.get_trials(deepcopy=False, states=states))


@dataclass(frozen=True)
class _Folded:
    """A trial's folds, read: the mean score, each extra scorer's mean, each fold's seconds."""

    mean: float
    extra_means: tuple[float, ...]
    seconds: list[float]


def _score_folds(
    trial: optuna.Trial, results: Generator[FoldResult, None, None], reports: TrialReports
) -> _Folded:
    """Read the folds' results in fold order, each told to ``reports`` (which reports it and
    prunes when the pruner says so, as it does at the epochs the runner reports), and keep
    the fold lists in the trial's user_attrs (also when it is pruned or fails part-way; a
    trial pruned at an epoch keeps where in ``pruned_at``)."""
    scores: list[float] = []
    extra: list[tuple[float, ...]] = []
    seconds: list[float] = []
    epochs: list[int] = []
    # closing: a pruned or failed trial stops the folds still running at once.
    with closing(results):
        try:
            for fold, result in enumerate(results):
                scores.append(result.score)
                extra.append(result.extra_scores)
                seconds.append(round(result.seconds, 4))
                epochs.append(result.epochs)
                reports.fold_finished(fold, result.score)
        finally:
            if scores:
                trial.set_user_attr("fold_scores", scores)
                trial.set_user_attr("fit_seconds", seconds)
                trial.set_user_attr("epochs", epochs)
            if reports.pruned_at is not None:
                trial.set_user_attr("pruned_at", reports.pruned_at)
    trial.set_user_attr("score_std", float(np.std(scores)))
    extra_means = tuple(float(np.mean(column)) for column in zip(*extra, strict=True))
    return _Folded(float(np.mean(scores)), extra_means, seconds)
