"""``plan_folds``: the one decision of how a trial's folds run."""

from __future__ import annotations

import optuna
import pytest
from conftest import tiny_spec

from hpo.engine.data import load_dataset
from hpo.engine.device import default_device
from hpo.engine.folds.plan import (
    SMALL_NET_FLOPS,
    STACKED_NET_FLOPS,
    FoldOptions,
    FoldPlan,
    NetFacts,
    plan_folds,
    worker_fold_plan,
)
from hpo.engine.objective import evaluate
from hpo.service.runner import local_worker_plan
from hpo.spec.study_spec import parse_spec

SMALL = NetFacts(stackable=True, flops=SMALL_NET_FLOPS // 2)
MEDIUM = NetFacts(stackable=True, flops=(SMALL_NET_FLOPS + STACKED_NET_FLOPS) // 2)
BIG = NetFacts(stackable=True, flops=STACKED_NET_FLOPS * 2)
UNSTACKABLE = NetFacts(stackable=False, flops=SMALL_NET_FLOPS // 2)


def plan(net: NetFacts | None = None, **kwargs: object) -> FoldPlan:
    arguments: dict = {"device": "cpu", "threads": 2, "folds": 5, "spec_stacks": True}
    arguments.update(kwargs)
    return plan_folds(**arguments, net=None if net is None else (lambda: net))


@pytest.mark.parametrize(
    ("net", "kwargs", "expected"),
    [
        # stacked where the net allows it; a small net on one thread
        (SMALL, {}, FoldPlan("stacked", 1)),
        (MEDIUM, {}, FoldPlan("stacked", 2)),
        (None, {}, FoldPlan("stacked", 2)),  # at the worker's start: the most a trial uses
        # a big net, or one that cannot be stacked, one fold after another...
        (BIG, {"fold_processes": False}, FoldPlan("one by one", 2)),
        (UNSTACKABLE, {"fold_processes": False}, FoldPlan("one by one", 1)),
        # ... or in the fold processes a worker keeps for them (a user's module)
        (UNSTACKABLE, {}, FoldPlan("fold processes", 1, at_once=2)),
        (BIG, {"threads": 8, "folds": 3}, FoldPlan("fold processes", 2, at_once=3)),
        (UNSTACKABLE, {"threads": 1}, FoldPlan("one by one", 1)),
        # specs whose nets never stack: one fold per thread, in fold processes
        (SMALL, {"spec_stacks": False}, FoldPlan("fold processes", 1, at_once=2)),
        (None, {"spec_stacks": False, "threads": 16}, FoldPlan("fold processes", 3, at_once=5)),
        (None, {"spec_stacks": False, "threads": 1}, FoldPlan("one by one", 1)),
        # the worker's options
        (SMALL, {"options": FoldOptions(stack_folds=False)}, FoldPlan("fold processes", 1, 2)),
        (SMALL, {"options": FoldOptions(folds_at_once=1)}, FoldPlan("one by one", 1)),
        (MEDIUM, {"options": FoldOptions(folds_at_once=1)}, FoldPlan("one by one", 2)),
        (
            None,
            {"options": FoldOptions(folds_at_once=4), "threads": 1},
            FoldPlan("fold processes", 1, 4),
        ),
        (
            None,
            {"options": FoldOptions(folds_at_once=9), "folds": 3},
            FoldPlan("fold processes", 1, 3),
        ),
        # no fold processes to be had (a worker that could not start them)
        (SMALL, {"spec_stacks": False, "fold_processes": False}, FoldPlan("one by one", 1)),
        (SMALL, {"fold_processes": False}, FoldPlan("stacked", 1)),
        # a GPU: one by one, whatever the net
        (SMALL, {"device": "cuda"}, FoldPlan("one by one", 2, cpu=False)),
        (None, {"device": "cuda:1", "spec_stacks": False}, FoldPlan("one by one", 2, cpu=False)),
    ],
)
def test_plan_folds(net: NetFacts | None, kwargs: dict, expected: FoldPlan) -> None:
    assert plan(net, **kwargs) == expected


def test_the_net_is_measured_only_when_the_plan_depends_on_it() -> None:
    def measured() -> NetFacts:
        raise AssertionError("measured")

    assert plan_folds(device="cuda", threads=2, folds=5, spec_stacks=True, net=measured)
    assert plan_folds(device="cpu", threads=2, folds=5, spec_stacks=False, net=measured)


def test_descriptions_and_idle_cores() -> None:
    assert FoldPlan("stacked", 1).describe() == "folds stacked, 1 thread"
    assert FoldPlan("one by one", 2).describe() == "folds one by one, 2 threads"
    processes = FoldPlan("fold processes", 1, at_once=2)
    assert processes.describe() == "2 folds at once (1 fold process), 1 thread each"
    assert processes.processes == 1 and FoldPlan("stacked", 2).processes == 0
    assert FoldPlan("stacked", 2).idles_cores
    assert not FoldPlan("stacked", 1).idles_cores
    assert not processes.idles_cores
    assert not FoldPlan("one by one", 2, cpu=False).idles_cores


def test_early_stopping_stacks_only_on_a_fixed_validation_split() -> None:
    patience = parse_spec(tiny_spec(fixed={"max_epochs": 3, "early_stopping_patience": 2}))
    with_split = worker_fold_plan(patience, device="cpu", threads=2, validation=True)
    without = worker_fold_plan(patience, device="cpu", threads=2, validation=False)
    assert with_split.strategy == "stacked"
    assert without.strategy == "fold processes"


@pytest.mark.slow
def test_a_trial_records_the_plan_it_ran() -> None:
    spec = parse_spec(tiny_spec())
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    evaluate(trial, spec, load_dataset("digits"), "cpu")
    assert trial.user_attrs["folds_plan"] == "folds stacked, 1 thread"  # a tiny MLP
    assert trial.user_attrs["threads"] == 1


@pytest.mark.parametrize(
    ("dataset", "fixed"),
    [
        ("digits", {}),  # stacked
        ("digits", {"early_stopping_patience": 2}),  # stacked on digits' validation split
        ("synthetic_regression", {"early_stopping_patience": 2}),  # fold processes
        ("diabetes", {"mixed_precision": True}),  # never stacked
    ],
)
@pytest.mark.parametrize("threads", [1, 2, 8])
def test_hpo_run_plans_what_its_workers_will_plan(dataset: str, fixed: dict, threads: int) -> None:
    task = {"model": "regressor", "scoring": "r2"} if dataset != "digits" else {}
    spec = parse_spec(
        tiny_spec(dataset={"name": dataset}, fixed={"max_epochs": 2, **fixed}, **task)
    )
    data = load_dataset(dataset)
    # what run_worker computes once it has loaded the data, on the device hpo run picks
    worker = worker_fold_plan(
        spec, device=default_device(), threads=threads, validation=data.X_valid is not None
    )
    assert local_worker_plan(spec, threads) == worker
