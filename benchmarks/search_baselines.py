"""Search against what users write instead: hpo's pruning over folds, epochs or both, a
user's own Optuna objective with skorch's pruning callback, and optuna-integration's
``OptunaSearchCV``, on the digits MLP and CNN of the catalogue (issue 28's comparison).

For each model and seed, one search per method with the same trial budget, one after another,
each in one process of its own (hpo: ``hpo.run`` with one worker process; the baselines: a
fresh ``spawn`` process, as a user's script starts fresh):

- **hpo over folds / epochs / both**: the catalogue spec (``studies/digits-mlp-tpe.yaml``,
  ``studies/digits-cnn-tpe.yaml``, read when the benchmark runs) with ``sampler.seed`` set to
  the seed and its median pruner's ``over`` set to ``folds`` (the default), ``epochs`` or
  ``both``, on a fresh SQLite file in a temporary folder, as ``hpo run STUDY --workers 1`` runs
  it; then ``hpo.refit`` for the test error. Ratios are to hpo over folds.
- **optuna + SkorchPruningCallback**: the objective of Optuna's skorch example, which is what
  the anchors do: ``create_study(sampler=TPESampler(seed=seed), pruner=MedianPruner(...))``
  with the median pruner hpo uses over epochs (5 start-up trials, no judgement in the first
  quarter of the epochs), the spec's space written out with ``trial.suggest_*``, a plain skorch
  ``NeuralNetClassifier`` around the same module class (``hpo.engine.models.MLP`` / ``CNN``,
  imported) fitted once per trial on the training rows with the digits' fixed validation split
  as ``train_split``, ``optuna_integration.SkorchPruningCallback(trial, "valid_acc")``, and the
  last epoch's ``valid_acc`` returned. Its score is a validation accuracy, not a CV mean: a
  trial costs one fit instead of K, and "reaching the target" means on 350 validation digits.
- **OptunaSearchCV**: ``optuna_integration.OptunaSearchCV`` around the same skorch net, the same
  space as ``optuna.distributions`` (the MLP's ``hidden2 <= hidden1`` bound cannot be written
  there, so ``hidden2`` ranges over 16..256), the same folds, ``scoring="accuracy"``, a TPE
  sampler seeded as above, its defaults otherwise (no pruning: ``enable_pruning`` needs a
  ``partial_fit`` search over ``max_iter`` epochs, which is not what users run).
- **optuna + Wilcoxon** (``--methods optuna_wilcoxon``; the earlier table's, not run by
  default): Optuna's documented ``WilcoxonPruner`` usage, a plain skorch fit per fold in a
  shuffled fold order, ``trial.report(score, fold)``, the mean so far returned when pruned.

The baselines train as hpo's spec says: the spec's fixed keys (epochs, activation, kernel size),
early stopping on the digits' fixed validation split (``predefined_split``, ``EarlyStopping`` with
the spec's patience and ``load_best=True``, as hpo does), torch seeded with the seed once per
search. The best configuration of each is refitted the way ``hpo refit`` refits: on the whole
training split, early stopping on the validation split, scored once on the test split.

Figures per search: seconds from its start (process start-up included, for every method) until
the first trial whose mean CV accuracy reaches the model's target ended, read from the trials'
timestamps; the best mean CV accuracy; the whole search's seconds; trials pruned; the test error
of the refitted best configuration. The tables give each baseline's ratio to hpo, per seed and
as medians.

    python benchmarks/search_baselines.py --quick        # a smoke run: 1 seed, 3 trials, 5 epochs
    python benchmarks/search_baselines.py --seeds 3 --json /tmp/s.json
    python benchmarks/search_baselines.py --from-json /tmp/s.json --targets mlp=0.96 cnn=0.98

The second is docs/benchmarks.md's run of issue 28 (the specs as they are: their epochs, 40
MLP and 30 CNN trials per search); the third prints its tables again at other targets.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import uuid
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
STUDIES = {
    "mlp": ROOT / "studies/digits-mlp-tpe.yaml",
    "cnn": ROOT / "studies/digits-cnn-tpe.yaml",
}
#: Mean CV accuracies that the searches reach within the specs' budgets on this data, but
#: only with their better configurations (0.95 and 0.97, the earlier table's, were reached by
#: the first or second trial: the time to them was the search's start-up).
TARGETS = {"mlp": 0.975, "cnn": 0.985}


def spec_budget(model: str) -> int:
    """Trials per search by default: the catalogue spec's own budget (40 and 30), well past
    TPE's and the median pruner's start-up trials (10 and 5)."""
    return int(yaml.safe_load(STUDIES[model].read_text())["budget"]["trials"])


METHODS = (
    "hpo",
    "hpo_epochs",
    "hpo_both",
    "optuna_skorch_pruning",
    "optuna_search_cv",
    "optuna_wilcoxon",
)
#: What runs without --methods: issue 28's comparison (the Wilcoxon baseline is the earlier
#: table's, and slow: a plain skorch fit per fold and no pruning at 3 folds).
DEFAULT_METHODS = METHODS[:-1]
#: The methods that need optuna-integration (the ``[bench]`` extra).
NEEDS_INTEGRATION = ("optuna_search_cv", "optuna_skorch_pruning")
#: hpo's variants: ``pruner.over`` of the catalogue's median pruner.
HPO_OVER = {"hpo": "folds", "hpo_epochs": "epochs", "hpo_both": "both"}
LABELS = {
    "hpo": "hpo, median pruner over folds",
    "hpo_epochs": "hpo, median pruner over epochs",
    "hpo_both": "hpo, median pruner over both",
    "optuna_skorch_pruning": "optuna TPE + SkorchPruningCallback (validation split)",
    "optuna_search_cv": "OptunaSearchCV",
    "optuna_wilcoxon": "optuna TPE + WilcoxonPruner",
}

#: The spaces the baselines write by hand, as the specs had them when this was written; a spec
#: whose space differs stops the benchmark rather than compare different searches.
SPEC_SPACES: dict[str, dict[str, Any]] = {
    "mlp": {
        "module__hidden1": {"type": "int", "low": 32, "high": 256, "log": True},
        "module__hidden2": {"type": "int", "low": 16, "high": "module__hidden1", "log": True},
        "module__dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "lr": {"type": "float", "low": 5.0e-4, "high": 5.0e-2, "log": True},
        "optimizer": {"type": "categorical", "choices": ["adam", "adamax", "sgd"]},
        "optimizer__weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-3, "log": True},
        "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
    },
    "cnn": {
        "module__conv1": {"type": "categorical", "choices": [8, 16, 32]},
        "module__conv2": {"type": "categorical", "choices": [16, 32]},
        "module__hidden1": {"type": "int", "low": 32, "high": 128, "log": True},
        "module__dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "module__batch_norm": {"type": "categorical", "choices": [True, False]},
        "lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
        "optimizer": {"type": "categorical", "choices": ["adam", "adamax"]},
        "batch_size": {"type": "categorical", "choices": [32, 64]},
    },
}


@dataclass
class TrialRecord:
    """What the tables need of one trial: when it ended, its value, whether it was pruned."""

    start: datetime | None
    complete: datetime | None
    value: float | None
    pruned: bool


@dataclass
class Outcome:
    """One search of one method, model and seed."""

    method: str
    model: str
    seed: int
    started: datetime
    wall_s: float
    trials: list[TrialRecord] = field(default_factory=list)
    best_params: dict[str, Any] = field(default_factory=dict)
    test_error: float = math.nan
    refit_s: float = math.nan
    error: str | None = None

    @property
    def full(self) -> list[TrialRecord]:
        return [t for t in self.trials if not t.pruned and t.value is not None]

    @property
    def best_cv(self) -> float:
        return max((t.value for t in self.full if t.value is not None), default=math.nan)

    @property
    def pruned(self) -> int:
        return sum(t.pruned for t in self.trials)

    def time_to(self, target: float) -> float:
        """Seconds from the search's start until the first full trial reaching ``target``
        ended; ``inf`` if none did."""
        hits = [
            t.complete
            for t in self.full
            if t.complete is not None and t.value is not None and t.value >= target
        ]
        return (min(hits) - self.started).total_seconds() if hits else math.inf


# ------------------------------------------------------------------------------------ specs


def read_spec(model: str, trials: int, seed: int, epochs: int | None) -> dict[str, Any]:
    """The catalogue spec as it is on disk now, renamed, reseeded, with ``trials`` as budget
    (and ``epochs`` as ``max_epochs`` when given)."""
    spec = yaml.safe_load(STUDIES[model].read_text())
    if spec["space"] != SPEC_SPACES[model]:
        raise SystemExit(
            f"{STUDIES[model].relative_to(ROOT)}'s space is no longer the one this benchmark's "
            f"baselines write by hand; update SPEC_SPACES[{model!r}] and the suggest_* code to "
            f"match it, but got {spec['space']!r}."
        )
    # The baselines train on the training rows as they are and refit on the training split,
    # so hpo does too here: the comparison is of the search, not of augmentation.
    spec.pop("augment", None)
    spec.pop("refit", None)
    spec["name"] = f"bench-{model}-{seed}-{uuid.uuid4().hex[:6]}"
    spec["sampler"] = {**spec.get("sampler", {}), "seed": seed}
    spec["budget"] = {"trials": trials}
    if epochs is not None:
        spec["fixed"] = {**spec["fixed"], "max_epochs": epochs}
    return spec


# -------------------------------------------------------------------------------------- hpo


def run_hpo(
    method: str, model: str, spec: dict[str, Any], seed: int, folder: Path, verbose: bool
) -> Outcome:
    """``hpo run`` with one worker on a fresh SQLite file, then ``hpo refit``; the spec's
    pruner steps over what ``method`` says (``HPO_OVER``)."""
    from optuna.trial import TrialState

    import hpo

    spec = {
        **spec,
        "name": f"{spec['name']}-{HPO_OVER[method]}",
        "pruner": {**spec["pruner"], "over": HPO_OVER[method]},
    }
    url = f"sqlite:///{folder / (spec['name'] + '.db')}"
    started = datetime.now()
    clock = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stderr(sys.stderr if verbose else log):
        try:
            study = hpo.run(spec, workers=1, storage=url, results_dir=folder / "results")
        except Exception:
            print(log.getvalue(), file=sys.stderr)
            raise
    wall = time.perf_counter() - clock
    outcome = Outcome(method, model, seed, started, wall)
    outcome.trials = [
        TrialRecord(t.datetime_start, t.datetime_complete, t.value, t.state == TrialState.PRUNED)
        for t in study.trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    outcome.best_params = dict(study.best_params)
    clock = time.perf_counter()
    with contextlib.redirect_stderr(sys.stderr if verbose else io.StringIO()):
        result = hpo.refit(
            spec["name"],
            storage=url,
            artifacts=folder / "artifacts",
            results_dir=folder / "results",
            device="cpu",
        )
    outcome.refit_s = time.perf_counter() - clock
    outcome.test_error = 1.0 - result.metrics["accuracy"]
    return outcome


# -------------------------------------------------------------------------------- baselines
# What a user writes: a plain skorch net and Optuna, nothing of hpo's but its module classes
# and its digits split (so all three methods see the same rows).


def _optimizer(name: str) -> Any:
    import torch

    return {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax, "sgd": torch.optim.SGD}[name]


def named_optimizer_classifier() -> Any:
    """skorch's ``NeuralNetClassifier`` whose ``optimizer`` may also be a name (``adam``,
    ``adamax``, ``sgd``), resolved when the optimizer is built: what a user adds so that
    ``OptunaSearchCV`` can search the optimizer as a categorical of names."""
    from skorch import NeuralNetClassifier

    class NamedOptimizerClassifier(NeuralNetClassifier):  # type: ignore[misc]
        def initialize_optimizer(self, *args: Any, **kwargs: Any) -> Any:
            named = self.optimizer
            if not isinstance(named, str):
                return super().initialize_optimizer(*args, **kwargs)
            self.optimizer = _optimizer(named)
            try:
                return super().initialize_optimizer(*args, **kwargs)
            finally:
                self.optimizer = named

    return NamedOptimizerClassifier


def make_net(
    model: str,
    fixed: dict[str, Any],
    params: dict[str, Any],
    validation: bool = False,
    callbacks: list[Any] | None = None,
) -> Any:
    """A plain skorch ``NeuralNetClassifier`` of one configuration, early stopping on the
    digits' fixed validation split as the spec's ``early_stopping_patience`` says, and its
    ``lr_schedule: cosine`` as skorch's ``LRScheduler``; ``validation``: that split is its
    ``train_split`` even without early stopping (skorch then scores ``valid_acc`` every
    epoch); ``callbacks`` are added to the others."""
    from skorch.callbacks import EarlyStopping, LRScheduler
    from skorch.dataset import Dataset
    from skorch.helper import predefined_split
    from torch import nn
    from torch.optim.lr_scheduler import CosineAnnealingLR

    from hpo.engine.data import load_digits
    from hpo.engine.models import CNN, MLP

    data = load_digits()
    fixed = dict(fixed)
    patience = fixed.pop("early_stopping_patience", None)
    schedule = fixed.pop("lr_schedule", "none")
    params = dict(params)
    if isinstance(params.get("optimizer"), str):
        params["optimizer"] = _optimizer(params["optimizer"])
    extra: dict[str, Any] = {"callbacks": list(callbacks or [])}
    if patience is not None or validation:
        extra["train_split"] = predefined_split(Dataset(data.X_valid, data.y_valid))
    if patience is not None:
        extra["callbacks"].append(EarlyStopping(patience=patience, load_best=True))
    if schedule == "cosine":  # the spec's lr_schedule, as a skorch user writes it
        epochs = fixed.get("max_epochs", 10)
        extra["callbacks"].append(LRScheduler(CosineAnnealingLR, T_max=epochs))
    return named_optimizer_classifier()(
        MLP if model == "mlp" else CNN,
        criterion=nn.CrossEntropyLoss,  # the modules return logits; skorch's default is NLL
        module__input_shape=(1, 8, 8),
        module__n_outputs=10,
        verbose=0,
        **extra,
        **fixed,
        **params,
    )


def suggest(trial: Any, model: str) -> dict[str, Any]:
    """The spec's space, written out with ``trial.suggest_*`` as a user would."""
    if model == "mlp":
        hidden1 = trial.suggest_int("module__hidden1", 32, 256, log=True)
        return {
            "module__hidden1": hidden1,
            "module__hidden2": trial.suggest_int("module__hidden2", 16, hidden1, log=True),
            "module__dropout": trial.suggest_float("module__dropout", 0.0, 0.5),
            "lr": trial.suggest_float("lr", 5e-4, 5e-2, log=True),
            "optimizer": trial.suggest_categorical("optimizer", ["adam", "adamax", "sgd"]),
            "optimizer__weight_decay": trial.suggest_float(
                "optimizer__weight_decay", 1e-6, 1e-3, log=True
            ),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        }
    return {
        "module__conv1": trial.suggest_categorical("module__conv1", [8, 16, 32]),
        "module__conv2": trial.suggest_categorical("module__conv2", [16, 32]),
        "module__hidden1": trial.suggest_int("module__hidden1", 32, 128, log=True),
        "module__dropout": trial.suggest_float("module__dropout", 0.0, 0.5),
        "module__batch_norm": trial.suggest_categorical("module__batch_norm", [True, False]),
        "lr": trial.suggest_float("lr", 1e-3, 3e-2, log=True),
        "optimizer": trial.suggest_categorical("optimizer", ["adam", "adamax"]),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64]),
    }


def distributions(model: str) -> dict[str, Any]:
    """The spec's space as ``optuna.distributions`` for ``OptunaSearchCV``: no bound can depend
    on another parameter there, so the MLP's ``hidden2`` ranges over 16..256 whatever
    ``hidden1`` is. Optimizers are names (``NamedOptimizerClassifier``): Optuna 5's TPE
    writes the parameters as JSON after its start-up trials, which a torch class is not."""
    from optuna.distributions import CategoricalDistribution as Categorical
    from optuna.distributions import FloatDistribution as Float
    from optuna.distributions import IntDistribution as Int

    if model == "mlp":
        return {
            "module__hidden1": Int(32, 256, log=True),
            "module__hidden2": Int(16, 256, log=True),
            "module__dropout": Float(0.0, 0.5),
            "lr": Float(5e-4, 5e-2, log=True),
            "optimizer": Categorical(["adam", "adamax", "sgd"]),
            "optimizer__weight_decay": Float(1e-6, 1e-3, log=True),
            "batch_size": Categorical([32, 64, 128]),
        }
    return {
        "module__conv1": Categorical([8, 16, 32]),
        "module__conv2": Categorical([16, 32]),
        "module__hidden1": Int(32, 128, log=True),
        "module__dropout": Float(0.0, 0.5),
        "module__batch_norm": Categorical([True, False]),
        "lr": Float(1e-3, 3e-2, log=True),
        "optimizer": Categorical(["adam", "adamax"]),
        "batch_size": Categorical([32, 64]),
    }


def run_baseline(method: str, model: str, spec: dict[str, Any], seed: int) -> Outcome:
    """One baseline search in this (fresh) process, then its refit and test error."""
    import optuna
    import torch
    from optuna.trial import TrialState
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import KFold

    from hpo.engine.data import load_digits

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")  # OptunaSearchCV's experimental and class-choice warnings
    started = datetime.now()
    clock = time.perf_counter()
    data = load_digits()
    X, y = data.X_train, data.y_train
    cv = spec["cv"]
    folds = KFold(cv["folds"], shuffle=cv.get("shuffle", False), random_state=cv.get("seed"))
    fixed = spec["fixed"]
    torch.manual_seed(seed)
    sampler = optuna.samplers.TPESampler(seed=seed)
    best_params: dict[str, Any]

    if method == "optuna_skorch_pruning":
        from optuna_integration import SkorchPruningCallback

        # The anchors' practice (Optuna's skorch example): one fit per trial on the training
        # rows, scored every epoch on a validation split, the callback reporting valid_acc
        # at each epoch to the pruner, which is hpo's over epochs written out: Optuna's median
        # with 5 start-up trials, judging from the second quarter of the epochs on.
        epochs = int(fixed.get("max_epochs", 10))
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=epochs // 4)

        def objective(trial: optuna.Trial) -> float:
            pruning = SkorchPruningCallback(trial, "valid_acc")
            net = make_net(model, fixed, suggest(trial, model), True, [pruning])
            net.fit(X, y)
            return float(net.history[-1, "valid_acc"])

        study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
        study.optimize(objective, n_trials=spec["budget"]["trials"])
        best_params = study.best_params
    elif method == "optuna_wilcoxon":
        splits = list(folds.split(X, y))
        order = np.random.default_rng(seed)

        def objective(trial: optuna.Trial) -> float:
            net = make_net(model, fixed, suggest(trial, model))
            scores = []
            # the pruner's documentation: shuffle the evaluation order, report each
            # instance's own score under its id, return the mean so far when pruned
            for fold in order.permutation(len(splits)):
                train, test = splits[fold]
                net.fit(X[train], y[train])
                scores.append(accuracy_score(y[test], net.predict(X[test])))
                trial.report(scores[-1], int(fold))
                if len(scores) < len(splits) and trial.should_prune():
                    trial.set_user_attr("pruned", True)
                    return float(np.mean(scores))
            return float(np.mean(scores))

        study = optuna.create_study(
            direction="maximize", sampler=sampler, pruner=optuna.pruners.WilcoxonPruner()
        )
        study.optimize(objective, n_trials=spec["budget"]["trials"])
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        full = [t for t in complete if not t.user_attrs.get("pruned")]
        best_params = max(full, key=lambda t: t.value or -math.inf).params
    else:
        from optuna_integration import OptunaSearchCV

        study = optuna.create_study(direction="maximize", sampler=sampler)
        search = OptunaSearchCV(
            make_net(model, fixed, {}),
            distributions(model),
            cv=folds,
            n_trials=spec["budget"]["trials"],
            scoring="accuracy",
            study=study,
            refit=False,
            error_score="raise",
        )
        search.fit(X, y)
        best_params = dict(search.best_params_)
    wall = time.perf_counter() - clock

    outcome = Outcome(method, model, seed, started, wall)
    outcome.trials = [
        TrialRecord(
            t.datetime_start,
            t.datetime_complete,
            t.value,
            t.state == TrialState.PRUNED or bool(t.user_attrs.get("pruned")),
        )
        for t in study.trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    outcome.best_params = {
        key: getattr(value, "__name__", value).lower() if isinstance(value, type) else value
        for key, value in best_params.items()
    }
    # the refit hpo refit does: whole training split, early stopping on validation, test once
    clock = time.perf_counter()
    torch.manual_seed(seed)
    net = make_net(model, fixed, best_params).fit(X, y)
    outcome.test_error = 1.0 - accuracy_score(data.y_test, net.predict(data.X_test))
    outcome.refit_s = time.perf_counter() - clock
    return outcome


def run_fresh(method: str, model: str, spec: dict[str, Any], seed: int) -> Outcome:
    """``run_baseline`` in a spawned process, as a user's script starts fresh; its start
    (imports, torch's first calls) counts in its time, as an hpo worker's does."""
    started = datetime.now()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        outcome = pool.submit(run_baseline, method, model, spec, seed).result()
    outcome.wall_s += (outcome.started - started).total_seconds()
    outcome.started = started
    return outcome


# ----------------------------------------------------------------------------------- tables


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def _seconds(value: float) -> str:
    return "not reached" if math.isinf(value) else f"{value:.1f}"


def reach_ratio(baseline: Outcome, base: Outcome, target: float) -> tuple[float, str]:
    """The baseline's time to target over hpo's, and its bound: a search that never reached the
    target counts its whole time, so the ratio is a lower bound (">") when only the baseline
    missed it, an upper bound ("<") when only hpo did, and undefined when both did."""
    mine, theirs = baseline.time_to(target), base.time_to(target)
    if math.isinf(mine) and math.isinf(theirs):
        return math.nan, ""
    if math.isinf(mine):
        return baseline.wall_s / theirs, ">"
    if math.isinf(theirs):
        return mine / base.wall_s, "<"
    return mine / theirs, ""


def _bounded(ratios: list[tuple[float, str]]) -> str:
    known = [(r, b) for r, b in ratios if not math.isnan(r)]
    if not known:
        return "–"
    middle = statistics.median(r for r, _ in known)
    marks = {b for _, b in known if b}
    note = f" (bounds: {', '.join(sorted(marks))})" if marks else ""
    return f"{middle:.2f}×{note}"


def print_model(model: str, outcomes: list[Outcome], target: float, trials: int) -> None:
    by = {(o.method, o.seed): o for o in outcomes if o.model == model}
    seeds = sorted({seed for _, seed in by})
    if not seeds:
        return
    print(
        f"\n### digits {model.upper()}: {trials} trials per search, target mean CV accuracy "
        f"{target}, seeds {', '.join(map(str, seeds))}\n"
    )
    print(
        "| seed | method | to target s (ratio to hpo) | best CV | search s (ratio to hpo) | "
        "trials pruned | test error |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for seed in seeds:
        base = by.get(("hpo", seed))
        for method in METHODS:
            o = by.get((method, seed))
            if o is None:
                continue
            if o.error:
                print(f"| {seed} | {LABELS[method]} | failed: {o.error.splitlines()[-1]} |")
                continue
            ratio_reach = ratio_wall = ""
            if base is not None and not base.error and method != "hpo":
                ratio, bound = reach_ratio(o, base, target)
                ratio_reach = " (–)" if math.isnan(ratio) else f" ({bound}{ratio:.2f}×)"
                ratio_wall = f" ({o.wall_s / base.wall_s:.2f}×)"
            print(
                f"| {seed} | {LABELS[method]} | {_seconds(o.time_to(target))}{ratio_reach} | "
                f"{o.best_cv:.4f} | {o.wall_s:.1f}{ratio_wall} | {o.pruned} / {len(o.trials)} "
                f"| {o.test_error:.4f} |"
            )
    print(
        "\n| method | reached target | median to target s | median ratio to hpo | mean best CV | "
        "median search s | median ratio to hpo | trials pruned | mean test error |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method in METHODS:
        if not any(ran == method for ran, _ in by):
            continue  # not run (--methods, or OptunaSearchCV without optuna-integration)
        runs = [by[(method, s)] for s in seeds if (method, s) in by and not by[(method, s)].error]
        if not runs:
            print(f"| {LABELS[method]} | failed |")
            continue
        reach = [o.time_to(target) for o in runs]
        pairs = [
            (o, by[("hpo", o.seed)])
            for o in runs
            if ("hpo", o.seed) in by and not by[("hpo", o.seed)].error
        ]
        if method == "hpo" or not pairs:
            ratio_reach = ratio_wall = "–"
        else:
            ratio_reach = _bounded([reach_ratio(o, b, target) for o, b in pairs])
            ratio_wall = f"{_median([o.wall_s / b.wall_s for o, b in pairs]):.2f}×"
        print(
            f"| {LABELS[method]} | {sum(not math.isinf(r) for r in reach)} / {len(runs)} | "
            f"{_seconds(statistics.median(reach))} | {ratio_reach} | "
            f"{np.mean([o.best_cv for o in runs]):.4f} | "
            f"{statistics.median(o.wall_s for o in runs):.1f} | {ratio_wall} | "
            f"{sum(o.pruned for o in runs)} / {sum(len(o.trials) for o in runs)} | "
            f"{np.mean([o.test_error for o in runs]):.4f} |"
        )


def read_outcomes(path: Path) -> list[Outcome]:
    """Outcomes back from a ``--json`` file, to tabulate them at other targets."""
    outcomes = []
    for row in json.loads(path.read_text()):
        row = {k: v for k, v in row.items() if k in Outcome.__dataclass_fields__}
        row["started"] = datetime.fromisoformat(row["started"])
        row["trials"] = [
            TrialRecord(
                *(datetime.fromisoformat(t[k]) if t[k] else None for k in ("start", "complete")),
                t["value"],
                t["pruned"],
            )
            for t in row["trials"]
        ]
        outcomes.append(Outcome(**row))
    return outcomes


# ------------------------------------------------------------------------------------- main


def machine() -> str:
    import optuna
    import sklearn
    import skorch
    import torch

    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import optuna_integration

        integration = f"optuna-integration {optuna_integration.__version__}"
    except ImportError:
        integration = "optuna-integration not installed"
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), skorch {skorch.__version__}, "
        f"scikit-learn {sklearn.__version__}, optuna {optuna.__version__}, {integration}"
    )


def integration_installed() -> bool:
    """Whether optuna-integration (``OptunaSearchCV``; the ``[bench]`` extra) is importable."""
    import importlib.util

    return importlib.util.find_spec("optuna_integration") is not None


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(STUDIES), default=["mlp", "cnn"])
    parser.add_argument("--seeds", type=int, default=3, help="TPE seeds 0..N-1 (default 3)")
    parser.add_argument(
        "--trials", type=int, help="trials per search (default: the spec's budget, 40 and 30)"
    )
    parser.add_argument("--epochs", type=int, help="max_epochs instead of the spec's")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        help="default: all but optuna_wilcoxon (the optuna-integration ones only where it is "
        "installed)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1 seed, 3 trials, 5 epochs"
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        default=[f"{m}={t}" for m, t in TARGETS.items()],
        help="mean CV accuracy to reach per model, as model=value (default: mlp=0.975 cnn=0.985)",
    )
    parser.add_argument("--json", type=Path, help="write every search's figures here")
    parser.add_argument(
        "--from-json", type=Path, help="only print the tables of an earlier run's --json file"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show hpo's own lines")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.trials, args.epochs = 1, args.trials or 3, args.epochs or 5
    skipped = ""
    if not integration_installed():
        if args.methods and set(NEEDS_INTEGRATION) & set(args.methods):
            parser.error(
                "--methods optuna_search_cv and optuna_skorch_pruning need optuna-integration: "
                "pip install -e '.[bench]'"
            )
        skipped = (
            "OptunaSearchCV and SkorchPruningCallback skipped: optuna-integration is not "
            "installed (pip install -e '.[bench]' adds it)"
        )
    methods = args.methods or [
        m for m in DEFAULT_METHODS if m not in NEEDS_INTEGRATION or not skipped
    ]
    targets = {**TARGETS, **{m: float(t) for m, t in (x.split("=") for x in args.targets)}}
    budgets = {model: args.trials or spec_budget(model) for model in args.models}
    if args.from_json:
        outcomes = read_outcomes(args.from_json)
        for model in args.models:
            budget = max((len(o.trials) for o in outcomes if o.model == model), default=0)
            print_model(model, outcomes, targets[model], budget)
        return

    print(f"# Search against what users write instead, on {machine()}")
    print(f"started {datetime.now():%Y-%m-%d %H:%M}, load average {load()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    if skipped:
        print(skipped)
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="hpo-search-baselines-") as tmp:
        for model in args.models:
            for seed in range(args.seeds):
                spec = read_spec(model, budgets[model], seed, args.epochs)
                for method in methods:
                    print(f"  {model} seed {seed}: {method} ...", file=sys.stderr, flush=True)
                    try:
                        if method in HPO_OVER:
                            outcome = run_hpo(method, model, spec, seed, Path(tmp), args.verbose)
                        else:
                            outcome = run_fresh(method, model, spec, seed)
                    except Exception:
                        error = traceback.format_exc()
                        print(error, file=sys.stderr)
                        outcome = Outcome(method, model, seed, datetime.now(), math.nan)
                        outcome.error = error
                    outcomes.append(outcome)
                    print(
                        f"  {model} seed {seed}: {method}: {outcome.wall_s:.1f} s, best CV "
                        f"{outcome.best_cv:.4f}, to {targets[model]}: "
                        f"{_seconds(outcome.time_to(targets[model]))} s, pruned "
                        f"{outcome.pruned}, test error {outcome.test_error:.4f}; load {load()}",
                        file=sys.stderr,
                        flush=True,
                    )
    print(f"ended {datetime.now():%Y-%m-%d %H:%M}, load average {load()}")
    for model in args.models:
        print_model(model, outcomes, targets[model], budgets[model])
    if args.json:
        rows = [
            {**asdict(o), "best_cv": o.best_cv, "to_target_s": o.time_to(targets[o.model])}
            for o in outcomes
        ]
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    failed = [o for o in outcomes if o.error]
    if failed:
        names = ", ".join(f"{LABELS[o.method]} ({o.model}, seed {o.seed})" for o in failed)
        raise SystemExit(f"{len(failed)} search(es) failed, tracebacks above: {names}")


if __name__ == "__main__":
    main()
