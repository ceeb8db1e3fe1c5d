"""What reporting a trial's epochs costs: the same trials scored over folds and over epochs.

``pruner.over: epochs`` scores every fold's held-out rows after every ``report_every`` epochs
(``hpo.engine.reports``, ``hpo.engine.folds.stacked_fit``), so a pruner can stop a trial
mid-fit. This measures what that scoring adds to a trial that is not pruned. For each of
``--trials`` configurations (after one warm-up, not counted) drawn from the catalogue's
digits MLP and CNN spaces (``studies/digits-mlp-tpe.yaml``, ``studies/digits-cnn-tpe.yaml``,
their folds and epochs as on disk), one process scores it over folds and over epochs (pruner
``none``, so nothing is stopped), in alternating order, with
``hpo.engine.objective.evaluate`` on ``--threads`` torch threads (1: as each worker of
``hpo run --workers 2`` on two cores). It prints each case's median seconds per trial both
ways (each the median of ``--repeats`` alternating timings) and the share reporting adds
(issue 28's target: under 15 %), and checks that both ways give the same CV score.
``--storage sqlite`` keeps every trial in a SQLite file opened as a worker opens it
(``hpo.service.storage.open_storage``: WAL, no fsync per commit) instead of Optuna's memory,
so the share includes writing each report (``trial.report``) and asking the pruner.

    python benchmarks/epoch_reports.py
    python benchmarks/epoch_reports.py --trials 6 --report-every 1    # every epoch
    python benchmarks/epoch_reports.py --report-every 1 --storage sqlite
    python benchmarks/epoch_reports.py --quick    # a smoke run: 1 trial of 2 epochs per case,
                                                  # on SQLite
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import yaml

from hpo.engine.data import load_dataset
from hpo.engine.objective import evaluate
from hpo.service.storage import open_storage
from hpo.spec.spaces import suggest
from hpo.spec.study_spec import StudySpec, parse_spec

STUDIES = Path(__file__).resolve().parent.parent / "studies"
CASES = {"digits-mlp": "digits-mlp-tpe.yaml", "digits-cnn": "digits-cnn-tpe.yaml"}


def case_spec(file: str, over: str, report_every: int | None, epochs: int | None) -> StudySpec:
    """The catalogue spec with pruner ``none`` over ``over`` (and ``report_every`` and
    ``epochs`` if given: else hpo's default and the spec's)."""
    raw: dict[str, Any] = yaml.safe_load((STUDIES / file).read_text())
    raw["pruner"] = {"name": "none", "over": over}
    if report_every is not None:
        raw["pruner"]["report_every"] = report_every
    if epochs is not None:
        raw["fixed"] = {**raw["fixed"], "max_epochs": epochs}
    return parse_spec(raw, source=file)


def configurations(spec: StudySpec, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` points of the spec's space, drawn at random."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    points = []
    for _ in range(n):
        trial = study.ask()
        suggest(trial, spec.space)
        points.append(dict(trial.params))
        study.tell(trial, 0.0)
    return points


def timed_trial(
    spec: StudySpec, data: Any, params: dict[str, Any], threads: int, storage: Any = None
) -> tuple[float, float, int]:
    """Seconds, CV score and reports of one trial of ``params``, in a new study of
    ``storage`` (default: Optuna's memory)."""
    study = optuna.create_study(direction="maximize", storage=storage)
    study.enqueue_trial(params)
    trial = study.ask()
    started = time.perf_counter()
    value = evaluate(trial, spec, data, "cpu", threads=threads)
    seconds = time.perf_counter() - started
    study.tell(trial, value)
    return seconds, float(value), len(study.trials[0].intermediate_values)


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    file = CASES[name]
    folds_spec = case_spec(file, "folds", 1, args.epochs)
    epochs_spec = case_spec(file, "epochs", args.report_every, args.epochs)
    data = load_dataset(folds_spec.dataset.name, **folds_spec.dataset.options)
    seconds: dict[str, list[float]] = {"folds": [], "epochs": []}
    reports = {"folds": 0, "epochs": 0}
    points = configurations(folds_spec, args.trials + 1, args.seed)
    for spec in (folds_spec, epochs_spec):  # torch's one-time start-up, left out
        timed_trial(spec, data, points[0], args.threads, args.opened_storage)
    for index, params in enumerate(points[1:]):
        # Each way --repeats times, alternating, and its median: single trials of the same
        # configuration vary by a quarter on a shared VM, and the later of two often loses.
        scores = {}
        took: dict[str, list[float]] = {"folds": [], "epochs": []}
        for repeat in range(args.repeats):
            order = ("folds", "epochs") if (index + repeat) % 2 == 0 else ("epochs", "folds")
            for over in order:
                spec = folds_spec if over == "folds" else epochs_spec
                seconds_once, scores[over], reports[over] = timed_trial(
                    spec, data, params, args.threads, args.opened_storage
                )
                took[over].append(seconds_once)
        for over in ("folds", "epochs"):
            seconds[over].append(statistics.median(took[over]))
        if not np.isclose(scores["folds"], scores["epochs"], rtol=1e-6):
            raise SystemExit(
                f"{name} trial {index}: CV {scores['folds']} over folds, "
                f"{scores['epochs']} over epochs: reporting changed the fit"
            )
        share = seconds["epochs"][-1] / seconds["folds"][-1] - 1
        print(
            f"  {name} trial {index}: over folds {seconds['folds'][-1]:.2f} s, over epochs "
            f"{seconds['epochs'][-1]:.2f} s ({share:+.1%}); CV {scores['folds']:.4f}; {params}",
            flush=True,
        )
    folds, epochs = (statistics.median(seconds[k]) for k in ("folds", "epochs"))
    shares = [e / f - 1 for f, e in zip(seconds["folds"], seconds["epochs"], strict=True)]
    return {
        "case": name,
        "trials": args.trials,
        "folds_s": folds,
        "epochs_s": epochs,
        "median_share": statistics.median(shares),
        "range": (min(shares), max(shares)),
        "reports": reports["epochs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="digits-mlp,digits-cnn")
    parser.add_argument("--trials", type=int, default=6, help="configurations per case")
    parser.add_argument(
        "--report-every", type=int, help="pruner.report_every (default: hpo's, ~10 per fit)"
    )
    parser.add_argument("--epochs", type=int, help="max_epochs (default: the spec's)")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each way per trial")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--storage",
        choices=["memory", "sqlite"],
        help="where trials report (default memory; sqlite with --quick, so it runs too)",
    )
    parser.add_argument("--quick", action="store_true", help="1 trial of 2 epochs per case")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs, args.repeats = 1, 2, 1
    args.storage = args.storage or ("sqlite" if args.quick else "memory")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    print(
        f"# Epoch reports: {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} thread(s), report_every {args.report_every or 'unset'}, storage "
        f"{args.storage}; load at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory(prefix="hpo-epoch-reports-") as folder:
        args.opened_storage = (
            open_storage(f"sqlite:///{folder}/reports.db") if args.storage == "sqlite" else None
        )
        rows = [measure(name, args) for name in args.cases.split(",")]
    print(f"load at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        "| case | trials | over folds s/trial | over epochs s/trial | reports per trial | "
        "added (median of trials) | range |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        low, high = row["range"]
        print(
            f"| {row['case']} | {row['trials']} | {row['folds_s']:.2f} | {row['epochs_s']:.2f} "
            f"| {row['reports']} | **{row['median_share']:+.1%}** | {low:+.1%} to {high:+.1%} |"
        )


if __name__ == "__main__":
    main()
