"""How a trial's K folds run: every rule that decides it, in one module.

Three strategies, peers behind one protocol (``hpo.engine.folds.runners.FoldRunner``):

- **stacked** (``hpo.engine.folds.stacked_fit``): on the CPU, the K folds of hpo's MLP or CNN
  (or a user's module that ``torch.func.vmap`` can run) trained as one stacked model, K times
  the arithmetic in each op for one op's overhead;
- **fold processes** (``hpo.engine.folds.processes``): on the CPU, N folds at once, one in
  the worker and N - 1 in processes started once per worker;
- **one by one** (``hpo.engine.folds.fold``): one fold after another in the worker; on a GPU
  always (the folds share the device anyway).

The rules, each a function here:

- ``spec_stacks_folds`` / ``stacking_depends_on_trial``: whether a spec's trials may stack,
  and whether only a trial's net can tell;
- ``stackable``: whether one trial's net and folds stack;
- ``worker_plans``: the plan a worker starts with (what it logs, what ``hpo run`` hints at)
  and the plan its fold processes are started for;
- ``trial_fold_plan``: one trial's plan, from its net (``NetFacts``: stackable, FLOPs per
  batch) and when its pruner may first stop it (``first_prunable_fold``, ``fold_groups``: a
  stacked trial fits the folds before that one together, then the rest; over epochs, the
  groups ``pruner.over`` asks for); a trial that reports its epochs never uses fold processes,
  which report nothing until their fold ends;
- ``plan_folds``: the choice among the strategies and the threads of a fit (``fit_threads``).

So the worker's log, ``hpo run``'s hint and each trial's user_attrs cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hpo.engine.device import device_kind
from hpo.engine.folds.flops import forward_flops
from hpo.engine.folds.vmapped import net_refusal
from hpo.engine.models import CNN, MLP, MODELS
from hpo.engine.nets import OPTIMIZERS, TensorBatches
from hpo.spec.pruning import FIRST_FOLDS, PruningStart, reports_epochs
from hpo.spec.study_spec import StudySpec

__all__ = [
    "SMALL_NET_FLOPS",
    "STACKED_NET_FLOPS",
    "VMAPPED_NET_FLOPS",
    "FoldOptions",
    "FoldPlan",
    "NetFacts",
    "first_prunable_fold",
    "fit_threads",
    "fold_groups",
    "forward_flops",
    "plan_folds",
    "spec_stacks_folds",
    "stackable",
    "stacking_depends_on_trial",
    "trial_fold_plan",
    "worker_fold_plan",
    "worker_plans",
]

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
        stackable: ``stackable`` says yes for this net and its folds.
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
        groups: for a trial's stacked plan, the folds fitted together, in order
            (``fold_groups``); empty otherwise.
    """

    strategy: Strategy
    threads: int
    at_once: int = 1
    cpu: bool = True
    groups: tuple[tuple[int, ...], ...] = ()

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


# --- the spec's and the net's rules ---------------------------------------------------------


def spec_stacks_folds(spec: StudySpec, validation: bool) -> bool:
    """Whether ``spec``'s trials will be stacked on the CPU (``stackable`` decides per
    trial): hpo's models and a user's own (which ``stackable`` probes per trial), trained
    without early stopping or with it on the data's fixed validation split (``validation``),
    in float32."""
    patience = "early_stopping_patience"
    early_stopping = spec.fixed.get(patience) is not None or patience in spec.space
    if spec.fixed.get("mixed_precision") is True:
        return False
    return validation or not early_stopping


def stacking_depends_on_trial(spec: StudySpec) -> bool:
    """Whether only a trial's net can tell if its folds stack: a user's module, which
    ``net_refusal`` probes with the trial's arguments (dropout or batch norm may be searched),
    where hpo's MLP and CNN stack whenever ``spec_stacks_folds`` says so."""
    return spec.model not in MODELS


def stackable(net: Any, train_sizes: list[int], device: str, validation: bool = False) -> bool:
    """Whether ``net``'s folds (of ``train_sizes`` rows) can be fitted as ``StackedFolds``
    (hpo's MLP and CNN) or ``VmappedFolds`` (a user's module that ``net_refusal`` accepts).

    ``validation``: the data has a fixed validation split, which ``hpo.engine.build.build_net``
    gives a net with early stopping as its ``train_split`` (a split drawn from each fold's
    rows is not stacked).
    """
    if device_kind(device) != "cpu" or len(train_sizes) < 2:
        return False
    if net.callbacks not in (None, []) or net.mixed_precision:
        return False
    if net.early_stopping_patience is None:
        if net.train_split is not None:
            return False
    elif net.train_split is None or not validation:
        return False
    if net.criterion not in (None, net.default_criterion) or net.get_params_for("criterion"):
        return False
    if net.iterator_train is not TensorBatches or net.get_params_for("iterator_train"):
        return False
    optimizer = net.optimizer
    if optimizer not in OPTIMIZERS and optimizer not in OPTIMIZERS.values():
        return False
    if "param_groups" in net.get_params_for("optimizer"):
        return False
    batch_size = net.batch_size if net.batch_size != -1 else max(train_sizes)
    batches = {math.ceil(size / batch_size) for size in train_sizes}
    if len(batches) > 1 or (net.batch_size == -1 and len(set(train_sizes)) > 1):
        return False
    # Last: the probe builds the module and runs it.
    if net.module in (MLP, CNN):
        return True
    return net_refusal(net, VMAPPED_NET_FLOPS, max(train_sizes)) is None


# --- a worker's plans and a trial's ---------------------------------------------------------


def worker_fold_plan(
    spec: StudySpec,
    *,
    device: str,
    threads: int,
    validation: bool,
    options: FoldOptions | None = None,
    fold_processes: bool = True,
) -> FoldPlan:
    """How a worker's trials will run their folds, before any trial: what the worker logs,
    whether it starts fold processes, and what ``hpo run`` hints at.

    Args:
        spec: the study.
        device: the worker's device.
        threads: the worker's torch CPU threads.
        validation: the dataset has a fixed validation split (early stopping on it stacks).
        options: the worker's options. Default: ``FoldOptions()``.
        fold_processes: fold processes may be started. Default: True.
    """
    return plan_folds(
        device=device,
        threads=threads,
        folds=spec.cv.folds,
        spec_stacks=spec_stacks_folds(spec, validation),
        options=options,
        # A fold process reports nothing before its fold ends: a trial that reports its
        # epochs fits its folds stacked or one by one.
        fold_processes=fold_processes and not reports_epochs(spec),
    )


def worker_plans(
    spec: StudySpec,
    *,
    device: str,
    threads: int,
    validation: bool,
    options: FoldOptions | None = None,
) -> tuple[FoldPlan, FoldPlan]:
    """The plan a worker's trials start from, and the plan its fold processes are started
    for: the same, but for a user's module whose folds stack only where a trial's net allows
    it (``stacking_depends_on_trial``): its other trials fit their folds in fold processes."""
    options = options or FoldOptions()
    plan = worker_fold_plan(
        spec, device=device, threads=threads, validation=validation, options=options
    )
    if plan.strategy == "stacked" and stacking_depends_on_trial(spec):
        unstacked = dataclasses.replace(options, stack_folds=False)
        pool_plan = worker_fold_plan(
            spec, device=device, threads=threads, validation=validation, options=unstacked
        )
        return plan, pool_plan
    return plan, plan


def first_prunable_fold(
    start: PruningStart | None, complete_trials: Callable[[], int]
) -> int | None:
    """The fold after which the pruner may first stop this trial, or None when it cannot
    stop it (no pruner, or fewer complete trials than its start-up needs).

    ``complete_trials`` is a storage read, asked only when it decides something.
    """
    if start is None:
        return None
    if start.startup_trials and complete_trials() < start.startup_trials:
        return None
    return start.first_fold


def fold_groups(folds: int, first_prunable: int | None, over: str = "folds") -> list[list[int]]:
    """The folds a stacked trial fits together.

    Over ``folds``: all at once, or, when the trial may be pruned after fold
    ``first_prunable`` (0-based), the folds up to it and then the rest, so a pruned trial
    fits no fold past it. Over ``epochs``: all at once (the trial is judged at its epochs).
    Over ``both``: its first ``FIRST_FOLDS`` folds, then the rest, whether or not the pruner
    has started, so every trial of a study reports the same steps.
    """
    if over == "both":
        first_prunable = min(FIRST_FOLDS, folds - 1) - 1
    elif over == "epochs" or first_prunable is None:
        return [list(range(folds))]
    first = min(first_prunable + 1, folds)
    return [group for group in (list(range(first)), list(range(first, folds))) if group]


def trial_fold_plan(
    spec: StudySpec,
    net: Any,
    train_sizes: Sequence[int],
    input_shape: tuple[int, ...],
    *,
    device: str,
    threads: int,
    validation: bool,
    options: FoldOptions | None = None,
    fold_processes: bool = False,
    first_prunable: Callable[[], int | None] = lambda: None,
) -> FoldPlan:
    """How one trial's folds run, from its net.

    Args:
        spec: the study.
        net: the trial's unfitted skorch net.
        train_sizes: each fold's training rows, with ``augment``'s copies.
        input_shape: one row's shape.
        device: the worker's device.
        threads: the worker's torch CPU threads, the most a trial uses.
        validation: the data has a fixed validation split.
        options: the worker's options. Default: ``FoldOptions()``.
        fold_processes: the worker has fold processes. Default: False.
        first_prunable: the fold after which the trial may first be pruned
            (``first_prunable_fold``); asked only for a stacked plan. Default: never.

    Returns:
        ``plan_folds``' choice; a stacked plan with its ``groups``.
    """

    fold_processes = fold_processes and not reports_epochs(spec)

    def net_facts() -> NetFacts:
        return NetFacts(
            stackable=stackable(net, list(train_sizes), device, validation=validation),
            flops=forward_flops(net, input_shape, max(train_sizes, default=1)),
        )

    plan = plan_folds(
        device=device,
        threads=threads,
        folds=len(train_sizes),
        spec_stacks=spec_stacks_folds(spec, validation),
        options=options,
        fold_processes=fold_processes,
        net=net_facts,
    )
    if plan.strategy != "stacked":
        return plan
    over = spec.pruner.over
    groups = fold_groups(len(train_sizes), None if over != "folds" else first_prunable(), over)
    return dataclasses.replace(plan, groups=tuple(tuple(group) for group in groups))
