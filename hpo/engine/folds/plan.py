"""How a trial's K folds run: the one function that decides it.

Three strategies, peers that take plain arguments:

- **stacked** (``hpo.engine.folds.stacked``): on the CPU, the K folds of hpo's MLP or CNN
  trained as one stacked model, K times the arithmetic in each op for one op's overhead;
- **fold processes** (``hpo.engine.folds.processes``): on the CPU, N folds at once, one in
  the worker and N - 1 in processes started once per worker;
- **one by one** (``hpo.engine.folds.fold``): one fold after another in the worker; on a GPU
  always (the folds share the device anyway).

``plan_folds`` picks one from the device, the worker's threads and options, whether the spec's
nets can be stacked and, once a trial has a net, from the net itself. The worker calls it at
start (``net=None``) to know whether to start fold processes and what to log; ``hpo run`` calls
it the same way for its hint; each trial calls it with its net and records the plan in the
trial's user_attrs. So the three cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from hpo.engine.device import device_kind

#: Forward FLOPs per training batch below which a net trains faster on one CPU thread: its
#: ops are too small for torch to split them profitably (docs/benchmarks.md, "Measured
#: choices in the code").
SMALL_NET_FLOPS = 2_000_000

#: Forward FLOPs per training batch from which a net's folds are fitted one by one rather than
#: stacked: a bigger net's ops are bound by their arithmetic, and oneDNN's grouped
#: convolutions and batched matrix products are then slower than separate ones
#: (measured: docs/benchmarks.md).
STACKED_NET_FLOPS = 16_000_000

#: The same limit for a user's own module, whose folds are stacked through ``torch.func.vmap``
#: (``hpo.engine.folds.vmapped``): its batching rules cost more per op than hpo's own stacked
#: layers, and reshuffle memory between a convolution and a pooling, so stacking pays only
#: for smaller nets (measured: docs/benchmarks.md). ``stackable`` applies it.
VMAPPED_NET_FLOPS = 4_000_000

Strategy = Literal["stacked", "fold processes", "one by one"]


@dataclass(frozen=True)
class FoldOptions:
    """What a worker's user says about how folds run (``hpo worker`` options).

    Attributes:
        folds_at_once: fit this many folds at once, in fold processes (1: one after another);
            None lets the plan choose. Default: None.
        stack_folds: allow stacking the folds (``--no-stack-folds`` turns it off). Default:
            True.
    """

    folds_at_once: int | None = None
    stack_folds: bool = True


@dataclass(frozen=True)
class NetFacts:
    """What the plan needs to know of one trial's net.

    Attributes:
        stackable: ``hpo.engine.folds.stacked.stackable`` says yes for this net and its folds.
        flops: forward FLOPs over one training batch (``forward_flops``).
    """

    stackable: bool
    flops: int


@dataclass(frozen=True)
class FoldPlan:
    """How a trial's folds run.

    Attributes:
        strategy: ``stacked``, ``fold processes`` or ``one by one``.
        threads: torch CPU threads of each fit (in the worker and in each fold process).
        at_once: folds fitted at the same time: with fold processes, the worker's own fold
            and one per process; else 1 (a stacked fit counts as one).
        cpu: the folds train on the CPU.
    """

    strategy: Strategy
    threads: int
    at_once: int = 1
    cpu: bool = True

    @property
    def idles_cores(self) -> bool:
        """A small net (under ``SMALL_NET_FLOPS``) of this plan trains on one of the worker's
        several CPU threads, so the others sit idle unless more workers use them."""
        return self.cpu and self.strategy != "fold processes" and self.threads > 1

    @property
    def processes(self) -> int:
        """Fold processes the worker runs beside itself."""
        return self.at_once - 1 if self.strategy == "fold processes" else 0

    def describe(self) -> str:
        """One line for logs and user_attrs, e.g. ``folds stacked, 1 thread``."""
        threads = f"{self.threads} thread{'s' * (self.threads > 1)}"
        if self.strategy == "fold processes":
            noun = "process" if self.processes == 1 else "processes"
            return f"{self.at_once} folds at once ({self.processes} fold {noun}), {threads} each"
        return f"folds {self.strategy}, {threads}"


def plan_folds(
    *,
    device: str,
    threads: int,
    folds: int,
    spec_stacks: bool,
    options: FoldOptions | None = None,
    fold_processes: bool = True,
    net: Callable[[], NetFacts] | None = None,
) -> FoldPlan:
    """How the folds of a worker's trials run; with ``net``, those of one trial.

    Args:
        device: the worker's device.
        threads: the worker's torch CPU threads (the most a trial uses).
        folds: K, the spec's number of folds.
        spec_stacks: the spec's nets can be stacked (``spec_stacks_folds``).
        options: the worker's options. Default: ``FoldOptions()``.
        fold_processes: fold processes may be used (a worker that could not start them, or a
            trial scored without a worker's pool, says False). Default: True.
        net: the trial's net facts, asked only on the CPU; None before any trial (at the
            worker's start): then a stacked plan says the worker's threads, the most a
            trial will use.

    Returns:
        On a GPU, one by one on the worker's threads. On the CPU, fold processes when the
        folds will not be stacked and the worker has threads for several folds (or
        ``options.folds_at_once`` asks for them); else stacked where the net allows it (under
        ``STACKED_NET_FLOPS``), else in fold processes when the worker has them (it keeps
        them for a user's module, which only a trial's net says whether it stacks), else one
        by one; a net under ``SMALL_NET_FLOPS`` fits on one thread.
    """
    threads = max(1, threads)
    options = options or FoldOptions()
    if device_kind(device) != "cpu":
        return FoldPlan("one by one", threads, cpu=False)
    may_stack = options.stack_folds and spec_stacks and options.folds_at_once is None
    if not may_stack and fold_processes:
        wanted = threads if options.folds_at_once is None else options.folds_at_once
        in_processes = _in_fold_processes(threads, wanted, folds)
        if in_processes is not None:
            return in_processes
    if net is None:
        return FoldPlan("stacked" if may_stack else "one by one", threads)
    facts = net()
    threads_of_a_fit = fit_threads(facts.flops, threads)
    if may_stack and facts.stackable and facts.flops < STACKED_NET_FLOPS:
        return FoldPlan("stacked", threads_of_a_fit)
    if may_stack and fold_processes:
        # A worker that keeps fold processes for the nets that do not stack (a user's module
        # the probe refuses): this trial's folds run there.
        in_processes = _in_fold_processes(threads, threads, folds)
        if in_processes is not None:
            return in_processes
    return FoldPlan("one by one", threads_of_a_fit)


def fit_threads(flops: int, threads: int) -> int:
    """The CPU threads one fit of a net of ``flops`` (``forward_flops``) uses out of
    ``threads``: one under ``SMALL_NET_FLOPS``, whose ops are too small to split."""
    return 1 if flops < SMALL_NET_FLOPS else threads


def _in_fold_processes(threads: int, wanted: int, folds: int) -> FoldPlan | None:
    """``wanted`` folds at once (at most the ``folds``), the worker's ``threads`` shared among
    them; None when that is one fold at a time."""
    at_once = max(1, min(wanted, folds))
    if at_once == 1:
        return None
    return FoldPlan("fold processes", max(1, threads // at_once), at_once)


def forward_flops(net: Any, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of ``net``'s module over a training batch (matrix products
    and convolutions, as ``torch.utils.flop_counter`` counts them)."""
    # Imported here: the flop counter pulls in torch's compiler stack (tens of MiB), which a
    # worker that never asks (a GPU, or folds in processes) should not carry.
    from torch.utils.flop_counter import FlopCounterMode

    module = net.module(**net.get_params_for("module"))
    module.eval()
    # Counted on one row and scaled (products and convolutions grow with the rows): a batch
    # of batch_size rows would be allocated here whole, 256 GB for batch_size: 10**9.
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops()) * max(1, net.batch_size)
