"""Trial speed: hpo against the usual skorch + cross_val_score loop, on the same study.

The usual loop is what users write today, run in one process of its own (as a user's
script runs): an Optuna objective that builds a skorch ``NeuralNetClassifier`` /
``NeuralNetRegressor`` with skorch's defaults (``train_split=ValidSplit(5)``, ``DataLoader``,
the default callbacks; ``verbose=0`` so it prints nothing) around the same module class,
criterion and optimizer as hpo, and scores it with ``sklearn.model_selection.cross_val_score``
on the same ``KFold``. hpo runs the same spec
the way ``hpo run --workers N`` does: real ``hpo worker`` processes on a temporary SQLite file,
torch threads per worker from ``hpo.service.cpus.threads_per_worker``. Both run one fixed list of
configurations (drawn once from the spec's space and enqueued in both studies), so both score
the same parameters on the same folds with the same seeds.

Timings come from the trials' own start and completion times, so process start-up (imports,
loading the data) is left out of both. The headline figures are the steady state: each
process's first trial, which pays torch's lazy imports and first calls (about 1.5 s per
process here), is left out, since a real study amortizes it over many trials; the same ratios
over every trial of the (short) benchmark study are printed beside them. Each case prints, as
medians over ``--repeats``: seconds per trial of the usual loop and of one hpo worker (and of
one worker told ``--threads 1``, to show what the thread count does to small nets), trials
per minute of the usual loop and of ``--workers`` hpo workers, the mean CV score each way,
the peak memory of each process (PSS, sampled; a worker's fold processes included), and the
share of the CPU that other processes used meanwhile (``--quiet`` waits for a quiet machine
before each run). An hpo worker trains a trial's folds as one stacked model
(``hpo.engine.folds.stacked_fit``), on two threads for a net that gains from them (one worker
on two cores) or one (``--threads 1``, and each of two workers).

The ``user-*`` cases name a user's own module (``benchmarks.user_nets``, imported from the
repository root, as ``model: package.module:Class``): both ways build the same class, hpo's
workers start with ``--allow-module benchmarks``, and hpo stacks its folds through
``torch.func`` (``hpo.engine.folds.vmapped``).

The MNIST-shaped cases (``mnist-mlp``: the MNIST reports' 784-256-128-10 MLP;
``mnist-mlp-wide``: 784-512-256-10; ``mnist-cnn``; random rows of MNIST's shape, 3 folds of 2
epochs) are also set against their FLOP floor (``benchmarks/flop_floor.py``: the trial's
products and convolutions timed alone at its net's shapes), plain skorch with
``train_split=None`` (the same rows train as in hpo) and, for the MLPs, scikit-learn's
``MLPClassifier``, each on the threads of hpo's one worker and measured in the same run.

``--pruning`` adds the search that users care about: the time until a trial's mean CV score
reaches each ``--target``, for the usual loop (no pruning), hpo without pruning (a control that
shows what speed alone gives) and hpo with the median pruner across folds, over ``--seeds`` TPE
seeds; hpo runs ``--pruning-workers`` workers (2, as ``hpo run --workers 2`` on two cores).

    python benchmarks/trial_speed.py                               # digits MLP, CNN, regression
    python benchmarks/trial_speed.py --cases digits-mlp --repeats 5
    python benchmarks/trial_speed.py --cases user-mlp,user-cnn      # a user's own modules
    python benchmarks/trial_speed.py --cases none --pruning --seeds 5
    python benchmarks/trial_speed.py --cases mnist-mlp,mnist-mlp-wide,mnist-cnn --repeats 2
    python benchmarks/trial_speed.py --cases mnist-mlp,mnist-cnn --device cpu,cuda
    python benchmarks/trial_speed.py --cases mnist-mlp,mnist-cnn --device cuda --mixed-precision
    python benchmarks/trial_speed.py --quick    # a smoke run: digits-mlp, mnist-mlp and the
                                                # pruning search, 1 repeat / seed, 3-4 trials of
                                                # 1 epoch
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sklearn
import skorch
import threadpoolctl
import torch
from flop_floor import measure_floor, peak_matmul_gflops  # benchmarks/flop_floor.py, beside it
from optuna.trial import TrialState
from sklearn.model_selection import cross_val_score
from skorch import NeuralNetClassifier, NeuralNetRegressor
from torch import nn

from hpo.engine.data import DataSplits, load_dataset
from hpo.engine.nets import OPTIMIZERS
from hpo.engine.objective import make_folds
from hpo.engine.user_code import data_arguments, model_class
from hpo.service.cpus import threads_per_worker
from hpo.service.runner import worker_command, worker_env
from hpo.service.storage import open_storage
from hpo.service.study import register_study
from hpo.spec.references import code_roots, import_reference
from hpo.spec.spaces import suggest
from hpo.spec.study_spec import StudySpec, parse_spec

#: The seed of the usual loop's torch generator and of the configurations drawn per case.
SEED = 0
MNIST_SHAPE_ROWS = 20_000
#: Seconds between samples of a process's memory.
MEMORY_POLL_SECONDS = 0.5

DIGITS_MLP_SPACE = {  # studies/digits-mlp-tpe.yaml
    "module__hidden1": {"type": "int", "low": 32, "high": 256, "log": True},
    "module__hidden2": {"type": "int", "low": 16, "high": "module__hidden1", "log": True},
    "module__dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "lr": {"type": "float", "low": 5.0e-4, "high": 5.0e-2, "log": True},
    "optimizer": {"type": "categorical", "choices": ["adam", "adamax", "sgd"]},
    "optimizer__weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-3, "log": True},
    "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
}
DIGITS_CNN_SPACE = {  # studies/digits-cnn-tpe.yaml
    "module__conv1": {"type": "categorical", "choices": [8, 16, 32]},
    "module__conv2": {"type": "categorical", "choices": [16, 32]},
    "module__hidden1": {"type": "int", "low": 32, "high": 128, "log": True},
    "module__dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "module__batch_norm": {"type": "categorical", "choices": [True, False]},
    "lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
    "optimizer": {"type": "categorical", "choices": ["adam", "adamax"]},
    "batch_size": {"type": "categorical", "choices": [32, 64]},
}
#: The digits spaces for ``benchmarks/user_nets.py``'s modules, which have no dropout or
#: batch norm (a module with them is not stacked: ``hpo.engine.folds.vmapped``).
USER_MLP_SPACE = {
    key: value for key, value in DIGITS_MLP_SPACE.items() if key != "module__dropout"
}
USER_CNN_SPACE = {
    **{
        key: value
        for key, value in DIGITS_CNN_SPACE.items()
        if key not in ("module__dropout", "module__batch_norm", "module__hidden1")
    },
    "module__hidden": DIGITS_CNN_SPACE["module__hidden1"],
}
#: The prefix of the user modules' package, which hpo's workers are told to trust.
USER_PACKAGE = "benchmarks"
REGRESSION_SPACE = {  # studies/regression-random.yaml, without the optimizers that diverge
    "batch_size": {"type": "categorical", "choices": [10, 20, 50]},
    "module__units": {"type": "int", "low": 5, "high": 50, "log": True},
    "module__depth": {"type": "int", "low": 1, "high": 4},
    "module__activation": {"type": "categorical", "choices": ["sigmoid", "relu", "tanh"]},
    "lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
    "optimizer__weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
}


@dataclass(frozen=True)
class Case:
    """One study to time both ways: a spec (without name and budget) and how many trials."""

    name: str
    spec: dict[str, Any]
    trials: int
    #: Also time it against its FLOP floor, plain skorch and ``MLPClassifier`` (``floor_row``).
    floor: bool = False


def _case_spec(
    model: str,
    dataset: dict[str, Any],
    scoring: str,
    fixed: dict[str, Any],
    space: dict[str, Any],
    folds: int = 5,
) -> dict[str, Any]:
    return {
        "model": model,
        "dataset": dataset,
        "sampler": {"name": "random", "seed": SEED},
        "scoring": scoring,
        "cv": {"folds": folds, "shuffle": True, "seed": SEED},
        "fixed": fixed,
        "space": space,
    }


def make_cases(data_dir: Path) -> dict[str, Case]:
    """Every case by name; the MNIST-shaped ones read ``data_dir/mnist_shape.npz``."""
    mnist = {"name": "npz", "path": str(data_dir / "mnist_shape.npz"), "test_size": 0.1}
    mnist_fixed = {"max_epochs": 2, "batch_size": 128, "optimizer": "adam"}
    return {
        "digits-mlp": Case(
            "digits-mlp",
            _case_spec(
                "mlp",
                {"name": "digits"},
                "accuracy",
                {"max_epochs": 20, "module__activation": "leaky_relu"},
                DIGITS_MLP_SPACE,
            ),
            trials=8,
        ),
        "digits-cnn": Case(
            "digits-cnn",
            _case_spec(
                "cnn",
                {"name": "digits"},
                "accuracy",
                {"max_epochs": 20, "module__kernel_size": 3, "module__conv3": None},
                DIGITS_CNN_SPACE,
            ),
            trials=6,
        ),
        "regression": Case(
            "regression",
            _case_spec(
                "regressor",
                {"name": "synthetic_regression"},
                "neg_mean_squared_error",
                {"max_epochs": 60, "optimizer": "adam"},
                REGRESSION_SPACE,
            ),
            trials=8,
        ),
        "user-mlp": Case(
            "user-mlp",
            _case_spec(
                f"{USER_PACKAGE}.user_nets:MLP",
                {"name": "digits"},
                "accuracy",
                {"max_epochs": 20},
                USER_MLP_SPACE,
            ),
            trials=8,
        ),
        "user-cnn": Case(
            "user-cnn",
            _case_spec(
                f"{USER_PACKAGE}.user_nets:CNN",
                {"name": "digits"},
                "accuracy",
                {"max_epochs": 20},
                USER_CNN_SPACE,
            ),
            trials=6,
        ),
        # the MNIST reports' MLP, 784-256-128-10, and one twice as wide
        **{
            name: Case(
                name,
                _case_spec(
                    "mlp",
                    mnist,
                    "accuracy",
                    {**mnist_fixed, "module__hidden1": hidden1, "module__hidden2": hidden1 // 2},
                    {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}},
                    folds=3,
                ),
                trials=4,
                floor=True,
            )
            for name, hidden1 in (("mnist-mlp", 256), ("mnist-mlp-wide", 512))
        },
        "mnist-cnn": Case(
            "mnist-cnn",
            _case_spec(
                "cnn",
                mnist,
                "accuracy",
                {**mnist_fixed, "module__conv3": None},
                {
                    "module__conv1": {"type": "categorical", "choices": [16, 32]},
                    "module__conv2": {"type": "categorical", "choices": [32, 64]},
                    "lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
                },
                folds=3,
            ),
            trials=4,
            floor=True,
        ),
    }


def write_mnist_shape(path: Path, rows: int = MNIST_SHAPE_ROWS) -> None:
    """Random images of MNIST's shape (1x28x28) with 10 learnable classes, for speed only."""
    rng = np.random.default_rng(SEED)
    X = rng.random((rows, 1, 28, 28), dtype=np.float32)
    projection = rng.standard_normal((28 * 28, 10)).astype(np.float32)
    y = (X.reshape(rows, -1) @ projection).argmax(axis=1).astype(np.int64)
    np.savez(path, X=X, y=y)


def draw_configs(spec: StudySpec, n: int) -> list[dict[str, Any]]:
    """``n`` configurations drawn at random from the spec's space, the same every run."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=SEED))
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(suggest(trial, spec.space))
        study.tell(trial, 0.0)
    return configs


# ----------------------------------------------------------------------------- the usual loop


def usual_net(
    spec: StudySpec, data: DataSplits, params: dict[str, Any], device: str, way: str = "usual"
) -> Any:
    """The skorch net a user builds for ``params``: skorch's defaults (``way`` "usual"), or
    with ``train_split=None`` ("plain": every row of a fold trains, as in hpo)."""
    regression = data.task == "regression"
    net_class = NeuralNetRegressor if regression else NeuralNetClassifier
    routed = {k: v for k, v in params.items() if k.startswith(("module__", "optimizer__"))}
    module = model_class(spec.model)  # hpo's built-in, or the user's own (user-* cases)
    given = {
        "input_shape": tuple(data.input_shape),
        "n_outputs": 1 if regression else data.n_classes,
    }
    return net_class(
        module,
        criterion=nn.MSELoss if regression else nn.CrossEntropyLoss,
        optimizer=OPTIMIZERS[params.get("optimizer", "adam")],
        lr=params["lr"],
        batch_size=params.get("batch_size", 128),
        max_epochs=params["max_epochs"],
        device=device,
        verbose=0,
        **({"train_split": None} if way == "plain" else {}),
        **{f"module__{name}": given[name] for name in data_arguments(module)},
        **routed,
    )


def mlp_classifier(params: dict[str, Any]) -> Any:
    """scikit-learn's ``MLPClassifier`` with the same layers, optimizer and epochs as an hpo
    ``mlp`` (Adam, no weight decay, every epoch run), or None where it has no equal."""
    from sklearn.neural_network import MLPClassifier

    hidden = [
        params[f"module__hidden{i}"] for i in range(1, 7) if params.get(f"module__hidden{i}")
    ]
    activations = {"relu": "relu", "tanh": "tanh", "sigmoid": "logistic"}
    activation = params.get("module__activation", "relu")
    if (
        params.get("optimizer", "adam") != "adam"
        or activation not in activations
        or params.get("module__dropout", 0)
        or params.get("module__batch_norm")
        or params.get("optimizer__weight_decay")
        or not hidden
    ):
        return None
    return MLPClassifier(
        tuple(hidden),
        activation=activations[activation],
        solver="adam",
        alpha=0.0,
        batch_size=params.get("batch_size", 128),
        learning_rate_init=params["lr"],
        max_iter=params["max_epochs"],
        tol=0.0,
        n_iter_no_change=params["max_epochs"] + 1,
        random_state=SEED,
    )


def usual_objective(
    trial: optuna.Trial, spec: StudySpec, data: DataSplits, device: str, way: str = "usual"
) -> float:
    """What a user writes today, scored by ``cross_val_score``: a skorch net (``usual_net``)
    or, with ``way`` "sklearn", scikit-learn's ``MLPClassifier`` on the flattened rows."""
    params = spec.configuration(suggest(trial, spec.space))
    X = data.X_train
    if way == "sklearn":
        net = mlp_classifier(params)
        X = X.reshape(len(X), -1)
    else:
        net = usual_net(spec, data, params, device, way)
    torch.manual_seed(SEED)
    scores = cross_val_score(net, X, data.y_train, cv=make_folds(spec), scoring=spec.scoring)
    trial.set_user_attr("fold_scores", scores.tolist())
    return float(scores.mean())


@dataclass
class Run:
    """One way of running one study: its trials' span and scores, and its peak memory."""

    trials: list[optuna.trial.FrozenTrial]
    wall: float
    #: Per process: peak PSS in MiB, with the processes it started (hpo's fold processes).
    peak_mib: list[float]
    threads: int
    #: Share of the machine's CPU time that other processes used meanwhile (0 to 1).
    others_cpu: float
    #: Trial number -> the process that ran it (absent: the only process).
    process_of: dict[int, int] = field(default_factory=dict)

    @property
    def span(self) -> float:
        """Seconds from the first trial's start to the last trial's end."""
        ended = [t for t in self.trials if t.datetime_complete is not None]
        if not ended:
            return math.nan
        first = min(t.datetime_start for t in ended if t.datetime_start is not None)
        return (max(t.datetime_complete for t in ended) - first).total_seconds()

    @property
    def steady_rate(self) -> float:
        """Trials per second once every process has finished its first trial (the one that
        pays torch's lazy imports and first calls): per process, the trials after its first
        over the time from its first trial's end to its last trial's end, summed."""
        ends: dict[int, list[datetime]] = {}
        for t in self.trials:
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.datetime_complete:
                ends.setdefault(self.process_of.get(t.number, 0), []).append(t.datetime_complete)
        rate = 0.0
        for times in ends.values():
            times.sort()
            seconds = (times[-1] - times[0]).total_seconds()
            if len(times) < 2 or seconds <= 0:
                return math.nan
            rate += (len(times) - 1) / seconds
        return rate if ends else math.nan

    @property
    def plans(self) -> str:
        """How hpo's trials ran their folds (``folds_plan``), each plan once."""
        plans = dict.fromkeys(str(t.user_attrs.get("folds_plan")) for t in self.trials)
        return "; ".join(plans)

    @property
    def done(self) -> int:
        return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in self.trials)

    @property
    def scores(self) -> dict[int, float]:
        """Mean CV score by trial number, which is the configuration's place in the enqueued
        list (workers pop enqueued trials in order)."""
        return {
            t.number: t.value
            for t in self.trials
            if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
        }


def run_usual(
    spec_dict: dict[str, Any],
    configs: list[dict[str, Any]],
    device: str,
    target: float | None = None,
    way: str = "usual",
    threads: int | None = None,
) -> Run:
    """The usual loop in a fresh process of its own, as a user's script runs (hpo's workers
    start fresh too, so both pay their one-time warm-up once per study); with ``target``, it
    stops at the first trial that reaches it. Without ``configs`` the sampler draws them.
    ``way`` is what it fits (``usual_objective``), on ``threads`` threads (default: torch's)."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    machine_before = cpu_seconds()
    process = context.Process(
        target=_usual_process, args=(spec_dict, configs, device, target, way, threads, sender)
    )
    process.start()
    sender.close()
    peak = 0.0
    while not receiver.poll(MEMORY_POLL_SECONDS):
        peak = max(peak, tree_pss_mib(process.pid))
    outcome = receiver.recv()
    process.join()
    if isinstance(outcome, str):
        raise RuntimeError(f"the usual loop failed:\n{outcome}")
    trials, wall, threads, cpu = outcome
    others = _others_share(machine_before, cpu_seconds(), cpu)
    return Run(trials, wall, [peak], threads, others)


def _usual_process(
    spec_dict: dict[str, Any],
    configs: list[dict[str, Any]],
    device: str,
    target: float | None,
    way: str,
    threads: int | None,
    sender: Any,
) -> None:
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if threads:
            torch.set_num_threads(threads)
            # MLPClassifier's products run in numpy's BLAS, whose threads torch does not set
            threadpoolctl.threadpool_limits(threads)
        spec = parse_spec(spec_dict)
        data = load_dataset(spec.dataset.name, **spec.dataset.options)
        study = optuna.create_study(direction=spec.direction, sampler=_sampler(spec))
        for config in configs:
            study.enqueue_trial(config)
        callbacks = [] if target is None else [_stop_at(target)]
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's and Optuna's about diverged trials
            study.optimize(
                lambda trial: usual_objective(trial, spec, data, device, way),
                n_trials=len(configs) or spec.n_trials,
                callbacks=callbacks,
            )
        wall = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        sender.send((study.trials, wall, torch.get_num_threads(), cpu))
    except BaseException:
        sender.send(traceback.format_exc())
        raise


def tree_pss_mib(pid: int) -> float:
    """Proportional set size of process ``pid`` and of every process under it, in MiB (Linux;
    0 elsewhere). PSS shares a page among the processes that map it, so torch's libraries,
    mapped by a worker and by each of its fold processes, are counted once in the sum."""
    total_kib, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
                    break
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except OSError:  # gone meanwhile, or no /proc
            continue
    return total_kib / 1024


def cpu_seconds() -> tuple[float, float]:
    """The machine's (busy, total) CPU seconds since boot, from /proc/stat (Linux)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return math.nan, math.nan
    ticks = [int(x) for x in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks[:8]) - idle) / hz, sum(ticks[:8]) / hz


def _others_share(before: tuple[float, float], after: tuple[float, float], mine: float) -> float:
    busy, total = after[0] - before[0], after[1] - before[1]
    return max(0.0, busy - mine) / total if total > 0 else math.nan


def wait_for_quiet(max_busy: float | None, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until other processes use under ``max_busy`` of the CPU;
    return the share they used over the last 2 s (NaN, at once, without ``max_busy``)."""
    if max_busy is None:
        return math.nan
    started = time.monotonic()
    while True:
        before = cpu_seconds()
        time.sleep(2.0)
        busy = _others_share(before, cpu_seconds(), 0.0)
        waited = time.monotonic() - started
        if not busy > max_busy or waited > max_wait:
            if waited > 5:
                print(
                    f"  waited {waited:.0f} s for a quieter machine; others now use {busy:.0%}",
                    file=sys.stderr,
                )
            return busy


def _sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    if spec.sampler.name == "tpe":
        return optuna.samplers.TPESampler(seed=spec.sampler.seed, **spec.sampler.options)
    return optuna.samplers.RandomSampler(seed=spec.sampler.seed)


def _stop_at(target: float) -> Any:
    def stop(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            if trial.value >= target:
                study.stop()

    return stop


# ---------------------------------------------------------------------------------- hpo's way


def run_hpo(
    spec_dict: dict[str, Any],
    workers: int,
    device: str,
    folder: Path,
    target: float | None = None,
    threads: int | None = None,
) -> Run:
    """Register ``spec_dict`` on a fresh SQLite file and run ``workers`` ``hpo worker``
    processes on it, started as ``hpo run --workers N`` starts them (hpo/service/runner.py), with
    ``threads`` torch threads each (default: ``threads_per_worker(workers)``, as hpo run); with
    ``target``, stop them (SIGTERM) once a trial reaches it."""
    name = spec_dict["name"]
    url = f"sqlite:///{folder / name}.db"
    storage = open_storage(url)
    spec = parse_spec(spec_dict)
    register_study(spec, storage)
    threads = threads or threads_per_worker(workers)
    # A user's module: trusted, and imported from where it is imported here (as hpo run does).
    trust = ["--allow-module", USER_PACKAGE] if spec.custom_code else []
    command = worker_command(name, threads, "--device", device, *trust)
    for key, reference in spec.custom_code:
        import_reference(reference, key)
    env = worker_env(threads, code_roots(spec.custom_code), storage_url=url)
    logs = [folder / f"{name}-{i}.log" for i in range(workers)]
    machine_before = cpu_seconds()
    started = time.perf_counter()
    processes = []
    for i, log in enumerate(logs):
        with open(log, "w") as out:
            command_i = [*command, "--index", str(i)]
            processes.append(subprocess.Popen(command_i, env=env, stdout=out, stderr=out))
    peaks, mine = _wait_for(processes, url, name, target)
    wall = time.perf_counter() - started
    others = _others_share(machine_before, cpu_seconds(), mine)
    codes = [process.returncode for process in processes]
    if any(code not in (0, -signal.SIGTERM) for code in codes):
        tail = "\n".join(line for log in logs for line in log.read_text().splitlines()[-10:])
        raise RuntimeError(f"hpo workers exited with {codes}:\n{tail}")
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    # which worker ran which trial, from the line each worker logs per trial
    worker_of = {
        int(match[1]): i
        for i, log in enumerate(logs)
        for match in re.finditer(r"trial (\d+) (?:COMPLETE|PRUNED) in", log.read_text())
    }
    return Run(trials, wall, peaks, threads, others, worker_of)


def _wait_for(
    processes: list[subprocess.Popen[bytes]], url: str, name: str, target: float | None
) -> tuple[list[float], float]:
    """Wait for every worker; return each one's peak PSS in MiB (sampled, its fold processes
    included) and their CPU seconds (from wait4: each worker's own and its fold processes')."""
    peaks = {process.pid: 0.0 for process in processes}
    ended: set[int] = set()
    cpu = 0.0
    study = optuna.load_study(study_name=name, storage=open_storage(url)) if target else None
    stopping = False
    sampled = 0.0
    while len(ended) < len(processes):
        if time.monotonic() - sampled > MEMORY_POLL_SECONDS:
            sampled = time.monotonic()
            for pid in peaks.keys() - ended:
                peaks[pid] = max(peaks[pid], tree_pss_mib(pid))
        for process in processes:
            if process.pid in ended:
                continue
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                ended.add(pid)
                cpu += usage.ru_utime + usage.ru_stime
        if study is not None and not stopping and _reached(study, target):
            stopping = True
            for process in processes:
                if process.pid not in ended:
                    process.send_signal(signal.SIGTERM)
        time.sleep(0.05 if study is None else 0.25)
    return [peaks[process.pid] for process in processes], cpu


def _reached(study: optuna.Study, target: float | None) -> bool:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return target is not None and any(t.value is not None and t.value >= target for t in trials)


# ------------------------------------------------------------------------------- measurements


@dataclass
class CaseResult:
    """Every repeat of one case on one device."""

    case: str
    device: str
    trials: int
    workers: int
    repeats: list[dict[str, Any]] = field(default_factory=list)

    def median(self, key: str) -> float:
        values = [r[key] for r in self.repeats if not math.isnan(r[key])]
        return statistics.median(values) if values else math.nan


def measure_case(
    case: Case, device: str, workers: int, repeats: int, folder: Path, quiet: Callable[[], Any]
) -> CaseResult:
    spec_dict = {**case.spec, "name": f"{case.name}-{device}", "budget": {"trials": case.trials}}
    spec = parse_spec(spec_dict)
    configs = draw_configs(spec, case.trials)
    spec_dict["enqueue"] = configs
    result = CaseResult(case.name, device, case.trials, workers)
    for repeat in range(repeats):
        runs: dict[str, Run] = {}
        # hpo-1t1: one worker told --threads 1, to show what the thread count does
        order = ["usual", "hpo-1", "hpo-1t1", f"hpo-{workers}"]
        if repeat % 2:
            order.reverse()  # so that a drift in the machine's load favours neither
        for way in order:
            if way in runs:
                continue
            quiet()
            if way == "usual":
                runs[way] = run_usual(spec_dict, configs, device)
            else:
                # "hpo-N": N workers; "hpo-1t1": one worker told --threads 1
                n = int(way.removeprefix("hpo-").removesuffix("t1"))
                threads = 1 if way.endswith("t1") else None
                unique = {**spec_dict, "name": f"{spec_dict['name']}-{way}-{uuid.uuid4().hex[:6]}"}
                runs[way] = run_hpo(unique, n, device, folder, threads=threads)
        usual, one, many = runs["usual"], runs["hpo-1"], runs[f"hpo-{workers}"]
        one_thread = runs["hpo-1t1"]
        # compare scores only over configurations that every way completed (one that
        # diverges fails in hpo and scores NaN in the usual loop)
        both = usual.scores.keys() & one.scores.keys() & many.scores.keys()
        row = {
            # steady state: each process's first trial (torch's lazy imports) left out
            "usual_s_per_trial": 1 / usual.steady_rate,
            "hpo_s_per_trial": 1 / one.steady_rate,
            "hpo_1thread_s_per_trial": 1 / one_thread.steady_rate,
            "usual_trials_per_min": 60 * usual.steady_rate,
            "hpo_workers_trials_per_min": 60 * many.steady_rate,
            # the whole study: first trial start to last trial end, every trial counted
            "usual_s_per_trial_whole": usual.span / case.trials,
            "hpo_s_per_trial_whole": one.span / case.trials,
            "hpo_workers_trials_per_min_whole": 60 * case.trials / many.span,
            "usual_cv": _mean(usual.scores[k] for k in both),
            "hpo_cv": _mean(one.scores[k] for k in both),
            "hpo_workers_cv": _mean(many.scores[k] for k in both),
            "compared_configs": len(both),
            "usual_peak_mib": usual.peak_mib[0],
            "hpo_peak_mib": max(one.peak_mib),
            "hpo_workers_peak_mib": max(many.peak_mib),
            "hpo_startup_s": one.wall - one.span,
            "usual_threads": usual.threads,
            "hpo_threads": one.threads,
            "hpo_workers_threads": many.threads,
            "usual_done": usual.done,
            "hpo_done": one.done,
            "hpo_workers_done": many.done,
            "others_cpu": max(run.others_cpu for run in (usual, one, many)),
            "hpo_plans": one.plans,
        }
        if case.floor and device == "cpu":
            row.update(floor_row(spec_dict, configs, one, quiet))
        row["per_trial_ratio"] = row["usual_s_per_trial"] / row["hpo_s_per_trial"]
        row["per_trial_ratio_1thread"] = row["usual_s_per_trial"] / row["hpo_1thread_s_per_trial"]
        row["throughput_ratio"] = row["hpo_workers_trials_per_min"] / row["usual_trials_per_min"]
        row["per_trial_ratio_whole"] = (
            row["usual_s_per_trial_whole"] / row["hpo_s_per_trial_whole"]
        )
        row["throughput_ratio_whole"] = (
            row["hpo_workers_trials_per_min_whole"] * row["usual_s_per_trial_whole"] / 60
        )
        result.repeats.append(row)
        print(
            f"  {case.name} {device} repeat {repeat + 1}: usual {row['usual_s_per_trial']:.2f} "
            f"s/trial, hpo {row['hpo_s_per_trial']:.2f} s/trial "
            f"({row['per_trial_ratio']:.2f}x; {row['per_trial_ratio_1thread']:.2f}x on one "
            f"thread), {workers} workers "
            f"{row['hpo_workers_trials_per_min']:.1f} vs {row['usual_trials_per_min']:.1f} "
            f"trials/min ({row['throughput_ratio']:.2f}x); whole study "
            f"{row['per_trial_ratio_whole']:.2f}x / {row['throughput_ratio_whole']:.2f}x; CV "
            f"{row['usual_cv']:.4f} vs {row['hpo_cv']:.4f}; other processes used up to "
            f"{row['others_cpu']:.0%} of the CPU; hpo's folds: {row['hpo_plans']}",
            file=sys.stderr,
            flush=True,
        )
    return result


def floor_row(
    spec_dict: dict[str, Any], configs: list[dict[str, Any]], hpo: Run, quiet: Callable[[], Any]
) -> dict[str, Any]:
    """hpo's one worker (``hpo``) against the trial's FLOP floor, plain skorch
    (``train_split=None``, so the same rows train) and, for an MLP, ``MLPClassifier``: each
    on the worker's threads, in a process of its own; the floor measured here."""
    threads = hpo.threads
    spec = parse_spec(spec_dict)
    data = load_dataset(spec.dataset.name, **spec.dataset.options)
    folds = list(make_folds(spec).split(data.X_train))
    steady = configs[1:] or configs  # the trials that the steady-state rates count
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        quiet()
        floors = []
        for config in steady:
            params = spec.configuration(config)
            net = usual_net(spec, data, params, "cpu")
            floors.append(
                measure_floor(
                    net.module(**net.get_params_for("module")),
                    tuple(data.input_shape),
                    params.get("batch_size", 128),
                    [len(train) for train, _ in folds],
                    [len(held_out) for _, held_out in folds],
                    params["max_epochs"],
                )
            )
        peak = peak_matmul_gflops()
    finally:
        torch.set_num_threads(before)
    quiet()
    plain = run_usual(spec_dict, configs, "cpu", way="plain", threads=threads)
    sklearn_applies = all(mlp_classifier(spec.configuration(c)) for c in configs)
    if sklearn_applies:
        quiet()
        sklearn_run = run_usual(spec_dict, configs, "cpu", way="sklearn", threads=threads)
    flops = sum(f.flops for f in floors)
    floor_s = sum(f.seconds for f in floors) / len(floors)
    row = {
        "floor_threads": threads,
        "floor_gflop_per_trial": flops / len(floors) / 1e9,
        "floor_gflops": flops / sum(f.seconds for f in floors) / 1e9,
        "peak_matmul_gflops": peak,
        "floor_s_per_trial": floor_s,
        "hpo_over_floor": 1 / hpo.steady_rate / floor_s,
        "plain_s_per_trial": 1 / plain.steady_rate,
        "plain_cv": _mean(plain.scores.values()),
        "plain_over_hpo": hpo.steady_rate / plain.steady_rate,
        "sklearn_s_per_trial": 1 / sklearn_run.steady_rate if sklearn_applies else math.nan,
        "sklearn_cv": _mean(sklearn_run.scores.values()) if sklearn_applies else math.nan,
    }
    print(
        f"  floor on {threads} thread(s): {row['floor_gflop_per_trial']:.1f} GFLOP per trial "
        f"at {row['floor_gflops']:.0f} GFLOP/s = {floor_s:.2f} s; hpo "
        f"{row['hpo_over_floor']:.2f}x the floor; plain skorch {row['plain_s_per_trial']:.2f} "
        f"s/trial ({row['plain_over_hpo']:.2f}x hpo's); MLPClassifier "
        f"{row['sklearn_s_per_trial']:.2f} s/trial",
        file=sys.stderr,
        flush=True,
    )
    return row


def _mean(values: Any) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def print_cases(results: list[CaseResult]) -> None:
    if not results:
        return
    workers = results[0].workers
    print(
        f"\n## Per trial and throughput (medians of {len(results[0].repeats)} repeats)\n\n"
        "Steady state (each process's first trial left out); the last two columns count "
        "every trial of the study, first trials (torch's lazy imports, once per process) "
        "included.\n\n"
        f"| case | device | trials | usual s/trial | hpo 1 worker s/trial | per-trial ratio | "
        "hpo 1 worker --threads 1: s/trial (ratio) | "
        f"usual trials/min | hpo {workers} workers trials/min | throughput ratio | "
        f"usual CV | hpo CV | peak PSS usual / hpo 1w / hpo {workers}w, per worker (MiB) | "
        f"threads usual / hpo 1w / "
        f"hpo {workers}w | others' CPU | whole study: per-trial ratio | whole study: "
        "throughput ratio |"
    )
    print("| --- | --- |" + " ---: |" * 11 + " --- |" + " ---: |" * 3)
    for r in results:
        first = r.repeats[0]
        print(
            f"| {r.case} | {r.device} | {r.trials} | {r.median('usual_s_per_trial'):.2f} | "
            f"{r.median('hpo_s_per_trial'):.2f} | **{r.median('per_trial_ratio'):.2f}x** | "
            f"{r.median('hpo_1thread_s_per_trial'):.2f} "
            f"({r.median('per_trial_ratio_1thread'):.2f}x) | "
            f"{r.median('usual_trials_per_min'):.1f} | "
            f"{r.median('hpo_workers_trials_per_min'):.1f} | "
            f"**{r.median('throughput_ratio'):.2f}x** | {r.median('usual_cv'):.4f} | "
            f"{r.median('hpo_cv'):.4f} | {r.median('usual_peak_mib'):.0f} / "
            f"{r.median('hpo_peak_mib'):.0f} / {r.median('hpo_workers_peak_mib'):.0f} | "
            f"{first['usual_threads']} / "
            f"{first['hpo_threads']} / {first['hpo_workers_threads']} | "
            f"{r.median('others_cpu'):.0%} | {r.median('per_trial_ratio_whole'):.2f}x | "
            f"{r.median('throughput_ratio_whole'):.2f}x |"
        )


def print_floors(results: list[CaseResult]) -> None:
    """The cases timed against their FLOP floor (``floor_row``), medians over the repeats."""
    floored = [r for r in results if r.repeats and "floor_s_per_trial" in r.repeats[0]]
    if not floored:
        return
    print(
        "\n## Against the FLOP floor\n\n"
        "Seconds per trial (steady state), each on hpo's one worker's threads: the floor is the "
        "trial's products and convolutions (forward and backward, and one forward over each "
        "fold's held-out rows) timed alone at its net's shapes; plain skorch is "
        "`cross_val_score` of a `NeuralNetClassifier` with `train_split=None`, so that the "
        "same rows train; `MLPClassifier` is scikit-learn's, where a net has its equal.\n\n"
        "| case | threads | GFLOP per trial | layers' GFLOP/s (1024² product) | floor s | "
        "hpo s (× floor) | plain skorch s (× floor) | hpo vs plain skorch | "
        "MLPClassifier s (× floor) | CV hpo / plain skorch / MLPClassifier |"
    )
    print("| --- |" + " ---: |" * 9)
    for r in floored:
        floor = r.median("floor_s_per_trial")
        plain_s = r.median("plain_s_per_trial")
        sklearn_s = r.median("sklearn_s_per_trial")
        sklearn_cell = (
            "n/a" if math.isnan(sklearn_s) else f"{sklearn_s:.2f} ({sklearn_s / floor:.1f}×)"
        )
        print(
            f"| {r.case} | {r.repeats[0]['floor_threads']} | "
            f"{r.median('floor_gflop_per_trial'):.1f} | {r.median('floor_gflops'):.0f} "
            f"({r.median('peak_matmul_gflops'):.0f}) | {floor:.2f} | "
            f"{r.median('hpo_s_per_trial'):.2f} (**{r.median('hpo_over_floor'):.2f}×**) | "
            f"{plain_s:.2f} ({plain_s / floor:.1f}×) | "
            f"**{r.median('plain_over_hpo'):.2f}×** | {sklearn_cell} | "
            f"{r.median('hpo_cv'):.4f} / {r.median('plain_cv'):.4f} / "
            f"{r.median('sklearn_cv'):.4f} |"
        )


# ------------------------------------------------------------------------------ time to target


def pruning_spec(seed: int, pruner: str, trials: int, epochs: int = 20) -> dict[str, Any]:
    """The digits MLP study searched with TPE (seed ``seed``), 5 folds of ``epochs`` epochs."""
    spec = _case_spec(
        "mlp",
        {"name": "digits"},
        "accuracy",
        {"max_epochs": epochs, "module__activation": "leaky_relu"},
        DIGITS_MLP_SPACE,
    )
    spec.update(
        name=f"pruning-{pruner}-{seed}-{uuid.uuid4().hex[:6]}",
        sampler={"name": "tpe", "seed": seed},
        pruner={"name": pruner},
        budget={"trials": trials},
    )
    return spec


def time_to_target(run: Run, target: float) -> tuple[float, int]:
    """Seconds from the first trial's start until a trial reaching ``target`` ended, and how
    many trials had started by then; ``inf`` if none reached it."""
    started = [t.datetime_start for t in run.trials if t.datetime_start is not None]
    hits = [
        t.datetime_complete
        for t in run.trials
        if t.state == TrialState.COMPLETE and t.value is not None and t.value >= target
    ]
    if not started or not hits:
        return math.inf, len(run.trials)
    reached: datetime = min(hits)
    n = sum(s <= reached for s in started)
    return (reached - min(started)).total_seconds(), n


def measure_pruning(
    seeds: int,
    targets: list[float],
    trials: int,
    workers: int,
    device: str,
    folder: Path,
    quiet: Callable[[], Any],
    epochs: int = 20,
) -> list[dict[str, Any]]:
    """Per seed, run each arm until a trial reaches the highest target (or ``trials`` are
    done), then read off the time to every target."""
    rows = []
    for seed in range(seeds):
        runs: dict[str, Run] = {}
        for arm in ARMS:
            pruner = "median" if arm == "hpo_pruned" else "none"
            spec = pruning_spec(seed, pruner, trials, epochs)
            quiet()
            if arm == "usual":
                runs[arm] = run_usual(spec, [], device, max(targets))
            else:
                runs[arm] = run_hpo(spec, workers, device, folder, max(targets))
        for target in targets:
            row: dict[str, Any] = {"seed": seed, "target": target}
            for arm, run in runs.items():
                row[f"{arm}_s"], row[f"{arm}_trials"] = time_to_target(run, target)
                row[f"{arm}_pruned"] = sum(
                    t.state == TrialState.PRUNED for t in run.trials[: row[f"{arm}_trials"]]
                )
                row[f"{arm}_span"] = run.span
            # a usual loop that never reached the target gives a lower bound: its whole run
            usual = row["usual_s"] if math.isfinite(row["usual_s"]) else row["usual_span"]
            row["usual_reached"] = math.isfinite(row["usual_s"])
            row["ratio_no_pruning"] = usual / row["hpo_s"]
            row["ratio_pruned"] = usual / row["hpo_pruned_s"]
            row["others_cpu"] = max(run.others_cpu for run in runs.values())
            print(
                f"  pruning seed {seed}, target {target}: usual {_seconds(row, 'usual')}, hpo "
                f"{_seconds(row, 'hpo')}, hpo + median pruner {_seconds(row, 'hpo_pruned')} "
                f"({row['hpo_pruned_pruned']} pruned): {_ratio(row, 'ratio_pruned')}; other "
                f"processes used up to {row['others_cpu']:.0%} of the CPU",
                file=sys.stderr,
                flush=True,
            )
            rows.append(row)
    return rows


#: The three ways of searching in the pruning benchmark.
ARMS = ("usual", "hpo", "hpo_pruned")


def _seconds(row: dict[str, Any], arm: str) -> str:
    if math.isfinite(row[f"{arm}_s"]):
        return f"{row[f'{arm}_s']:.1f} s ({row[f'{arm}_trials']} trials)"
    return f"not reached in {row[f'{arm}_trials']} trials ({row[f'{arm}_span']:.0f} s)"


def _ratio(row: dict[str, Any], key: str) -> str:
    bound = "" if row["usual_reached"] else "> "
    return f"{bound}{row[key]:.2f}x"


def print_pruning(rows: list[dict[str, Any]], workers: int, epochs: int = 20) -> None:
    for target in sorted({r["target"] for r in rows}):
        chosen = [r for r in rows if r["target"] == target]
        print(
            f"\n## Time to a mean CV accuracy of {target} (digits MLP, TPE, 5 folds x {epochs} "
            f"epochs, hpo with {workers} worker{'s' if workers > 1 else ''})\n\n"
            "Seconds from the first trial's start; '>' where the usual loop never reached the "
            "target (its whole run is the bound).\n\n"
            "| seed | usual | hpo, no pruning | hpo, median pruner (pruned) | usual / hpo | "
            "usual / hpo + pruner | others' CPU |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in chosen:
            print(
                f"| {r['seed']} | {_seconds(r, 'usual')} | {_seconds(r, 'hpo')} | "
                f"{_seconds(r, 'hpo_pruned')} ({r['hpo_pruned_pruned']}) | "
                f"{_ratio(r, 'ratio_no_pruning')} | {_ratio(r, 'ratio_pruned')} | "
                f"{r['others_cpu']:.0%} |"
            )
        med = {
            key: statistics.median(r[key] for r in chosen)
            for key in ("ratio_no_pruning", "ratio_pruned", "others_cpu")
        }
        bound = "" if all(r["usual_reached"] for r in chosen) else " (some are lower bounds)"
        print(
            f"| median | | | | **{med['ratio_no_pruning']:.2f}x** | "
            f"**{med['ratio_pruned']:.2f}x**{bound} | {med['others_cpu']:.0%} |"
        )


# ------------------------------------------------------------------------------------- main


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cores} cores ({cpu}){gpu}, Python {platform.python_version()}, torch "
        f"{torch.__version__}, skorch {skorch.__version__}, scikit-learn {sklearn.__version__}, "
        f"optuna {optuna.__version__}"
    )


DEFAULTS: dict[str, Any] = {
    "cases": "digits-mlp,digits-cnn,regression",
    "mnist_rows": MNIST_SHAPE_ROWS,
    "repeats": 3,
    "seeds": 5,
    "target": "0.96,0.97",
    "max_trials": 40,
    "pruning_workers": 2,
}
#: ``--quick`` (with ``--pruning``): every way and arm once, at its smallest.
QUICK: dict[str, Any] = {
    "cases": "digits-mlp,mnist-mlp",
    "mnist_rows": 3000,
    "repeats": 1,
    "seeds": 1,
    "target": "0.3",  # one epoch reaches it: the stop at a target runs too
    "max_trials": 3,
    "pruning_workers": 1,
    "trials": 4,
    "epochs": 1,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        help="comma-separated: digits-mlp, digits-cnn, regression, user-mlp, user-cnn, "
        "mnist-mlp, mnist-mlp-wide, mnist-cnn; 'none' for none "
        "(default digits-mlp,digits-cnn,regression)",
    )
    parser.add_argument("--mnist-shape", action="store_true", help="add mnist-mlp, mnist-cnn")
    parser.add_argument(
        "--mnist-rows",
        type=int,
        help=f"rows of the MNIST-shaped data (default {MNIST_SHAPE_ROWS})",
    )
    parser.add_argument("--repeats", type=int, help="default 3")
    parser.add_argument("--trials", type=int, help="configurations per case (default: the case's)")
    parser.add_argument(
        "--epochs", type=int, help="max_epochs of every case and search (default: the case's)"
    )
    parser.add_argument("--workers", type=int, default=2, help="hpo workers for throughput")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cpu,cuda")
    parser.add_argument("--pruning", action="store_true", help="also time a search to --target")
    parser.add_argument("--seeds", type=int, help="TPE seeds of the pruning search (default 5)")
    parser.add_argument(
        "--target", help="mean CV accuracies to reach, comma-separated (default 0.96,0.97)"
    )
    parser.add_argument("--max-trials", type=int, help="per search, at most (default 40)")
    parser.add_argument(
        "--pruning-workers",
        type=int,
        help="hpo workers in the pruning search (default 2, as hpo run --workers 2 on two cores)",
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="hpo's nets run their forward pass in bfloat16 (mixed_precision: true; a GPU "
        "with bfloat16); the usual loop stays float32. The CV columns show what it costs",
    )
    parser.add_argument("--json", type=Path, help="write every repeat's numbers here")
    parser.add_argument(
        "--quiet",
        type=float,
        help="on a shared machine: before each run, wait until other processes use less "
        "than this share of the CPU (e.g. 0.1)",
    )
    parser.add_argument("--max-wait", type=float, default=600, help="seconds, per wait")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: the digits-mlp and mnist-mlp cases (unless --cases; 3,000 "
        "MNIST-shaped rows), 1 repeat of 4 trials, and "
        "the pruning search, 1 seed of at most 3 trials on 1 worker to a target of 0.3; 1 "
        "epoch; the options above still apply",
    )
    args = parser.parse_args()
    args.pruning = args.pruning or args.quick
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = [] if args.cases == "none" else args.cases.split(",")
    if args.mnist_shape:
        names += [n for n in ("mnist-mlp", "mnist-cnn") if n not in names]
    devices = args.device.split(",")
    print(f"# Trial speed on {machine()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: list[CaseResult] = []
    pruning: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hpo-trial-speed-") as tmp:
        folder = Path(tmp)
        cases = make_cases(folder)
        unknown = [n for n in names if n not in cases]
        if unknown:
            parser.error(f"unknown case(s) {unknown}; choose from {', '.join(cases)}")
        if any(n.startswith("mnist") for n in names):
            write_mnist_shape(folder / "mnist_shape.npz", args.mnist_rows)

        def quiet() -> float:
            return wait_for_quiet(args.quiet, args.max_wait)

        if args.trials:
            cases = {n: replace(c, trials=args.trials) for n, c in cases.items()}
        if args.epochs:
            cases = {
                n: replace(
                    c, spec={**c.spec, "fixed": {**c.spec["fixed"], "max_epochs": args.epochs}}
                )
                for n, c in cases.items()
            }
        if args.mixed_precision:
            print("hpo's nets: mixed_precision (bfloat16 forward pass)")
            cases = {
                n: replace(
                    c, spec={**c.spec, "fixed": {**c.spec["fixed"], "mixed_precision": True}}
                )
                for n, c in cases.items()
            }
        for device in devices:
            for name in names:
                results.append(
                    measure_case(cases[name], device, args.workers, args.repeats, folder, quiet)
                )
            if args.pruning:
                pruning += measure_pruning(
                    args.seeds,
                    [float(t) for t in args.target.split(",")],
                    args.max_trials,
                    args.pruning_workers,
                    device,
                    folder,
                    quiet,
                    args.epochs or 20,
                )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_cases(results)
    print_floors(results)
    print_pruning(pruning, args.pruning_workers, args.epochs or 20)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "cases": [r.__dict__ for r in results],
                    "pruning": pruning,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
