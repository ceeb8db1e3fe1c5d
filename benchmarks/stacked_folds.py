"""Stacked folds against folds fitted one by one, by the net's size, in one run.

For each net, the same 3 folds of random data (digits-shaped or MNIST-shaped) are fitted
twice per repeat: one by one, each a ``clone`` of the hpo net as ``hpo.engine.objective`` fits it
without stacking, and at once through ``hpo.engine.folds.stacked_fit.fit_stacked``. It prints the
forward MFLOP per training batch (what ``hpo.engine.folds.plan.STACKED_NET_FLOPS`` is compared
with), the wall seconds of each and the speed-up, best and worst over ``--repeats`` after a
warm-up round. The limit sits between the sizes that gain and those that lose.

    python benchmarks/stacked_folds.py
    python benchmarks/stacked_folds.py --threads 2 --repeats 3
    python benchmarks/stacked_folds.py --quick     # a smoke run: 2 nets, 1 repeat of 1 epoch
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from sklearn.base import clone

from hpo.engine.folds.plan import STACKED_NET_FLOPS, forward_flops
from hpo.engine.folds.stacked_fit import fit_stacked
from hpo.engine.models import CNN, MLP
from hpo.engine.nets import TunedClassifier

DIGITS = (1, 8, 8)
MNIST = (1, 28, 28)

#: Rows of random data; the 3 folds train on two thirds each.
ROWS = 1500

#: (name, module, input shape, net options beside hidden1 64, batch 64 and 3 epochs)
NETS: list[tuple[str, type, tuple[int, ...], dict[str, Any]]] = [
    ("digits CNN 8-16, batch 64", CNN, DIGITS, {"module__conv1": 8, "module__conv2": 16}),
    ("digits CNN 16-32, batch 32", CNN, DIGITS, {"module__conv2": 32, "batch_size": 32}),
    ("digits CNN 32-32, batch 32", CNN, DIGITS, {"module__conv1": 32, "batch_size": 32}),
    ("digits CNN 16-32, batch 64", CNN, DIGITS, {"module__conv2": 32}),
    ("digits CNN 32-32, batch 64", CNN, DIGITS, {"module__conv1": 32}),
    ("MNIST-shaped MLP 128-64, batch 128", MLP, MNIST, {"module__hidden1": 128}),
    (
        "MNIST-shaped MLP 256-128, batch 128",
        MLP,
        MNIST,
        {"module__hidden1": 256, "module__hidden2": 128},
    ),
    (
        "MNIST-shaped CNN 8-16, batch 128",
        CNN,
        MNIST,
        {"module__conv1": 8, "module__conv2": 16, "batch_size": 128, "max_epochs": 1},
    ),
]
#: ``--quick``'s nets: one of each kind (a CNN, an MLP).
QUICK_NETS = ("digits CNN 8-16, batch 64", "MNIST-shaped MLP 128-64, batch 128")
#: What the options above leave to each kind of net.
DEFAULTS: dict[type, dict[str, Any]] = {
    CNN: {"module__conv1": 16, "module__conv2": 32, "module__hidden1": 64},
    MLP: {"module__hidden2": 64, "batch_size": 128},
}


def time_net(
    module: type,
    shape: tuple[int, ...],
    net_options: dict[str, Any],
    repeats: int,
    epochs: int | None = None,
) -> dict[str, float]:
    """Seconds of both ways (medians) and the speed-up (worst and best) for one net, trained
    ``epochs`` epochs (default: 3, or the net's own)."""
    options = {"batch_size": 64, "max_epochs": 3, **DEFAULTS[module], **net_options}
    if epochs is not None:
        options["max_epochs"] = epochs
    net = TunedClassifier(module, module__input_shape=shape, **options)
    rows = ROWS
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.random((rows, *shape), dtype=np.float32))
    y = torch.tensor(rng.integers(0, 10, rows))
    third = rows // 3
    folds = [
        torch.arange(0, 2 * third),
        torch.arange(third, rows),
        torch.cat([torch.arange(0, third), torch.arange(2 * third, rows)]),
    ]
    speed_ups, separate, stacked = [], [], []
    for repeat in range(repeats + 1):  # the first round warms up
        started = time.perf_counter()
        for rows_of_fold in folds:
            clone(net).fit(X[rows_of_fold], y[rows_of_fold])
        one_by_one = time.perf_counter() - started
        started = time.perf_counter()
        fit_stacked(net, [X[r] for r in folds], [y[r] for r in folds])
        at_once = time.perf_counter() - started
        if repeat:
            separate.append(one_by_one)
            stacked.append(at_once)
            speed_ups.append(one_by_one / at_once)
    return {
        "mflop": forward_flops(net, shape) / 1e6,
        "separate": float(np.median(separate)),
        "stacked": float(np.median(stacked)),
        "low": min(speed_ups),
        "high": max(speed_ups),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, help="default 2")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {' and '.join(QUICK_NETS)}, 1 repeat of 1 epoch",
    )
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 2)
    nets = [net for net in NETS if net[0] in QUICK_NETS] if args.quick else NETS
    epochs = 1 if args.quick else None
    torch.set_num_threads(args.threads)
    print(
        f"# Stacked folds against one by one: 3 folds, {args.threads} thread(s), "
        f"{args.repeats} repeats after a warm-up; stacked below "
        f"{STACKED_NET_FLOPS / 1e6:.0f} MFLOP per batch\n"
    )
    print("| net | MFLOP per batch | one by one s | stacked s | stacked speed-up |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, module, shape, options in nets:
        r = time_net(module, shape, options, args.repeats, epochs)
        print(
            f"| {name} | {r['mflop']:.1f} | {r['separate']:.2f} | {r['stacked']:.2f} | "
            f"{r['low']:.2f}–{r['high']:.2f}× |",
            flush=True,
        )


if __name__ == "__main__":
    main()
