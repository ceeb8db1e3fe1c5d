"""Modules as a user writes them, for ``benchmarks/trial_speed.py``'s user-module cases.

Named in a spec as ``benchmarks.user_nets:MLP`` and ``benchmarks.user_nets:CNN`` (imported
from the repository root; workers are started with ``--allow-module benchmarks``). Plain torch
layers, no dropout or batch norm, so hpo stacks their folds (``hpo.engine.folds.vmapped``);
hpo passes ``input_shape`` and ``n_outputs``, the spec the rest.

Run as a script, it times K folds of each module fitted one by one against stacked through
``vmap``, beside hpo's own module of the same layers stacked by ``StackedFolds`` (what
``hpo.engine.folds.plan.VMAPPED_NET_FLOPS`` rests on; docs/benchmarks.md, "User modules"):

    python benchmarks/user_nets.py --folds 5 --repeats 2
    python benchmarks/user_nets.py --quick     # a smoke run: 2 nets, 2 folds, 1 repeat of 1 epoch
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten, two hidden Linear layers with LeakyReLU, a Linear layer to the outputs."""

    def __init__(
        self, input_shape: Sequence[int], n_outputs: int, hidden1: int = 128, hidden2: int = 64
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden1),
            nn.LeakyReLU(),
            nn.Linear(hidden1, hidden2),
            nn.LeakyReLU(),
            nn.Linear(hidden2, n_outputs),
        )

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)


class CNN(nn.Module):
    """Two blocks of 3x3 Conv2d, ReLU and 2x2 max pooling, then a hidden Linear layer."""

    def __init__(
        self,
        input_shape: Sequence[int],
        n_outputs: int,
        conv1: int = 16,
        conv2: int = 32,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, conv1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(conv1, conv2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = conv2 * (height // 4) * (width // 4)
        self.head = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(X))


# ------------------------------------------------- run as a script: stacked through vmap


#: (name, user module, options): digits-shaped rows, as ``trial_speed.py``'s user-* cases.
NETS: list[tuple[str, type[nn.Module], dict[str, int]]] = [
    ("MLP 64-32, batch 32", MLP, {"hidden1": 64, "hidden2": 32, "batch_size": 32}),
    ("MLP 128-64, batch 64", MLP, {"hidden1": 128, "hidden2": 64, "batch_size": 64}),
    ("MLP 256-128, batch 64", MLP, {"hidden1": 256, "hidden2": 128, "batch_size": 64}),
    ("CNN 8-16, batch 32", CNN, {"conv1": 8, "conv2": 16, "hidden": 32, "batch_size": 32}),
    ("CNN 8-16, batch 64", CNN, {"conv1": 8, "conv2": 16, "hidden": 32, "batch_size": 64}),
    ("CNN 16-32, batch 32", CNN, {"conv1": 16, "conv2": 32, "hidden": 64, "batch_size": 32}),
    ("CNN 16-32, batch 64", CNN, {"conv1": 16, "conv2": 32, "hidden": 64, "batch_size": 64}),
]

#: ``--quick``'s nets: one of each kind.
QUICK_NETS = ("MLP 64-32, batch 32", "CNN 8-16, batch 64")

#: Rows of random digits-shaped data; each of the K folds trains on all but a K-th of them.
ROWS = 1500


def same_layers(module: type[nn.Module], options: dict[str, int]) -> tuple[type, dict[str, Any]]:
    """hpo's own module with the same layers as ``module`` with ``options``, and its options."""
    from hpo.engine.models import CNN as HpoCNN
    from hpo.engine.models import MLP as HpoMLP

    if module is MLP:
        hidden = {"hidden1": options["hidden1"], "hidden2": options["hidden2"]}
        return HpoMLP, {**hidden, "activation": "leaky_relu"}
    sizes = {"conv1": options["conv1"], "conv2": options["conv2"], "hidden1": options["hidden"]}
    return HpoCNN, sizes


def time_stacking(
    module: type[nn.Module], options: dict[str, int], folds: int, repeats: int, epochs: int = 3
) -> dict[str, float]:
    """Seconds of K folds fitted one by one and stacked (through vmap for the user's module,
    ``StackedFolds`` for hpo's of the same layers), medians over ``repeats`` after a warm-up."""
    import numpy as np
    import torch
    from sklearn.base import clone

    from hpo.engine.folds.plan import forward_flops
    from hpo.engine.folds.stacked_fit import fit_stacked
    from hpo.engine.nets import TunedClassifier

    shape = (1, 8, 8)
    common = {
        "module__input_shape": shape,
        "max_epochs": epochs,
        "batch_size": options["batch_size"],
    }
    sizes = {f"module__{k}": v for k, v in options.items() if k != "batch_size"}
    user = TunedClassifier(module, module__n_outputs=10, **common, **sizes)
    builtin, builtin_options = same_layers(module, options)
    hpo_net = TunedClassifier(
        builtin, **common, **{f"module__{k}": v for k, v in builtin_options.items()}
    )
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.random((ROWS, *shape), dtype=np.float32))
    y = torch.tensor(rng.integers(0, 10, ROWS))
    rows = [
        torch.cat(
            [torch.arange(0, k * ROWS // folds), torch.arange((k + 1) * ROWS // folds, ROWS)]
        )
        for k in range(folds)
    ]
    times: dict[str, list[float]] = {"one by one": [], "vmapped": [], "hpo stacked": []}
    for repeat in range(repeats + 1):  # the first round warms up
        runs = {
            "one by one": lambda: [clone(user).fit(X[r], y[r]) for r in rows],
            "vmapped": lambda: fit_stacked(user, [X[r] for r in rows], [y[r] for r in rows]),
            "hpo stacked": lambda: fit_stacked(
                hpo_net, [X[r] for r in rows], [y[r] for r in rows]
            ),
        }
        for way, run in runs.items():
            started = time.perf_counter()
            run()
            if repeat:
                times[way].append(time.perf_counter() - started)
    result = {way: statistics.median(seconds) for way, seconds in times.items()}
    result["mflop"] = forward_flops(user, shape) / 1e6
    return result


def main() -> None:
    """Print, per net, K folds fitted one by one against stacked through vmap."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--folds", type=int, help="default 5")
    parser.add_argument("--repeats", type=int, help="default 2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {' and '.join(QUICK_NETS)}, 2 folds, 1 repeat of 1 epoch",
    )
    args = parser.parse_args()
    args.folds = args.folds or (2 if args.quick else 5)
    args.repeats = args.repeats or (1 if args.quick else 2)
    epochs = 1 if args.quick else 3
    nets = [net for net in NETS if net[0] in QUICK_NETS] if args.quick else NETS
    import torch

    torch.set_num_threads(args.threads)
    print(
        f"# {args.folds} folds of {ROWS} random digits-shaped rows, {epochs} epochs, "
        f"{args.threads} thread(s), medians of {args.repeats} after a warm-up\n"
    )
    print(
        "| user net | MFLOP per batch | one by one | stacked through vmap | speed-up | "
        "hpo's net of the same layers, stacked: speed-up |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, module, options in nets:
        r = time_stacking(module, options, args.folds, args.repeats, epochs)
        print(
            f"| {name} | {r['mflop']:.1f} | {r['one by one']:.2f} s | {r['vmapped']:.2f} s | "
            f"{r['one by one'] / r['vmapped']:.2f}× | "
            f"{r['one by one'] / r['hpo stacked']:.2f}× |",
            flush=True,
        )


if __name__ == "__main__":
    main()
