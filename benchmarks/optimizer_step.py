"""Training-step time with ``DirectStep`` against torch's ``optimizer.step()``, in one run.

Each case fits the same ``TunedClassifier`` on the digits data twice per repeat: once as hpo
runs it (the optimizer stepped through ``hpo.direct_step.DirectStep``) and once with
``optimizer.step()`` (the baseline, everything else the same). It prints the CPU time per
training step of each (process time, median over ``--repeats``, one torch thread), the
speed-up, and whether both fits ended with the same training loss (they must: the update is
bit for bit the same).

    python benchmarks/optimizer_step.py
    python benchmarks/optimizer_step.py --repeats 11 --cases mlp-adam,cnn-adam
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from hpo.engine.data import load_dataset
from hpo.engine.models import CNN, MLP
from hpo.engine.nets import TunedClassifier

DIGITS_MLP = {
    "module": MLP,
    "module__hidden1": 128,
    "module__hidden2": 64,
    "module__dropout": 0.25,
    "module__activation": "leaky_relu",
    "optimizer__weight_decay": 1e-5,
    "batch_size": 64,
    "max_epochs": 10,
}
DIGITS_CNN = {
    "module": CNN,
    "module__conv1": 16,
    "module__conv2": 32,
    "module__conv3": None,
    "module__kernel_size": 3,
    "module__hidden1": 64,
    "module__dropout": 0.25,
    "module__batch_norm": True,
    "batch_size": 32,
    "max_epochs": 3,
}
CASES: dict[str, dict[str, Any]] = {
    "mlp-adam": {**DIGITS_MLP, "optimizer": "adam"},
    "mlp-sgd": {**DIGITS_MLP, "optimizer": "sgd"},
    "mlp-adamax": {**DIGITS_MLP, "optimizer": "adamax"},
    "small-mlp-adam": {
        "module": MLP,
        "module__depth": 2,
        "module__units": 16,
        "optimizer": "adam",
        "batch_size": 20,
        "max_epochs": 10,
    },
    "cnn-adam": {**DIGITS_CNN, "optimizer": "adam"},
    "cnn-adamax": {**DIGITS_CNN, "optimizer": "adamax"},
}


class WithOptimizerStep(TunedClassifier):
    """hpo's net with the baseline update: torch's own ``optimizer.step()``."""

    def _direct_step(self) -> None:
        return None


def time_fit(
    net_class: type[TunedClassifier], case: dict[str, Any], X: Any, y: Any
) -> tuple[float, float]:
    """(CPU microseconds per training step, final training loss) of one fit."""
    options = dict(case)
    module = options.pop("module")
    net = net_class(module, module__input_shape=X.shape[1:], lr=1e-3, **options)
    started = time.process_time()
    net.fit(X, y)
    seconds = time.process_time() - started
    steps = options["max_epochs"] * -(-len(y) // options["batch_size"])
    return seconds / steps * 1e6, net.history[-1, "train_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("digits")
    X, y = data.X_train, data.y_train
    images = X.reshape(len(X), 1, 8, 8)
    print(f"# Training step, {len(y)} digits rows, 1 torch thread, torch {torch.__version__}")
    print("| case | optimizer.step() µs | DirectStep µs | speed-up | same loss |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name in args.cases.split(","):
        case = CASES[name]
        inputs = images if case["module"] is CNN else X
        times: dict[type, list[float]] = {WithOptimizerStep: [], TunedClassifier: []}
        losses: dict[type, float] = {}
        for _ in range(args.repeats):  # alternate, so drifts in machine speed hit both
            for net_class in times:
                micros, losses[net_class] = time_fit(net_class, case, inputs, y)
                times[net_class].append(micros)
        baseline = statistics.median(times[WithOptimizerStep])
        direct = statistics.median(times[TunedClassifier])
        same = losses[WithOptimizerStep] == losses[TunedClassifier]
        print(f"| {name} | {baseline:.0f} | {direct:.0f} | {baseline / direct:.2f}× | {same} |")


if __name__ == "__main__":
    main()
