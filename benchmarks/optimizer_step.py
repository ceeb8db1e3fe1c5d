"""Fit time of hpo's nets per optimizer, here or against another checkout of hpo, in one run.

Each case fits one digits MLP configuration (sklearn's ``load_digits``, its first 1000 rows,
5 folds of ``KFold``) with one optimizer, in one of two ways: the 5 folds stacked
(``hpo.engine.folds.stacked_fit.fit_stacked``, as a trial runs them on the CPU) or one fold
through ``TunedClassifier.fit``. The figure is the CPU time of one fit (process time, so other
processes on the machine weigh less; one torch thread), the median and the minimum over
``--repeats`` (on a busy machine the minimum is the least disturbed), and the final training
loss of the last repeat (fold 0's when stacked).

``--before PATH`` compares with the hpo package of another checkout (say, a clone at an older
commit): each repeat runs every case once under this checkout and once under ``PATH``, each in
a fresh process, the order alternating from repeat to repeat so drifts in machine speed hit
both; the table gives both medians and their ratio (this checkout / ``PATH``). ``--after``
names another checkout to stand for this one (say, an older commit plus one change alone).

    python benchmarks/optimizer_step.py
    python benchmarks/optimizer_step.py --before /tmp/hpo-old --repeats 7
    python benchmarks/optimizer_step.py --quick     # a smoke run: 1 repeat of 2 epochs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OPTIMIZERS = ("adam", "sgd", "adamax")
WAYS = ("stacked-5", "single")
MLP_PARAMS: dict[str, Any] = {
    "module__hidden1": 128,
    "module__hidden2": 64,
    "module__dropout": 0.25,
    "lr": 1e-3,
    "batch_size": 32,
    "max_epochs": 15,
}


def _folds() -> tuple[list[Any], list[Any]]:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import KFold

    digits = load_digits()
    X = (digits.data[:1000] / 16).astype(np.float32)
    y = digits.target[:1000].astype(np.int64)
    train = [rows for rows, _ in KFold(5, shuffle=True, random_state=0).split(X)]
    X_all, y_all = torch.as_tensor(X), torch.as_tensor(y)
    return [X_all[rows] for rows in train], [y_all[rows] for rows in train]


def _fit(way: str, optimizer: str, X: list[Any], y: list[Any], epochs: int) -> tuple[float, float]:
    """(CPU seconds, final training loss) of one fit of ``epochs`` epochs."""
    from hpo.engine.folds.stacked_fit import fit_stacked
    from hpo.engine.models import MLP
    from hpo.engine.nets import TunedClassifier

    params = {**MLP_PARAMS, "max_epochs": epochs}
    net = TunedClassifier(MLP, module__input_shape=(64,), optimizer=optimizer, **params)
    started = time.process_time()
    if way == "single":
        loss = net.fit(X[0], y[0]).history[-1, "train_loss"]
    else:
        loss = fit_stacked(net, X, y).losses(0)[-1]
    return time.process_time() - started, float(loss)


def one_round(epochs: int) -> dict[str, tuple[float, float]]:
    """Every case fitted once (after one untimed fit of each), in this process."""
    import torch

    torch.set_num_threads(1)
    X, y = _folds()
    cases = [(way, optimizer) for way in WAYS for optimizer in OPTIMIZERS]
    for way, optimizer in cases:
        _fit(way, optimizer, X, y, epochs)  # warm-up: first calls allocate and dispatch more
    return {f"{way} {optimizer}": _fit(way, optimizer, X, y, epochs) for way, optimizer in cases}


def _round_in(checkout: Path, epochs: int) -> dict[str, tuple[float, float]]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    command = [sys.executable, __file__, "--round", "--epochs", str(epochs)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # its traceback, which capture_output would otherwise swallow
        raise SystemExit(f"a round under {checkout} exited {done.returncode}:\n{done.stderr}")
    out = done.stdout
    return {key: tuple(value) for key, value in json.loads(out).items()}  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, help="default 7")
    parser.add_argument("--epochs", type=int, help=f"per fit (default {MLP_PARAMS['max_epochs']})")
    parser.add_argument("--before", type=Path, help="another checkout to compare with")
    parser.add_argument("--after", type=Path, default=ROOT, help="default: this checkout")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1 repeat of 2 epochs (--repeats and --epochs still apply)",
    )
    parser.add_argument("--round", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 7)
    args.epochs = args.epochs or (2 if args.quick else MLP_PARAMS["max_epochs"])
    if args.round:
        print(json.dumps(one_round(args.epochs)))
        return
    import torch

    checkouts = {"before": args.before, "after": args.after}
    if args.before is None:
        del checkouts["before"]
    runs: dict[str, list[dict[str, tuple[float, float]]]] = {name: [] for name in checkouts}
    for repeat in range(args.repeats):
        names = list(checkouts) if repeat % 2 == 0 else list(reversed(checkouts))
        for name in names:
            runs[name].append(_round_in(checkouts[name], args.epochs))
    print(
        f"# digits MLP 128-64, 1000 rows, 5 folds, batch {MLP_PARAMS['batch_size']}, "
        f"{args.epochs} epochs; CPU seconds per fit, median (min) of "
        f"{args.repeats}; "
        f"1 torch thread, torch {torch.__version__}"
    )
    columns = " | ".join(f"{name} s | {name} loss" for name in checkouts)
    ratio = args.before is not None
    print(f"| case | {columns} |" + (" after/before |" if ratio else ""))
    print("| --- |" + " ---: |" * (2 * len(checkouts) + ratio))
    for case in runs["after"][0]:
        times = {name: [r[case][0] for r in runs[name]] for name in checkouts}
        medians = {name: statistics.median(times[name]) for name in checkouts}
        cells = " | ".join(
            f"{medians[name]:.3f} ({min(times[name]):.3f}) | {runs[name][-1][case][1]:.4f}"
            for name in checkouts
        )
        extra = ""
        if ratio:
            fastest = min(times["after"]) / min(times["before"])
            extra = f" {medians['after'] / medians['before']:.2f} ({fastest:.2f}) |"
        print(f"| {case} | {cells} |{extra}")


if __name__ == "__main__":
    main()
