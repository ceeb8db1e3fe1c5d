"""The FLOP floor of a trial: its matrix products and convolutions, timed alone at its shapes.

A trial fits K folds of ``epochs`` epochs and predicts each fold's held-out rows once. Its
arithmetic is the products and convolutions of its net's ``nn.Linear`` and ``nn.Conv2d``
layers, forward and backward; everything else a fit does (activations, dropout, the loss, the
optimizer step, batching, Python) is overhead above them. ``measure_floor`` builds the net's
module, records each such layer's input shape on one training batch, and times that layer
alone, forward and backward (no gradient for the data's own layer, as in training), in a tight
loop on this process's torch threads (the fastest of a few windows). The layers' FLOPs
(``torch.utils.flop_counter``, forward and backward) over their seconds are the machine's
throughput at this net's shapes; the trial's FLOPs over that throughput are the floor: the
seconds a trial would take if nothing but its arithmetic cost time.

``peak_matmul_gflops`` times one large square product on the same threads, for scale: the
throughput no net's layers exceed. ``benchmarks/trial_speed.py`` sets its MNIST-shaped cases
against this floor; run alone, this prints the floor's parts for those nets:

    python benchmarks/flop_floor.py                  # 1 and 2 threads
    python benchmarks/flop_floor.py --threads 1
    python benchmarks/flop_floor.py --quick          # the MLP on one thread
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

#: Layers whose arithmetic the floor counts.
ARITHMETIC_LAYERS = (nn.Linear, nn.Conv2d)
#: Seconds each layer is timed for, at least, in windows of which the fastest counts.
TIMING_SECONDS = 0.5
TIMING_WINDOWS = 5


@dataclass(frozen=True)
class Floor:
    """One trial's arithmetic and the seconds it takes at the measured throughput."""

    #: Floating-point operations of the trial's products and convolutions.
    flops: float
    #: Those operations per second, timed alone at the net's shapes on this process's threads.
    flops_per_second: float

    @property
    def seconds(self) -> float:
        return self.flops / self.flops_per_second


def _layer_inputs(module: nn.Module, batch: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
    """Each arithmetic layer of ``module`` with its input on ``batch``, in forward order."""
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [
        layer.register_forward_hook(lambda layer, args, out: seen.append((layer, args[0])))
        for layer in module.modules()
        if isinstance(layer, ARITHMETIC_LAYERS)
    ]
    try:
        with torch.no_grad():
            module(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _timed(step: Any) -> float:
    """Seconds per call of ``step``: the fastest of ``TIMING_WINDOWS`` windows of at least
    ``TIMING_SECONDS`` / ``TIMING_WINDOWS`` each, after a warm-up (a floor: on a shared
    machine the fastest window is the one least slowed by others)."""
    for _ in range(3):
        step()
    best = math.inf
    for _ in range(TIMING_WINDOWS + 1):  # the first window warms up
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < TIMING_SECONDS / TIMING_WINDOWS:
            step()
            calls += 1
        best = min(best, elapsed / calls) if calls else best
    return best


def _counted(step: Any) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def layer_costs(module: nn.Module, batch: torch.Tensor) -> tuple[int, int, float]:
    """Training FLOPs (forward and backward), forward FLOPs and seconds of training
    ``module``'s arithmetic layers alone on ``batch``."""
    train_flops = forward_flops = 0
    seconds = 0.0
    for index, (layer, given) in enumerate(_layer_inputs(module, batch)):
        x = given.detach().clone().requires_grad_(index > 0)
        with torch.no_grad():
            grad = torch.randn_like(layer(x))

        def train(
            layer: nn.Module = layer, x: torch.Tensor = x, grad: torch.Tensor = grad
        ) -> None:
            layer(x).backward(grad)

        def forward(layer: nn.Module = layer, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                layer(x)

        train_flops += _counted(train)
        forward_flops += _counted(forward)
        seconds += _timed(train)
        layer.zero_grad(set_to_none=True)
    return train_flops, forward_flops, seconds


def measure_floor(
    module: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int,
    train_rows: list[int],
    held_out_rows: list[int],
    epochs: int,
) -> Floor:
    """The floor of a trial of ``module``: per fold, ``epochs`` epochs over its
    ``train_rows`` in batches of ``batch_size`` and one forward pass over its
    ``held_out_rows``, at the throughput of the module's layers on a batch of ``batch_size``."""
    module.train()
    batch = torch.rand(batch_size, *input_shape)
    train_flops, forward_flops, seconds = layer_costs(module, batch)
    per_train_row = train_flops / batch_size
    per_predicted_row = forward_flops / batch_size
    flops = sum(epochs * rows * per_train_row for rows in train_rows) + sum(
        rows * per_predicted_row for rows in held_out_rows
    )
    return Floor(float(flops), train_flops / seconds)


def peak_matmul_gflops(size: int = 1024) -> float:
    """GFLOP/s of one ``size``-square float32 matrix product on this process's threads."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    return 2 * size**3 / _timed(lambda: a @ b) / 1e9


#: (name, module, input shape, batch size) of the nets ``main`` prints; trial_speed's cases.
NETS: list[tuple[str, Any, tuple[int, ...], int]] = [
    ("MNIST MLP 784-256-128-10", lambda: _mlp(256, 128), (1, 28, 28), 128),
    ("MNIST MLP 784-512-256-10", lambda: _mlp(512, 256), (1, 28, 28), 128),
    ("MNIST CNN 16-32", lambda: _cnn(16, 32), (1, 28, 28), 128),
    ("MNIST CNN 32-64", lambda: _cnn(32, 64), (1, 28, 28), 128),
]


def _mlp(hidden1: int, hidden2: int) -> nn.Module:
    from hpo.engine.models import MLP

    return MLP((1, 28, 28), 10, hidden1=hidden1, hidden2=hidden2)


def _cnn(conv1: int, conv2: int) -> nn.Module:
    from hpo.engine.models import CNN

    return CNN((1, 28, 28), 10, conv1=conv1, conv2=conv2, conv3=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", help="comma-separated torch thread counts (default 1,2)")
    parser.add_argument("--quick", action="store_true", help="the first MLP on one thread")
    args = parser.parse_args()
    threads = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]
    nets = NETS[:1] if args.quick else NETS
    print(
        "| net | threads | MFLOP per training batch | layers' GFLOP/s | ms per batch | "
        "a 1024-square product, GFLOP/s |"
    )
    print("| --- |" + " ---: |" * 5)
    for count in threads:
        torch.set_num_threads(count)
        peak = peak_matmul_gflops()
        for name, build, shape, batch_size in nets:
            module = build().train()
            flops, _, seconds = layer_costs(module, torch.rand(batch_size, *shape))
            print(
                f"| {name} | {count} | {flops / 1e6:.0f} | {flops / seconds / 1e9:.0f} | "
                f"{seconds * 1e3:.2f} | {peak:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
