"""Hostile input: a clear refusal, never a traceback, and nothing lost or leaked.

Each case feeds one bad input to the real ``hpo`` command, in-process (``typer.testing``): a
spec file, a command-line option, a storage URL, an environment variable or a data file. For
every case: the exit status is not 0 (exactly 2 for a bad spec or option), no exception but
``SystemExit`` escaped, the output has no traceback and one message that names the problem,
and the storage is unchanged: the same files in the case's folder (SQLite's transient
``-wal``/``-shm`` aside) and the same rows in the database; a case on a storage that did not
exist leaves no file behind.

Every case runs on its own copy of one registered study (``tiny-digits``, with one completed
trial added as a worker would leave it), in its own folder, which is also the working
directory, so a default ``hpo.db`` or ``results/`` would show up in the comparison. A case on
a full disk or a read-only file system gets a folder that is one (a tmpfs mounted for it;
skipped where this user may not mount).

Where a regression would hang (a FIFO read or written), the case fails after
``CASE_SECONDS`` instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from conftest import free_port, run_hpo, tiny_spec
from optuna.distributions import FloatDistribution, IntDistribution
from typer.testing import CliRunner

import hpo.service.storage as storage_module
from hpo.errors import SpecError
from hpo.service.cli import app
from hpo.spec.study_spec import load_spec

STUDY = "tiny-digits"
#: ``{pw}`` in a case: the output must not hold it anywhere, however rich wraps the lines.
PASSWORD = "Hunter2-s3cret"
GRID = "tiny-grid"
DATA_STUDY = "data-study"
runner = CliRunner()

#: Files SQLite makes and removes beside a database as connections come and go.
TRANSIENT = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Case:
    """One hostile input and what the refusal must say.

    ``args``, ``spec``, ``env``, ``files`` and ``data_spec`` may hold ``{db}`` (the case's
    SQLite URL), ``{dir}`` (its folder), ``{closed}`` (a port nothing listens on) and
    ``{pw}`` (a password: no case's output may show it, wherever the case puts it).

    Attributes:
        args: The command line after ``hpo``.
        says: Substrings the output must hold (whitespace ignored: rich wraps lines).
        exit: The exit status: 2 for a bad spec or a bad option, else 1.
        spec: ``{dir}/study.yaml``: YAML text, or ``tiny_spec`` overrides.
        files: More files in the folder: name to text, bytes, or a function writing it.
        env: Environment variables for the command.
        data_spec: ``tiny_spec`` overrides of a study named ``data-study``, registered into
            the copy before the snapshot (a study whose data a worker then reads).
        database: False: the case starts with no ``hpo.db`` at all.
        input: What the user types at a prompt.
        mount: ``"full"`` or ``"read-only"``: the case's folder is a tmpfs of its own (the
            case is skipped where this user may not mount one), filled up to its last 64 KiB
            or remounted read-only once the case's files are in place.
    """

    args: tuple[str, ...]
    says: tuple[str, ...]
    exit: int = 1
    spec: str | dict[str, Any] | None = None
    files: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    data_spec: dict[str, Any] | None = None
    database: bool = True
    input: str | None = None
    mount: str | None = None


def case(
    id: str,
    *args: str,
    says: str | tuple[str, ...],
    xfail: str | None = None,
    **options: Any,
) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    says = (says,) if isinstance(says, str) else says
    return pytest.param(Case(args, says, **options), id=id, marks=marks)


def spec_case(id: str, spec: str | dict[str, Any], *says: str, **options: Any) -> Any:
    """A bad study file given to ``hpo register``: exit 2, the key and the problem named."""
    return case(
        id,
        "register",
        "{dir}/study.yaml",
        "--storage",
        "{db}",
        says=says,
        exit=2,
        spec=spec,
        **options,
    )


def over(**overrides: Any) -> dict[str, Any]:
    return overrides


SPACE = tiny_spec()["space"]


def _fifo(path: Path) -> None:
    """A named pipe in place of the file: nothing ever writes to it (or reads it)."""
    path.unlink(missing_ok=True)
    os.mkfifo(path)


# --------------------------------------------------------------------------- spec files
SPEC_CASES = [
    spec_case("empty-file", "", "must hold a mapping"),
    spec_case("only-a-comment", "# nothing\n", "must hold a mapping"),
    spec_case("top-level-list", "- name: x\n", "must hold a mapping"),
    spec_case("top-level-scalar", "just text\n", "must hold a mapping"),
    spec_case("unclosed-bracket", "name: [x\n", "YAML syntax error", "line"),
    spec_case("tab-indent", "name: x\nfixed:\n\tlr: 1\n", "YAML syntax error"),
    spec_case("bad-indent", "name: x\n  model: mlp\n model: cnn\n", "YAML syntax error"),
    spec_case("unknown-tag", "name: !!python/object:os.system x\n", "YAML syntax error"),
    spec_case("duplicate-top-key", "name: a\nname: b\n", "duplicate key 'name'", "line 2"),
    spec_case("duplicate-nested-key", "DUPLICATE_LR", "duplicate key 'lr'"),
    spec_case("not-utf8", "", "not UTF-8", files={"study.yaml": b"name: \xff\xfe x\n"}),
    spec_case("binary-garbage", "", "study.yaml", files={"study.yaml": bytes(range(256))}),
    spec_case(
        "name-markup-close",
        over(name="[/]"),
        "name",
        "[/]",
    ),
    spec_case("name-markup-close-key", over(name="[/]"), "name", "hold only letters"),
    spec_case("name-markup-bold", over(name="[bold]x[/bold]"), "name"),
    spec_case("name-dotdot", over(name="../x"), "name"),
    spec_case("name-slash", over(name="a/b"), "name"),
    spec_case("name-empty", over(name=""), "name"),
    spec_case("name-space", over(name="my study"), "name"),
    spec_case("name-too-long", over(name="x" * 201), "name", "200"),
    spec_case("name-number", over(name=123), "name"),
    spec_case("name-null", over(name=None), "name"),
    spec_case("name-missing", "WITHOUT name", "name", "required"),
    spec_case("name-unicode", over(name="étude"), "name"),
    spec_case(
        "unknown-key-markup",
        over(**{"[/]": 1}),
        "[/]",
        "unknown key",
    ),
    spec_case(
        "unknown-key-bold",
        over(**{"[bold red]x": 1}),
        "[bold red]x",
        "unknown key",
    ),
    spec_case(
        "unknown-key-brackets",
        over(**{"samp[ler]": 1}),
        "samp[ler]",
        "unknown key",
    ),
    spec_case("unknown-key-unicode", over(**{"naïve—ключ": 1}), "naïve—ключ", "unknown key"),
    spec_case("unknown-key-typo", over(samplr={"name": "tpe"}), "samplr", "did you mean"),
    spec_case(
        "unknown-cv-key",
        over(cv={"fo[l]ds": 3}),
        "cv.fo[l]ds",
        "unknown key",
    ),
    spec_case("model-unknown", over(model="mlpp"), "unknown model 'mlpp'"),
    spec_case("model-markup", over(model="[red]mlp"), "[red]mlp"),
    spec_case("model-number", over(model=5), "model"),
    spec_case("model-missing", "WITHOUT model", "model", "required"),
    spec_case("dataset-missing", "WITHOUT dataset", "dataset", "required"),
    spec_case("dataset-unknown", over(dataset={"name": "digitz"}), "digitz", "did you mean"),
    spec_case("dataset-string", over(dataset="digits"), "dataset"),
    spec_case("dataset-name-number", over(dataset={"name": 5}), "dataset.name"),
    spec_case("dataset-bad-option", over(dataset={"name": "digits", "root": "x"}), "dataset.root"),
    spec_case("dataset-option-markup", over(dataset={"name": "digits", "[/]": 1}), "dataset.[/]"),
    spec_case(
        "csv-without-path",
        over(dataset={"name": "csv", "target": "y"}),
        "dataset.path",
        "required",
    ),
    spec_case(
        "csv-without-target",
        over(dataset={"name": "csv", "path": "x.csv"}),
        "dataset.target",
        "required",
    ),
    spec_case("npz-without-path", over(dataset={"name": "npz"}), "dataset.path", "required"),
    spec_case(
        "dataset-seed-negative", over(dataset={"name": "diabetes", "seed": -1}), "dataset.seed"
    ),
    spec_case(
        "dataset-seed-huge", over(dataset={"name": "diabetes", "seed": 2**40}), "dataset.seed"
    ),
    spec_case(
        "sampler-seed-negative", over(sampler={"name": "random", "seed": -1}), "sampler.seed"
    ),
    spec_case(
        "sampler-seed-huge", over(sampler={"name": "random", "seed": 2**64}), "sampler.seed"
    ),
    spec_case(
        "sampler-seed-text", over(sampler={"name": "random", "seed": "abc"}), "sampler.seed"
    ),
    spec_case("sampler-seed-float", over(sampler={"name": "random", "seed": 1.5}), "sampler.seed"),
    spec_case("sampler-seed-bool", over(sampler={"name": "random", "seed": True}), "sampler.seed"),
    spec_case("cv-seed-negative", over(cv={"folds": 2, "seed": -3}), "cv.seed"),
    spec_case("sampler-unknown", over(sampler={"name": "bayes"}), "sampler.name", "bayes"),
    spec_case(
        "sampler-option-unknown",
        over(sampler={"name": "tpe", "options": {"n_st": 1}}),
        "sampler.options.n_st",
    ),
    spec_case(
        "sampler-option-seed",
        over(sampler={"name": "tpe", "options": {"seed": 1}}),
        "sampler.options.seed",
    ),
    spec_case(
        "sampler-options-list", over(sampler={"name": "tpe", "options": [1]}), "sampler.options"
    ),
    spec_case("pruner-markup", over(pruner={"name": "[x]"}), "pruner.name", "[x]"),
    spec_case(
        "pruner-option-unknown",
        over(pruner={"name": "median", "options": {"x": 1}}),
        "pruner.options.x",
    ),
    spec_case("cv-folds-one", over(cv={"folds": 1}), "cv.folds"),
    spec_case("cv-folds-text", over(cv={"folds": "three"}), "cv.folds"),
    spec_case("cv-folds-float", over(cv={"folds": 2.5}), "cv.folds"),
    spec_case("cv-not-a-mapping", over(cv=3), "cv"),
    spec_case("budget-zero", over(budget={"trials": 0}), "budget.trials"),
    spec_case("budget-negative", over(budget={"trials": -1}), "budget.trials"),
    spec_case("budget-text", over(budget={"trials": "many"}), "budget.trials"),
    spec_case("budget-missing", over(budget={}), "budget.trials", "required"),
    spec_case(
        "budget-timeout-negative", over(budget={"trials": 2, "timeout": -1}), "budget.timeout"
    ),
    spec_case("budget-timeout-nan", "BUDGET_NAN", "budget.timeout", "finite"),
    spec_case("fixed-max-epochs-zero", over(fixed={"max_epochs": 0}), "fixed.max_epochs"),
    spec_case("fixed-batch-size-text", over(fixed={"batch_size": "two"}), "fixed.batch_size"),
    spec_case(
        "fixed-dropout-too-big", over(fixed={"module__dropout": 1.5}), "fixed.module__dropout"
    ),
    spec_case(
        "fixed-hidden-huge", over(fixed={"module__hidden2": 10**8}), "fixed.module__hidden2"
    ),
    spec_case("fixed-lr-negative", over(fixed={"lr": -0.1}), "fixed.lr"),
    spec_case("fixed-lr-zero", over(fixed={"lr": 0}), "fixed.lr"),
    spec_case(
        "fixed-validation-fraction-one",
        over(fixed={"validation_fraction": 1.0}),
        "fixed.validation_fraction",
    ),
    spec_case(
        "fixed-patience-zero",
        over(fixed={"early_stopping_patience": 0}),
        "fixed.early_stopping_patience",
    ),
    spec_case("fixed-depth-zero", over(fixed={"module__depth": 0}), "fixed.module__depth"),
    spec_case(
        "fixed-weight-decay-negative",
        over(fixed={"optimizer__weight_decay": -1}),
        "fixed.optimizer__weight_decay",
    ),
    spec_case(
        "fixed-activation-markup",
        over(fixed={"module__activation": "[b]relu"}),
        "fixed.module__activation",
        "[b]relu",
    ),
    spec_case(
        "fixed-optimizer-typo",
        over(fixed={"optimizer": "adamm"}),
        "fixed.optimizer",
        "did you mean",
    ),
    spec_case(
        "fixed-mixed-precision-text",
        over(fixed={"mixed_precision": "yes"}),
        "fixed.mixed_precision",
    ),
    spec_case(
        "fixed-batch-norm-int", over(fixed={"module__batch_norm": 1}), "fixed.module__batch_norm"
    ),
    spec_case("fixed-lr-nan", "FIXED_LR_NAN", "fixed.lr", "finite"),
    spec_case("fixed-lr-inf", "FIXED_LR_INF", "fixed.lr", "finite"),
    spec_case("fixed-lr-overflow", "FIXED_LR_1E400", "fixed.lr", "finite"),
    spec_case("fixed-key-markup", over(fixed={"[/]": 1}), "fixed.[/]", "not a parameter"),
    spec_case(
        "fixed-key-brackets", over(fixed={"module__hidden1[0]": 1}), "fixed.module__hidden1[0]"
    ),
    spec_case("fixed-key-number", "FIXED_INT_KEY", "fixed.1", "text"),
    spec_case("fixed-is-a-list", over(fixed=[1, 2]), "fixed"),
    spec_case("fixed-and-space", over(fixed={"lr": 0.01}), "fixed.lr", "also in space"),
    spec_case("space-no-type", over(space={"lr": {"low": 0.1, "high": 1}}), "space.lr"),
    spec_case(
        "space-type-unknown", over(space={"lr": {"type": "integer", "low": 1}}), "space.lr.type"
    ),
    spec_case(
        "space-type-markup", over(space={"lr": {"type": "[red]", "low": 1}}), "space.lr.type"
    ),
    spec_case(
        "space-low-above-high",
        over(space={"lr": {"type": "float", "low": 0.1, "high": 0.01}}),
        "space.lr",
    ),
    spec_case(
        "space-log-zero",
        over(space={"lr": {"type": "float", "low": 0, "high": 0.1, "log": True}}),
        "space.lr",
    ),
    spec_case(
        "space-int-float-bounds",
        over(space={"module__hidden1": {"type": "int", "low": 8.5, "high": 32}}),
        "space.module__hidden1",
    ),
    spec_case(
        "space-hidden-huge",
        over(space={"module__hidden1": {"type": "int", "low": 8, "high": 10**12}}),
        "space.module__hidden1.high",
    ),
    spec_case(
        "space-dropout-range",
        over(space={"module__dropout": {"type": "float", "low": 0.1, "high": 1.5}}),
        "space.module__dropout.high",
    ),
    spec_case(
        "space-float-for-int-key",
        over(space={"max_epochs": {"type": "float", "low": 1, "high": 5}}),
        "space.max_epochs",
        "type: int",
    ),
    spec_case(
        "space-choices-empty",
        over(space={"optimizer": {"type": "categorical", "choices": []}}),
        "space.optimizer",
    ),
    spec_case(
        "space-choices-not-list",
        over(space={"optimizer": {"type": "categorical", "choices": "adam"}}),
        "space.optimizer",
    ),
    spec_case(
        "space-choice-unknown",
        over(space={"optimizer": {"type": "categorical", "choices": ["adam", "[/]"]}}),
        "space.optimizer",
        "[/]",
    ),
    spec_case(
        "space-choice-repeated",
        over(space={"optimizer": {"type": "categorical", "choices": ["adam", "adam", "sgd"]}}),
        "space.optimizer: choice 'adam' is given twice",
    ),
    spec_case(
        "space-choice-repeated-as-another-number",
        over(space={"batch_size": {"type": "categorical", "choices": [32, 32.0]}}, fixed={}),
        "space.batch_size: choice 32 is given twice, as 32 and 32.0",
    ),
    spec_case(
        "grid-choice-repeated",
        over(
            sampler={"name": "grid"},
            budget={},
            space={"optimizer": {"type": "categorical", "choices": ["adam", "sgd", "adam"]}},
        ),
        "space.optimizer: choice 'adam' is given twice",
    ),
    spec_case(
        "grid-warm-start-repeated",
        over(
            sampler={"name": "grid"},
            budget={},
            space={"optimizer": {"type": "categorical", "choices": ["adam", "sgd"]}},
            enqueue=[{"optimizer": "adam"}, {"optimizer": "adam"}],
        ),
        "enqueue[1]: the same point as enqueue[0]",
    ),
    spec_case(
        "space-step-negative",
        over(space={"lr": {"type": "float", "low": 0.01, "high": 0.1, "step": -0.01}}),
        "space.lr",
    ),
    spec_case(
        "space-bound-unknown-ref",
        over(space={"module__hidden1": {"type": "int", "low": 8, "high": "nope"}}),
        "space.module__hidden1",
        "nope",
    ),
    spec_case(
        "space-bound-later-ref",
        over(
            space={
                "module__hidden2": {"type": "int", "low": 8, "high": "module__hidden1"},
                "module__hidden1": {"type": "int", "low": 8, "high": 32},
            }
        ),
        "space.module__hidden2",
        "earlier",
    ),
    spec_case(
        "space-key-markup", over(space={"[/]": {"type": "int", "low": 1, "high": 2}}), "space.[/]"
    ),
    spec_case(
        "space-key-unicode",
        over(space={"ключ": {"type": "int", "low": 1, "high": 2}}),
        "space.ключ",
    ),
    spec_case("space-low-nan", "SPACE_LOW_NAN", "space.lr.low", "finite"),
    spec_case("space-is-a-list", over(space=[1]), "space"),
    spec_case(
        "grid-float-without-step", over(sampler={"name": "grid"}, budget={}), "space.lr", "step"
    ),
    spec_case(
        "grid-huge",
        over(
            sampler={"name": "grid"},
            budget={},
            space={
                f"module__hidden{i}": {"type": "int", "low": 1, "high": 10**5} for i in range(1, 4)
            },
        ),
        "space",
        "points",
    ),
    spec_case(
        "grid-budget-mismatch",
        over(
            sampler={"name": "grid"},
            budget={"trials": 7},
            space={"optimizer": {"type": "categorical", "choices": ["adam", "sgd"]}},
        ),
        "budget.trials",
    ),
    spec_case("scoring-typo", over(scoring="acuracy"), "scoring", "did you mean"),
    spec_case("scoring-number", over(scoring=5), "scoring"),
    spec_case("direction-minimize", over(direction="minimize"), "direction"),
    spec_case("direction-unknown", over(direction="up"), "direction"),
    spec_case("criterion-unknown", over(criterion="mse2"), "criterion", "mse2"),
    spec_case("preprocess-unknown", over(preprocess="zscore"), "preprocess", "zscore"),
    spec_case(
        "enqueue-missing-key", over(enqueue=[{"lr": 0.01}]), "enqueue[0]", "module__hidden1"
    ),
    spec_case(
        "enqueue-extra-key",
        over(enqueue=[{"lr": 0.01, "module__hidden1": 8, "x[0]": 1}]),
        "enqueue[0].x[0]",
    ),
    spec_case(
        "enqueue-out-of-range",
        over(enqueue=[{"lr": 5.0, "module__hidden1": 8}]),
        "enqueue[0].lr",
        "outside",
    ),
    spec_case(
        "enqueue-not-a-number",
        over(enqueue=[{"lr": "fast", "module__hidden1": 8}]),
        "enqueue[0].lr",
        "not a number",
    ),
    spec_case(
        "enqueue-not-integer",
        over(enqueue=[{"lr": 0.01, "module__hidden1": 8.5}]),
        "enqueue[0].module__hidden1",
        "not an integer",
    ),
    spec_case("spec-enqueue-nan", "ENQUEUE_NAN", "enqueue[0].lr", "finite"),
    spec_case("enqueue-not-a-list", over(enqueue={"lr": 0.01}), "enqueue"),
    spec_case("description-not-text", over(description=["a"]), "description"),
    spec_case("spec-file-missing", "", "does not exist", files={"study.yaml": None}),
    spec_case("spec-is-a-folder", "", "folder", files={"study.yaml": "FOLDER"}),
    # issue 25: what no machine can honour, refused with the bound and why
    spec_case(
        "spec-nested-deep",
        "name: x\nfixed: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "nests more than 50 levels deep",
    ),
    spec_case(
        "spec-nested-deep-mappings",
        "name: x\nfixed: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n",
        "nests more than 50 levels deep",
    ),
    spec_case("spec-alias-bomb", "ALIAS_BOMB", "more than 100,000 values", "aliases"),
    spec_case(
        "spec-alias-bomb-of-mappings",
        "ALIAS_BOMB_OF_MAPPINGS",
        "more than 100,000 values",
        "aliases",
    ),
    spec_case(
        "spec-too-large",
        "",
        "study.yaml",
        "larger than the 1 MiB hpo reads",
        files={"study.yaml": b"# padding\n" * 110_000},
    ),
    spec_case("spec-fifo", "", "study.yaml", "named pipe (FIFO)", files={"study.yaml": _fifo}),
    case(
        "spec-dev-zero",
        "register",
        "/dev/zero",
        *("--storage", "{db}"),
        says=("/dev/zero", "character device"),
        exit=2,
    ),
    case(
        "run-spec-dev-zero",
        "run",
        "/dev/zero",
        *("--storage", "{db}"),
        says=("/dev/zero", "character device"),
        exit=2,
    ),
    spec_case("budget-trials-true", over(budget={"trials": True}), "budget.trials", "not true"),
    spec_case(
        "budget-trials-huge",
        over(budget={"trials": 10**7}),
        "budget.trials: must be at most 1,000,000",
        "Optuna's samplers read every finished trial",
    ),
    spec_case("cv-folds-huge", "CV_FOLDS_1E30", "cv.folds: must be at most 100", "each fold"),
    spec_case("cv-folds-true", over(cv={"folds": True}), "cv.folds", "not true"),
    spec_case(
        "budget-timeout-huge",
        over(budget={"trials": 2, "timeout": 1e308}),
        "budget.timeout: must be at most 31,622,400 s",
        "leave timeout out",
    ),
    spec_case(
        "fixed-max-epochs-huge",
        over(fixed={"max_epochs": 10**9}),
        "fixed.max_epochs: must be a whole number from 1 to 100000",
        "train until killed",
    ),
    spec_case(
        "space-max-epochs-huge",
        over(space={"max_epochs": {"type": "int", "low": 1, "high": 10**9}}, fixed={}),
        "space.max_epochs.high",
        "100000",
    ),
    spec_case(
        "fixed-batch-size-huge",
        over(fixed={"max_epochs": 3, "batch_size": 10**9}),
        "fixed.batch_size: must be a whole number from 1 to 1e+07",
        "held in memory at once",
    ),
    spec_case(
        "fixed-units-huge",
        over(fixed={"max_epochs": 3, "module__hidden1": 10**6}, space={"lr": SPACE["lr"]}),
        "fixed.module__hidden1",
        "100000",
        "more weights than a GPU's memory",
    ),
    spec_case(
        "grid-100k-points",
        over(
            sampler={"name": "grid"},
            budget={},
            space={"module__hidden1": {"type": "int", "low": 1, "high": 100_000}},
        ),
        "space: the grid has 100,000 points, more than the 10,000 a study may run",
        "about 5 ms each",
    ),
    spec_case(
        "enqueue-too-many",
        over(enqueue=[{"module__hidden1": 8, "lr": 0.01}] * 10_001),
        "enqueue: 10,001 points, more than the 10,000",
    ),
]

#: Spec texts that YAML dumping cannot write (NaN, infinities, an int key, a repeated key).
RAW_SPECS = {
    "BUDGET_NAN": {"budget": "{trials: 2, timeout: .nan}"},
    "FIXED_LR_NAN": {"fixed": "{max_epochs: 3, lr: .nan}"},
    "FIXED_LR_INF": {"fixed": "{max_epochs: 3, lr: -.inf}"},
    "FIXED_LR_1E400": {"fixed": "{max_epochs: 3, lr: 1e400}"},
    "FIXED_INT_KEY": {"fixed": "{max_epochs: 3, 1: 2}"},
    "SPACE_LOW_NAN": {
        "space": "{module__hidden1: {type: int, low: 8, high: 32}, "
        "lr: {type: float, low: .nan, high: 0.1}}"
    },
    "ENQUEUE_NAN": {"enqueue": "[{module__hidden1: 8, lr: .nan}]"},
    "CV_FOLDS_1E30": {"cv": "{folds: 1e30}"},
}


def _alias_bomb(leaf: str, link: Callable[[str], str]) -> str:
    """Nine levels of ten aliases each: 10**9 values from ten lines (the billion laughs)."""
    lines = [f"l0: &l0 {leaf}"]
    lines += [f"l{level}: &l{level} {link(f'*l{level - 1}')}" for level in range(1, 10)]
    return "\n".join(lines) + "\n"


#: Alias bombs, each with a spec's keys around it.
ALIAS_BOMBS = {
    "ALIAS_BOMB": _alias_bomb(
        "[x, x, x, x, x, x, x, x, x, x]", lambda alias: "[" + ", ".join([alias] * 10) + "]"
    ),
    "ALIAS_BOMB_OF_MAPPINGS": _alias_bomb(
        "{" + ", ".join(f"k{i}: x" for i in range(10)) + "}",
        lambda alias: "{" + ", ".join(f"k{i}: {alias}" for i in range(10)) + "}",
    ),
}


def _spec_text(spec: str | dict[str, Any]) -> str:
    if spec == "DUPLICATE_LR":
        text = yaml.safe_dump(tiny_spec(), sort_keys=False)
        return text.replace("  lr:\n", "  lr: {type: float, low: 0.1, high: 0.2}\n  lr:\n", 1)
    if isinstance(spec, dict):
        return yaml.safe_dump(tiny_spec(**spec), sort_keys=False, allow_unicode=True)
    if spec.startswith("WITHOUT "):
        without = {k: v for k, v in tiny_spec().items() if k != spec.removeprefix("WITHOUT ")}
        return yaml.safe_dump(without, sort_keys=False)
    if spec in ALIAS_BOMBS:
        return ALIAS_BOMBS[spec] + yaml.safe_dump(tiny_spec(), sort_keys=False)
    if spec in RAW_SPECS:
        raw = {**tiny_spec(), **RAW_SPECS[spec]}
        lines = [
            f"{key}: {value}"
            if key in RAW_SPECS[spec]
            else yaml.safe_dump({key: value}, sort_keys=False).rstrip()
            for key, value in raw.items()
        ]
        return "\n".join(lines) + "\n"
    return spec


# --------------------------------------------------------------------------- the CLI
def _cmd(id: str, *args: str, says: Any, exit: int = 1, **options: Any) -> Any:
    return case(id, *args, says=says, exit=exit, **options)


DB = ("--storage", "{db}")
CLI_CASES = [
    # run (the same spec checks as register; bad options are refused before any work)
    _cmd(
        "run-workers-zero",
        "run",
        "{dir}/study.yaml",
        "--workers",
        "0",
        *DB,
        says="--workers",
        exit=2,
        spec={},
    ),
    _cmd(
        "run-trials-zero",
        "run",
        "{dir}/study.yaml",
        "--trials",
        "0",
        *DB,
        says="--trials",
        exit=2,
        spec={},
    ),
    _cmd(
        "run-trials-text",
        "run",
        "{dir}/study.yaml",
        "--trials",
        "ten",
        *DB,
        says="--trials",
        exit=2,
        spec={},
    ),
    _cmd(
        "run-heartbeat-negative",
        "run",
        "{dir}/study.yaml",
        "--heartbeat",
        "-1",
        *DB,
        says="--heartbeat",
        exit=2,
        spec={},
    ),
    _cmd(
        "run-bad-spec",
        "run",
        "{dir}/study.yaml",
        *DB,
        says="cv.folds",
        exit=2,
        spec={"cv": {"folds": 1}},
    ),
    _cmd("run-missing-spec", "run", "{dir}/nope.yaml", *DB, says="does not exist", exit=2),
    _cmd(
        "run-changed-spec",
        "run",
        "{dir}/study.yaml",
        *DB,
        says=("already registered with a different spec", "hpo delete"),
        spec={"budget": {"trials": 9}},
    ),
    _cmd(
        "register-changed-spec",
        "register",
        "{dir}/study.yaml",
        *DB,
        says=("already registered with a different spec", "budget"),
        spec={"budget": {"trials": 9}},
    ),
    _cmd("register-no-file", "register", *DB, says="Missing argument", exit=2),
    _cmd(
        "register-not-a-module",
        "register",
        "{dir}/study.yaml",
        "--allow-module",
        "os",
        *DB,
        says=("os:system", "not a torch.nn.Module"),
        spec={"model": "os:system"},
    ),
    _cmd(
        "register-untrusted-module",
        "register",
        "{dir}/study.yaml",
        *DB,
        says=("os:system", "not trusted here", "--allow-module os"),
        spec={"model": "os:system"},
    ),
    # worker
    _cmd(
        "worker-trials-zero",
        "worker",
        "--study",
        STUDY,
        "--trials",
        "0",
        *DB,
        says="--trials",
        exit=2,
    ),
    _cmd(
        "worker-trials-negative",
        "worker",
        "--study",
        STUDY,
        "--trials",
        "-1",
        *DB,
        says="--trials",
        exit=2,
    ),
    _cmd(
        "worker-trials-text",
        "worker",
        "--study",
        STUDY,
        "--trials",
        "x",
        *DB,
        says="--trials",
        exit=2,
    ),
    _cmd(
        "worker-index-negative",
        "worker",
        "--study",
        STUDY,
        "--index",
        "-1",
        *DB,
        says="--index",
        exit=2,
    ),
    _cmd(
        "worker-index-text",
        "worker",
        "--study",
        STUDY,
        "--index",
        "one",
        *DB,
        says="--index",
        exit=2,
    ),
    _cmd(
        "worker-threads-zero",
        "worker",
        "--study",
        STUDY,
        "--threads",
        "0",
        *DB,
        says="--threads",
        exit=2,
    ),
    _cmd(
        "worker-threads-text",
        "worker",
        "--study",
        STUDY,
        "--threads",
        "x",
        *DB,
        says="--threads",
        exit=2,
    ),
    _cmd(
        "worker-folds-at-once-zero",
        "worker",
        "--study",
        STUDY,
        "--folds-at-once",
        "0",
        *DB,
        says="--folds-at-once",
        exit=2,
    ),
    _cmd(
        "worker-heartbeat-text",
        "worker",
        "--study",
        STUDY,
        "--heartbeat",
        "soon",
        *DB,
        says="--heartbeat",
        exit=2,
    ),
    _cmd(
        "worker-heartbeat-nan",
        "worker",
        "--study",
        STUDY,
        "--heartbeat",
        "nan",
        *DB,
        says="--heartbeat",
        exit=2,
    ),
    _cmd(
        "worker-heartbeat-inf",
        "worker",
        "--study",
        STUDY,
        "--heartbeat",
        "inf",
        *DB,
        says=("--heartbeat", "finite"),
    ),
    _cmd(
        "worker-heartbeat-huge",
        "worker",
        "--study",
        STUDY,
        "--heartbeat",
        "1e308",
        *DB,
        says=("--heartbeat must be at most 86,400 s", "twice this late"),
    ),
    _cmd(
        "run-heartbeat-huge",
        "run",
        "{dir}/study.yaml",
        "--heartbeat",
        "1e308",
        *DB,
        says="--heartbeat must be at most 86,400 s",
        spec={"name": "another"},
    ),
    _cmd(
        "worker-trials-huge",
        "worker",
        "--study",
        STUDY,
        "--trials",
        "10000000",
        *DB,
        says=("--trials", "1000000"),
        exit=2,
    ),
    _cmd("worker-device-unknown", "worker", "--study", STUDY, "--device", "tpu", *DB, says="tpu"),
    _cmd("worker-device-markup", "worker", "--study", STUDY, "--device", "[/]", *DB, says="[/]"),
    _cmd(
        "worker-device-no-such-gpu",
        "worker",
        "--study",
        STUDY,
        "--device",
        "cuda:99",
        *DB,
        says="cuda",
    ),
    _cmd("worker-device-empty", "worker", "--study", STUDY, "--device", "", *DB, says="device"),
    _cmd("worker-no-study-option", "worker", *DB, says="--study", exit=2),
    _cmd(
        "worker-study-markup",
        "worker",
        "--study",
        "[/]",
        "--device",
        "cpu",
        *DB,
        says=("no study named '[/]'", STUDY),
    ),
    _cmd(
        "worker-study-dotdot",
        "worker",
        "--study",
        "../x",
        "--device",
        "cpu",
        *DB,
        says="no study named '../x'",
    ),
    _cmd(
        "worker-study-empty",
        "worker",
        "--study",
        "",
        "--device",
        "cpu",
        *DB,
        says="no study named ''",
    ),
    _cmd(
        "worker-study-long",
        "worker",
        "--study",
        "y" * 3000,
        "--device",
        "cpu",
        *DB,
        says="no study named 'yyyy",
    ),
    _cmd(
        "worker-untrusted-allow-module",
        "worker",
        "--study",
        DATA_STUDY,
        "--device",
        "cpu",
        *DB,
        says=("torch.nn:Linear", "--allow-module"),
        data_spec={
            "model": "torch.nn:Linear",
            "fixed": {"max_epochs": 1, "module__in_features": 64, "module__out_features": 10},
            "space": {"lr": SPACE["lr"]},
        },
    ),
    # studies, export, delete, refit, report, enqueue
    _cmd("studies-extra-argument", "studies", "x", *DB, says="unexpected extra", exit=2),
    _cmd("export-study-markup", "export", "[/]", *DB, says="no study named '[/]'"),
    _cmd("export-study-bold", "export", "[bold]x", *DB, says="no study named '[bold]x'"),
    _cmd("export-study-dotdot", "export", "../x", *DB, says="no study named '../x'"),
    _cmd("export-study-empty", "export", "", *DB, says="no study named ''"),
    _cmd("export-study-long", "export", "z" * 5000, *DB, says="no study named 'zzzz"),
    _cmd("export-study-newline", "export", "a\nb", *DB, says="no study named 'a\\nb'"),
    _cmd(
        "export-out-under-a-file",
        "export",
        STUDY,
        "--out",
        "{dir}/study.yaml/x.csv",
        *DB,
        says="study.yaml",
        spec={},
    ),
    _cmd("export-out-a-folder", "export", STUDY, "--out", "{dir}", *DB, says="{dir}"),
    _cmd(
        "export-out-dev-full",
        "export",
        STUDY,
        "--out",
        "/dev/full",
        *DB,
        says=("/dev/full", "character device"),
    ),
    _cmd(
        "export-out-fifo",
        "export",
        STUDY,
        "--out",
        "{dir}/out.csv",
        *DB,
        says=("{dir}/out.csv", "named pipe (FIFO)"),
        files={"out.csv": _fifo},
    ),
    _cmd(
        "report-out-dev-full",
        "report",
        STUDY,
        "--out",
        "/dev/full",
        *DB,
        says=("/dev/full", "character device"),
    ),
    _cmd(
        "report-out-fifo",
        "report",
        STUDY,
        "--out",
        "{dir}/report.html",
        *DB,
        says=("{dir}/report.html", "named pipe (FIFO)"),
        files={"report.html": _fifo},
    ),
    _cmd("export-no-completed-trial", "export", GRID, *DB, says="no completed trial"),
    _cmd("delete-study-markup", "delete", "[/]", "--yes", *DB, says="no study named '[/]'"),
    _cmd("delete-study-empty", "delete", "", "--yes", *DB, says="no study named ''"),
    _cmd("delete-said-no", "delete", STUDY, *DB, says="not deleted", input="n\n"),
    _cmd("delete-no-answer", "delete", STUDY, *DB, says="Abort", input=""),
    _cmd("refit-study-markup", "refit", "[/]", *DB, says="no study named '[/]'"),
    _cmd("refit-device-unknown", "refit", STUDY, "--device", "tpu", *DB, says="tpu"),
    _cmd(
        "refit-no-completed-trial",
        "refit",
        GRID,
        "--device",
        "cpu",
        *DB,
        says="no completed trial",
    ),
    _cmd("report-study-markup", "report", "[/]", *DB, says="no study named '[/]'"),
    _cmd("report-study-dotdot", "report", "../x", *DB, says="no study named '../x'"),
    _cmd("enqueue-no-point", "enqueue", STUDY, *DB, says="Missing argument", exit=2),
    _cmd("enqueue-no-equals", "enqueue", STUDY, "lr", *DB, says="'lr' is not key=value"),
    _cmd("enqueue-no-key", "enqueue", STUDY, "=1", *DB, says="'=1' is not key=value"),
    _cmd("enqueue-twice", "enqueue", STUDY, "lr=0.01", "lr=0.02", *DB, says="lr is given twice"),
    _cmd(
        "enqueue-list",
        "enqueue",
        STUDY,
        "lr=[1, 2]",
        "module__hidden1=8",
        *DB,
        says="lr: give one value",
    ),
    _cmd(
        "enqueue-mapping",
        "enqueue",
        STUDY,
        "lr={a: 1}",
        "module__hidden1=8",
        *DB,
        says="lr: give one value",
    ),
    _cmd(
        "enqueue-text-value",
        "enqueue",
        STUDY,
        "lr=abc",
        "module__hidden1=8",
        *DB,
        says=("lr", "not a number"),
    ),
    _cmd(
        "enqueue-unknown-key",
        "enqueue",
        STUDY,
        "lr=0.01",
        "module__hidden1=8",
        "x=1",
        *DB,
        says=("x", "not a parameter in space"),
    ),
    _cmd(
        "enqueue-key-markup",
        "enqueue",
        STUDY,
        "lr=0.01",
        "module__hidden1=8",
        "[/]=1",
        *DB,
        says="[/]",
    ),
    _cmd("enqueue-missing-key", "enqueue", STUDY, "lr=0.01", *DB, says="module__hidden1"),
    _cmd(
        "enqueue-out-of-range",
        "enqueue",
        STUDY,
        "lr=5",
        "module__hidden1=8",
        *DB,
        says=("lr", "outside"),
    ),
    _cmd(
        "enqueue-nan", "enqueue", STUDY, "lr=.nan", "module__hidden1=8", *DB, says=("lr", "finite")
    ),
    _cmd(
        "enqueue-inf", "enqueue", STUDY, "lr=.inf", "module__hidden1=8", *DB, says=("lr", "finite")
    ),
    _cmd(
        "enqueue-overflow",
        "enqueue",
        STUDY,
        "lr=0.01",
        "module__hidden1=1e999",
        *DB,
        says=("module__hidden1", "finite"),
    ),
    _cmd(
        "enqueue-huge-int",
        "enqueue",
        STUDY,
        "lr=0.01",
        "module__hidden1=" + "9" * 50,
        *DB,
        says=("module__hidden1", "outside"),
    ),
    _cmd(
        "enqueue-5000-digits",
        "enqueue",
        STUDY,
        "lr=0.01",
        "module__hidden1=" + "9" * 5000,
        *DB,
        says=("module__hidden1: a value of 5,000 characters", "at most 100"),
    ),
    _cmd(
        "enqueue-bool",
        "enqueue",
        STUDY,
        "lr=true",
        "module__hidden1=8",
        *DB,
        says=("lr", "not a number"),
    ),
    _cmd(
        "enqueue-empty-value",
        "enqueue",
        STUDY,
        "lr=",
        "module__hidden1=8",
        *DB,
        says=("lr", "not a number"),
    ),
    _cmd(
        "enqueue-bad-yaml",
        "enqueue",
        STUDY,
        "lr=[",
        "module__hidden1=8",
        *DB,
        says=("lr", "not a number"),
    ),
    _cmd("enqueue-study-markup", "enqueue", "[/]", "lr=0.01", *DB, says="no study named '[/]'"),
    _cmd("enqueue-grid", "enqueue", GRID, "optimizer=adam", *DB, says="is a grid"),
    # servers (refused before they listen)
    _cmd("dashboard-port-too-big", "dashboard", "--port", "99999", *DB, says="--port", exit=2),
    _cmd("dashboard-port-zero", "dashboard", "--port", "0", *DB, says="--port", exit=2),
    _cmd("dashboard-port-negative", "dashboard", "--port", "-1", *DB, says="--port", exit=2),
    _cmd("dashboard-port-text", "dashboard", "--port", "http", *DB, says="--port", exit=2),
    _cmd(
        "dashboard-host-exposed",
        "dashboard",
        "--host",
        "0.0.0.0",
        *DB,
        says=("--host 0.0.0.0", "--expose"),
        exit=2,
    ),
    _cmd(
        "dashboard-host-markup",
        "dashboard",
        "--host",
        "[/]",
        *DB,
        says=("--host [/]", "--expose"),
        exit=2,
    ),
    _cmd(
        "dashboard-host-unresolvable",
        "dashboard",
        "--host",
        "no-such-host.invalid",
        "--expose",
        "--insecure",
        "--port",
        "{closed}",
        *DB,
        says="cannot listen on no-such-host.invalid",
    ),
    _cmd(
        "dashboard-port-in-use",
        "dashboard",
        "--port",
        "{held}",
        *DB,
        says=("cannot listen on 127.0.0.1", "--port"),
    ),
    _cmd(
        "storage-proxy-port-too-big",
        "storage-proxy",
        "--port",
        "99999",
        *DB,
        says="--port",
        exit=2,
    ),
    _cmd("storage-proxy-port-zero", "storage-proxy", "--port", "0", *DB, says="--port", exit=2),
    _cmd(
        "storage-proxy-host-exposed",
        "storage-proxy",
        "--host",
        "10.1.2.3",
        *DB,
        says=("--host 10.1.2.3", "--expose"),
        exit=2,
    ),
    # issue 25: an exposed server is locked, or refused
    _cmd(
        "dashboard-exposed-without-credential",
        "dashboard",
        "--host",
        "0.0.0.0",
        "--expose",
        "--port",
        "{closed}",
        *DB,
        says=("--expose on 0.0.0.0 needs a credential: --auth-file PATH", "--insecure"),
        exit=2,
    ),
    *[
        _cmd(
            f"dashboard-auth-file-{name}",
            "dashboard",
            "--auth-file",
            "{dir}/auth",
            "--port",
            "{closed}",
            *DB,
            says=says,
            files=files,
        )
        for name, files, says in (
            ("missing", {}, ("cannot read the --auth-file {dir}/auth", "No such file")),
            ("empty", {"auth": ""}, "the --auth-file {dir}/auth is empty"),
            ("fifo", {"auth": _fifo}, ("{dir}/auth", "named pipe (FIFO)")),
            ("folder", {"auth": "FOLDER"}, ("{dir}/auth", "folder")),
            ("short-password", {"auth": "hpo:pw\n"}, "shorter than 8 characters"),
            ("short-token", {"auth": "tok\n"}, "token in the --auth-file"),
            ("no-user", {"auth": ":{pw}\n"}, "without a user name"),
            ("huge", {"auth": "hpo:{pw}\n" + "x" * 2**16}, "larger than the 64 KiB"),
        )
    ],
    _cmd(
        "dashboard-auth-file-dev-zero",
        "dashboard",
        "--auth-file",
        "/dev/zero",
        *DB,
        says=("/dev/zero", "character device"),
    ),
    _cmd(
        "dashboard-allowed-host-url",
        "dashboard",
        "--allowed-host",
        "http://hpo.example/",
        *DB,
        says=("--allowed-host 'http://hpo.example/'", "not a host name"),
        exit=2,
    ),
    _cmd(
        "storage-proxy-exposed-without-insecure",
        "storage-proxy",
        "--host",
        "0.0.0.0",
        "--expose",
        "--port",
        "{closed}",
        *DB,
        says=("hpo storage-proxy cannot be secured", "no server credentials", "--insecure"),
        exit=2,
    ),
    _cmd(
        "storage-proxy-of-a-proxy",
        "storage-proxy",
        "--storage",
        "grpc://127.0.0.1:13000",
        says="not another proxy",
    ),
    _cmd("unknown-command", "optimise", says="No such command", exit=2),
    _cmd("unknown-option", "studies", "--storag", "x", says="No such option", exit=2),
]

# --------------------------------------------------------------------------- storage URLs
# (hpo dashboard makes a missing database, to watch studies as they come: test_cli.py)
READ_ONLY_COMMANDS = {
    "studies": ("studies",),
    "export": ("export", STUDY),
    "refit": ("refit", STUDY, "--device", "cpu"),
    "report": ("report", STUDY),
    "enqueue": ("enqueue", STUDY, "lr=0.01", "module__hidden1=8"),
    "delete": ("delete", STUDY, "--yes"),
    "worker": ("worker", "--study", STUDY, "--device", "cpu"),
}

STORAGE_CASES = [
    *[
        case(
            f"{name}-missing-database",
            *args,
            "--storage",
            "sqlite:///{dir}/nope/hpo.db",
            says=("no database at {dir}/nope/hpo.db", "register a study first"),
            database=False,
        )
        for name, args in READ_ONLY_COMMANDS.items()
    ],
    *[
        case(
            f"{name}-missing-file-in-folder",
            *args,
            "--storage",
            "sqlite:///{dir}/hpo.db",
            says="no database at {dir}/hpo.db",
            database=False,
        )
        for name, args in READ_ONLY_COMMANDS.items()
    ],
    case(
        "studies-default-storage-missing",
        "studies",
        says="no database at hpo.db",
        database=False,
        env={"HPO_STORAGE": ""},
    ),
    case(
        "export-env-storage-missing",
        "export",
        STUDY,
        says="no database at {dir}/env.db",
        database=False,
        env={"HPO_STORAGE": "sqlite:///{dir}/env.db"},
    ),
    case(
        "studies-missing-markup-path",
        "studies",
        "--storage",
        "sqlite:///{dir}/[b]x.db",
        says="no database at {dir}/[b]x.db",
        database=False,
    ),
    case(
        "studies-uri-missing",
        "studies",
        "--storage",
        "sqlite:///file:{dir}/gone.db?mode=ro&uri=true",
        says="no database at {dir}/gone.db",
        database=False,
    ),
    case(
        "studies-empty-file",
        "studies",
        "--storage",
        "sqlite:///{dir}/empty.db",
        says=("no hpo studies at {dir}/empty.db", "empty file"),
        files={"empty.db": ""},
    ),
    case(
        "studies-other-database",
        "studies",
        "--storage",
        "sqlite:///{dir}/other.db",
        says=("no hpo studies at {dir}/other.db", "without Optuna"),
        files={"other.db": lambda path: _other_database(path)},
    ),
    *[
        case(
            f"{name}-folder-as-database",
            *args,
            "--storage",
            "sqlite:///{dir}",
            says=("{dir} is a folder",),
            spec={},
        )
        for name, args in (
            ("studies", ("studies",)),
            ("register", ("register", "{dir}/study.yaml")),
            ("worker", ("worker", "--study", STUDY, "--device", "cpu")),
        )
    ],
    *[
        case(
            f"{name}-text-file-as-database",
            *args,
            "--storage",
            "sqlite:///{dir}/study.yaml",
            says=("{dir}/study.yaml is not a SQLite database",),
            spec={},
        )
        for name, args in (
            ("studies", ("studies",)),
            ("register", ("register", "{dir}/study.yaml")),
            ("export", ("export", STUDY)),
            ("worker", ("worker", "--study", STUDY, "--device", "cpu")),
        )
    ],
    case(
        "register-under-a-file",
        "register",
        "{dir}/study.yaml",
        "--storage",
        "sqlite:///{dir}/study.yaml/sub/hpo.db",
        says="is a file, not a folder",
        spec={},
    ),
    case(
        "studies-unknown-scheme",
        "studies",
        "--storage",
        "foo://",
        says=("foo://", "not a database"),
    ),
    case(
        "register-unknown-scheme",
        "register",
        "{dir}/study.yaml",
        "--storage",
        "foo://x",
        says="not a database",
        spec={},
    ),
    case("studies-not-a-url", "studies", "--storage", "hpo.db", says="cannot parse storage URL"),
    case(
        "studies-port-not-a-number",
        "studies",
        "--storage",
        "postgresql://h:notaport/db",
        says="cannot parse storage URL",
    ),
    case(
        "studies-port-too-big",
        "studies",
        "--storage",
        "postgresql+psycopg://u@127.0.0.1:99999/db",
        says="cannot",
    ),
    case(
        "studies-postgres-refused",
        "studies",
        "--storage",
        "postgresql+psycopg://u:secret[/]@127.0.0.1:{closed}/db",
        says=("cannot open the storage", "***"),
    ),
    case(
        "studies-missing-driver",
        "studies",
        "--storage",
        "mysql+nodriver://u@h/db",
        says="cannot open",
    ),
    case("studies-empty-storage", "studies", "--storage", "", says="--storage is empty"),
    case("studies-blank-storage", "studies", "--storage", "   ", says="--storage is empty"),
    case(
        "studies-grpc-closed-port",
        "studies",
        "--storage",
        "grpc://127.0.0.1:{closed}",
        says=("no storage proxy answers at grpc://127.0.0.1:{closed}", "hpo storage-proxy"),
    ),
    case(
        "worker-grpc-closed-port",
        "worker",
        "--study",
        STUDY,
        "--device",
        "cpu",
        "--storage",
        "grpc://127.0.0.1:{closed}",
        says="no storage proxy answers",
    ),
    case(
        "register-grpc-closed-port",
        "register",
        "{dir}/study.yaml",
        "--storage",
        "grpc://127.0.0.1:{closed}",
        says="no storage proxy answers",
        spec={},
    ),
    case(
        "studies-grpc-no-port",
        "studies",
        "--storage",
        "grpc://127.0.0.1",
        says="needs a host and a port",
    ),
    case(
        "studies-grpc-port-text",
        "studies",
        "--storage",
        "grpc://h:port",
        says="needs a host and a port",
    ),
    case(
        "studies-grpc-port-too-big",
        "studies",
        "--storage",
        "grpc://h:70000",
        says="needs a host and a port",
    ),
    case(
        "studies-grpc-no-host",
        "studies",
        "--storage",
        "grpc://:13000",
        says="needs a host and a port",
    ),
    case(
        "delete-read-only-uri",
        "delete",
        STUDY,
        "--yes",
        "--storage",
        "sqlite:///file:{dir}/hpo.db?mode=ro&uri=true",
        says=("refused to save", "readonly database"),
    ),
    case(
        "register-read-only-uri",
        "register",
        "{dir}/study.yaml",
        "--storage",
        "sqlite:///file:{dir}/hpo.db?mode=ro&uri=true",
        says=("readonly database",),
        spec={"name": "another"},
    ),
    # issue 25: a full disk, a read-only mount
    *[
        case(
            f"{name}-full-disk",
            *args,
            *DB,
            says=("free", "nothing was changed"),
            spec=spec,
            mount="full",
        )
        for name, args, spec in (
            ("register", ("register", "{dir}/study.yaml"), {"name": "another"}),
            ("run", ("run", "{dir}/study.yaml"), {"name": "another"}),
            (
                "register-grid",
                ("register", "{dir}/study.yaml"),
                {
                    "name": "another",
                    "sampler": {"name": "grid"},
                    "budget": {},
                    "space": {"module__hidden1": {"type": "int", "low": 1, "high": 5000}},
                },
            ),
        )
    ],
    *[
        case(
            f"{name}-read-only-mount",
            *args,
            *DB,
            says=("{dir} is on a read-only file system", "copy the database"),
            spec={"name": "another"} if "{dir}/study.yaml" in args else None,
            mount="read-only",
        )
        for name, args in (
            ("studies", ("studies",)),
            ("register", ("register", "{dir}/study.yaml")),
            ("export", ("export", STUDY)),
            ("worker", ("worker", "--study", STUDY, "--device", "cpu")),
        )
    ],
    case(
        "studies-newer-optuna-schema",
        "studies",
        *DB,
        says="schema",
        files={"hpo.db": lambda path: _future_schema(path)},
    ),
]


def _other_database(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.execute("INSERT INTO notes VALUES ('mine')")
    connection.close()


def _future_schema(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE version_info SET schema_version = 999")
        connection.execute("UPDATE alembic_version SET version_num = 'v99.0.0.z'")
    connection.close()


# --------------------------------------------------------------------------- environment
ENV_CASES = [
    case(
        "env-heartbeat-text",
        "worker",
        "--study",
        STUDY,
        "--device",
        "cpu",
        *DB,
        says="HPO_HEARTBEAT",
        env={"HPO_HEARTBEAT": "abc"},
    ),
    case(
        "env-heartbeat-nan",
        "worker",
        "--study",
        STUDY,
        "--device",
        "cpu",
        *DB,
        says=("HPO_HEARTBEAT", "finite"),
        env={"HPO_HEARTBEAT": "nan"},
    ),
    case(
        "env-heartbeat-negative",
        "worker",
        "--study",
        STUDY,
        "--device",
        "cpu",
        *DB,
        says=("HPO_HEARTBEAT", "0 or more"),
        env={"HPO_HEARTBEAT": "-5"},
    ),
    case(
        "env-heartbeat-huge",
        "worker",
        "--study",
        STUDY,
        "--device",
        "cpu",
        *DB,
        says="HPO_HEARTBEAT must be at most 86,400 s",
        env={"HPO_HEARTBEAT": "1e308"},
    ),
    case(
        "env-threads-text",
        "worker",
        "--study",
        STUDY,
        *DB,
        says="HPO_THREADS",
        exit=2,
        env={"HPO_THREADS": "x"},
    ),
    case(
        "env-threads-zero",
        "worker",
        "--study",
        STUDY,
        *DB,
        says="HPO_THREADS",
        exit=2,
        env={"HPO_THREADS": "0"},
    ),
    case(
        "env-password-file-missing",
        "studies",
        "--storage",
        "postgresql+psycopg://u@127.0.0.1:{closed}/db",
        says="{dir}/no-secret",
        env={"HPO_STORAGE_PASSWORD_FILE": "{dir}/no-secret"},
    ),
    case(
        "env-password-file-empty",
        "studies",
        "--storage",
        "postgresql+psycopg://u@127.0.0.1:{closed}/db",
        says="is empty",
        env={"HPO_STORAGE_PASSWORD_FILE": "{dir}/secret"},
        files={"secret": ""},
    ),
    case(
        "env-password-file-for-sqlite",
        "studies",
        *DB,
        says="takes no password",
        env={"HPO_STORAGE_PASSWORD_FILE": "{dir}/secret"},
        files={"secret": "pw\n"},
    ),
    case(
        "env-password-file-folder",
        "studies",
        "--storage",
        "postgresql+psycopg://u@127.0.0.1:{closed}/db",
        says="cannot read the password file",
        env={"HPO_STORAGE_PASSWORD_FILE": "{dir}"},
    ),
    *[
        case(
            f"env-password-file-{name}",
            "studies",
            "--storage",
            "postgresql+psycopg://u@127.0.0.1:{closed}/db",
            says=("cannot read the password file", *says),
            env={"HPO_STORAGE_PASSWORD_FILE": path},
            files=files,
        )
        for name, path, files, says in (
            ("dev-zero", "/dev/zero", {}, ("/dev/zero", "character device")),
            ("fifo", "{dir}/secret", {"secret": _fifo}, ("{dir}/secret", "named pipe (FIFO)")),
            (
                "huge",
                "{dir}/secret",
                {"secret": "{pw}\n" + "x" * 2**16},
                ("{dir}/secret", "larger than the 64 KiB hpo reads"),
            ),
        )
    ],
    case(
        "env-storage-unknown-scheme",
        "studies",
        says="not a database",
        env={"HPO_STORAGE": "foo://"},
    ),
    case(
        "env-storage-folder", "studies", says="is a folder", env={"HPO_STORAGE": "sqlite:///{dir}"}
    ),
]

# --------------------------------------------------------------------------- data files


def _data_case(id: str, dataset: dict[str, Any], content: Any, *says: str, **options: Any) -> Any:
    """A study on a data file that a worker reads first (``hpo register`` does not read data);
    ``content`` None leaves the file out."""
    spec = {"dataset": dataset}
    spec.update(options.pop("spec", {}))
    name = Path(dataset["path"]).name
    files = {} if content is None else {name: content}
    worker = ("worker", "--study", DATA_STUDY, "--device", "cpu", "--trials", "1", *DB)
    return case(id, *worker, says=says, data_spec=spec, files=files, **options)


def _csv_case(id: str, content: Any, *says: str, **options: Any) -> Any:
    dataset = {"name": "csv", "path": "{dir}/data.csv", "target": "y"}
    return _data_case(id, dataset, content, *says, **options)


def _npz_case(id: str, content: Any, *says: str, **options: Any) -> Any:
    return _data_case(id, {"name": "npz", "path": "{dir}/data.npz"}, content, *says, **options)


def _npz(**arrays: Any) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)

    return write


def _truncated_npz(path: Path) -> None:
    _npz(X=np.ones((20, 3)), y=np.arange(20) % 2)(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _npz_claiming(shape: tuple[int, ...], *, compressed: bool) -> Callable[[Path], None]:
    """An .npz whose ``X.npy`` header claims ``shape`` (float64) over a few MiB of zeros, stored
    or compressed (64 MiB of zeros in 64 KiB): loading it as numpy does would fill the memory
    before finding the data short."""

    def write(path: Path) -> None:
        header = io.BytesIO()
        descriptor = {"descr": "<f8", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(header, descriptor)
        labels = io.BytesIO()
        np.save(labels, np.arange(20) % 2)
        method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
        with zipfile.ZipFile(path, "w", compression=method) as archive:
            with archive.open("X.npy", "w", force_zip64=True) as member:
                member.write(header.getvalue())
                for _ in range(64 if compressed else 1):
                    member.write(bytes(2**20))
            archive.writestr("y.npy", labels.getvalue())

    return write


def _sparse(size: int) -> Callable[[Path], None]:
    """A file of ``size`` bytes that takes no room on disk (a hole)."""

    def write(path: Path) -> None:
        with open(path, "wb") as handle:
            handle.truncate(size)

    return write


GOOD_ROWS = "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20))
DATA_CASES = [
    _csv_case("csv-missing", None, "csv {dir}/data.csv", "file not found"),
    _csv_case("csv-folder", "FOLDER", "csv {dir}/data.csv", "folder"),
    _csv_case("csv-empty", "", "csv {dir}/data.csv", "empty"),
    _csv_case("csv-header-only", "a,b,y\n", "csv {dir}/data.csv", "no rows"),
    _csv_case(
        "csv-ragged-rows",
        "a,b,y\n1,2,0\n1,2,3,4,5\n",
        "csv {dir}/data.csv",
        "cannot read the file as CSV",
    ),
    _csv_case(
        "csv-unclosed-quote",
        'a,b,y\n1,"2,0\n1,2,1\n',
        "csv {dir}/data.csv",
        "cannot read the file as CSV",
    ),
    _csv_case("csv-binary", bytes(range(256)) * 4, "csv {dir}/data.csv"),
    _csv_case("csv-latin1", "a,b,y\n1,2,caf\xe9\n".encode("latin-1") * 5, "csv {dir}/data.csv"),
    _csv_case(
        "csv-no-target", "a,b,c\n" + GOOD_ROWS, "csv {dir}/data.csv", "target column 'y' not found"
    ),
    _csv_case(
        "csv-text-feature",
        "a,b,y\n" + "x,1,0\n" * 10,
        "csv {dir}/data.csv",
        "must be numeric",
        "a",
    ),
    _csv_case(
        "csv-missing-values", "a,b,y\n1,,0\n" + GOOD_ROWS, "csv {dir}/data.csv", "missing values"
    ),
    _csv_case(
        "csv-infinity", "a,b,y\ninf,1,0\n" + GOOD_ROWS, "csv {dir}/data.csv", "NaN or infinite"
    ),
    _csv_case("csv-one-row", "a,b,y\n1,2,0\n", "csv {dir}/data.csv", "test_size"),
    _csv_case("csv-markup-column", "[/],b,y\nx,1,0\n" * 3, "csv {dir}/data.csv", "[/]"),
    _csv_case(
        "csv-bad-task",
        "a,b,y\n" + GOOD_ROWS,
        "csv {dir}/data.csv",
        "task",
        spec={
            "dataset": {
                "name": "csv",
                "path": "{dir}/data.csv",
                "target": "y",
                "task": "clustering",
            }
        },
    ),
    _csv_case(
        "csv-test-size-text",
        "a,b,y\n" + GOOD_ROWS,
        "csv {dir}/data.csv",
        "test_size",
        spec={
            "dataset": {
                "name": "csv",
                "path": "{dir}/data.csv",
                "target": "y",
                "test_size": "half",
            }
        },
    ),
    _csv_case(
        "csv-test-size-too-big",
        "a,b,y\n" + GOOD_ROWS,
        "csv {dir}/data.csv",
        "test_size",
        spec={
            "dataset": {"name": "csv", "path": "{dir}/data.csv", "target": "y", "test_size": 1.5}
        },
    ),
    _npz_case("npz-missing", None, "npz {dir}/data.npz", "file not found"),
    _npz_case("npz-text", "not an archive", "npz {dir}/data.npz", "cannot read"),
    _npz_case("npz-truncated", _truncated_npz, "npz {dir}/data.npz", "cannot read"),
    _npz_case("npz-no-y", _npz(X=np.ones((10, 2))), "npz {dir}/data.npz", "X and y"),
    _npz_case(
        "npz-object-array",
        _npz(X=np.array([[1], "a"], dtype=object), y=np.ones(2)),
        "npz {dir}/data.npz",
        "cannot read",
    ),
    _npz_case("npz-x-1d", _npz(X=np.ones(10), y=np.ones(10)), "npz {dir}/data.npz", "shape"),
    _npz_case(
        "npz-y-length",
        _npz(X=np.ones((10, 2)), y=np.ones(7)),
        "npz {dir}/data.npz",
        "y must have shape",
    ),
    _npz_case(
        "npz-nan",
        _npz(X=np.full((10, 2), np.nan), y=np.arange(10) % 2),
        "npz {dir}/data.npz",
        "NaN or infinite",
    ),
    _npz_case("npz-empty", _npz(X=np.ones((0, 2)), y=np.ones(0)), "npz {dir}/data.npz", "no rows"),
    _npz_case(
        "npz-text-x",
        _npz(X=np.array([["a", "b"]] * 10), y=np.arange(10) % 2),
        "npz {dir}/data.npz",
        "numeric",
    ),
    # issue 25: files no reader can finish, a file's first line, one class
    _npz_case(
        "npz-header-claims-huge-shape",
        _npz_claiming((10**7, 10**6), compressed=False),
        "npz {dir}/data.npz",
        "unpack to more than 32 GiB",
        "(10000000, 1000000)",
    ),
    _npz_case(
        "npz-compressed-zeros",
        _npz_claiming((10**6, 10**4), compressed=True),
        "npz {dir}/data.npz",
        "unpack to more than 32 GiB",
    ),
    _npz_case("npz-fifo", _fifo, "npz {dir}/data.npz", "named pipe (FIFO)"),
    _csv_case("csv-fifo", _fifo, "csv {dir}/data.csv", "named pipe (FIFO)"),
    _data_case(
        "npz-dev-zero", {"name": "npz", "path": "/dev/zero"}, None, "npz /dev/zero", "device"
    ),
    _data_case(
        "csv-dev-zero",
        {"name": "csv", "path": "/dev/zero", "target": "y"},
        None,
        "csv /dev/zero",
        "device",
    ),
    _csv_case(
        "csv-larger-than-memory",
        _sparse(32 * 2**30 + 1),
        "csv {dir}/data.csv",
        "larger than the 32 GiB hpo reads",
    ),
    _csv_case(
        "csv-env-file",
        "POSTGRES_USER=hpo\nPOSTGRES_PASSWORD={pw}\n",
        "csv {dir}/data.csv",
        "one column",
    ),
    _csv_case(
        "csv-env-file-password-first",
        "POSTGRES_PASSWORD={pw}\nPOSTGRES_USER=hpo\n",
        "csv {dir}/data.csv",
        "one column",
    ),
    _npz_case(
        "npz-one-class",
        _npz(X=np.ones((20, 2)), y=np.zeros(20)),
        "npz {dir}/data.npz",
        "every training row has the same label",
        "at least two classes",
    ),
    _csv_case(
        "csv-one-class",
        "a,b,y\n" + "".join(f"{i},{i % 3},spam\n" for i in range(20)),
        "csv {dir}/data.csv",
        "every training row has the same label",
    ),
    case(
        "mnist-files-missing",
        "worker",
        "--study",
        DATA_STUDY,
        "--device",
        "cpu",
        *DB,
        says=("mnist", "files not found"),
        data_spec={"dataset": {"name": "mnist", "root": "{dir}/data"}},
    ),
    case(
        "mnist-files-malformed",
        "worker",
        "--study",
        DATA_STUDY,
        "--device",
        "cpu",
        *DB,
        says=("mnist", "malformed"),
        files={"data/MNIST/raw": lambda path: _bad_idx(path)},
        data_spec={"dataset": {"name": "mnist", "root": "{dir}/data"}},
    ),
    case(
        "svhn-file-garbage",
        "worker",
        "--study",
        DATA_STUDY,
        "--device",
        "cpu",
        *DB,
        says=("svhn", "cannot read"),
        files={"data/SVHN/train_32x32.mat": "garbage", "data/SVHN/test_32x32.mat": "x"},
        data_spec={
            "dataset": {"name": "svhn", "root": "{dir}/data"},
            "model": "cnn",
            "sampler": {"name": "grid"},
            "budget": {},
            "space": {},
            "fixed": {"max_epochs": 1},
        },
    ),
    case(
        "synthetic-negative-size",
        "worker",
        "--study",
        DATA_STUDY,
        "--device",
        "cpu",
        *DB,
        says=("synthetic_regression", "n_train"),
        data_spec={
            "dataset": {"name": "synthetic_regression", "n_train": -5},
            "model": "regressor",
            "scoring": "neg_mean_squared_error",
        },
    ),
    case(
        "synthetic-huge-size",
        "worker",
        "--study",
        DATA_STUDY,
        "--device",
        "cpu",
        *DB,
        says=("synthetic_regression: `n_train` must be at most 10,000,000", "drawn in memory"),
        data_spec={
            "dataset": {"name": "synthetic_regression", "n_train": 10**12},
            "model": "regressor",
            "scoring": "neg_mean_squared_error",
        },
    ),
    case(
        "refit-csv-malformed",
        "refit",
        DATA_STUDY,
        "--device",
        "cpu",
        *DB,
        says=("csv {dir}/data.csv", "cannot read the file as CSV"),
        files={"data.csv": "a,b,y\n1,2,0\n1,2,3,4\n"},
        data_spec={
            "dataset": {"name": "csv", "path": "{dir}/data.csv", "target": "y"},
            "completed": True,
        },
    ),
]


def _bad_idx(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (folder / name).write_bytes(b"\x00\x00\x08\x03garbage")


# --------------------------------------------------------------------------- passwords
#: Storage URLs holding a password where a URL may or may not put one, each refused without
#: showing it: the name, the URL, what the refusal says.
SECRET_URLS = [
    # without a scheme:// start nothing of it is shown
    ("no-colon-before-slashes", "postgresql//hpo:{pw}@127.0.0.1:{closed}/hpo", "cannot parse"),
    ("no-scheme", "hpo:{pw}@db", "cannot parse storage URL (not shown"),
    ("no-scheme-with-database", "hpo:{pw}@127.0.0.1:{closed}/hpo", "cannot parse"),
    ("one-slash", "postgresql:/hpo:{pw}@127.0.0.1:{closed}/hpo", "cannot parse"),
    ("no-slash", "postgresql+psycopg:hpo:{pw}@db/hpo", "cannot parse"),
    ("empty-scheme", "://hpo:{pw}@db/hpo", "cannot parse"),
    ("leading-space", " postgresql+psycopg://hpo:{pw}@127.0.0.1:{closed}/hpo", "cannot parse"),
    ("only-the-password", "{pw}", "cannot parse"),
    # userinfo elsewhere than after //
    (
        "userinfo-in-the-path",
        "postgresql+psycopg:///hpo:{pw}@127.0.0.1:{closed}/hpo",
        ("cannot open the storage", "hpo:***@127.0.0.1"),
    ),
    (
        "userinfo-in-a-sqlite-path",
        "sqlite:///{dir}/hpo:{pw}@db.db",
        ("no database at {dir}/hpo:***@db.db", "sqlite:///{dir}/hpo:***@db.db"),
    ),
    (
        "password-holding-an-at",
        "postgresql+psycopg://hpo:x@{pw}@127.0.0.1:port/hpo",
        "postgresql+psycopg://hpo:***@127.0.0.1:port/hpo",
    ),
    ("port-not-a-number", "postgresql+psycopg://hpo:{pw}@127.0.0.1:port/hpo", "hpo:***@"),
    ("no-host", "postgresql+psycopg://hpo:{pw}", "postgresql+psycopg://hpo:***"),
    ("no-host-with-database", "postgresql+psycopg://hpo:{pw}/hpo", "cannot parse storage URL"),
    ("unknown-scheme", "foo://hpo:{pw}@db/hpo", ("foo://hpo:***@db/hpo", "not a database")),
    ("missing-driver", "mysql+nodriver://hpo:{pw}@db/hpo", "cannot open"),
    ("grpc", "grpc://hpo:{pw}@127.0.0.1:{closed}", "no storage proxy answers at grpc://hpo:***@"),
    ("grpc-port-not-a-number", "grpc://hpo:{pw}@127.0.0.1:port", "needs a host and a port"),
    # a password in the query, which psycopg takes as the password
    (
        "query-password",
        "postgresql+psycopg://hpo@127.0.0.1:{closed}/hpo?password={pw}",
        ("cannot open the storage", "?password=***"),
    ),
    (
        "query-password-capitals",
        "postgresql+psycopg://hpo@127.0.0.1:{closed}/hpo?PassWord={pw}",
        "?PassWord=***",
    ),
    (
        "query-sslpassword",
        "postgresql+psycopg://hpo@127.0.0.1:{closed}/hpo?sslmode=prefer&sslpassword={pw}",
        "&sslpassword=***",
    ),
    (
        "query-password-key-escaped",
        "postgresql+psycopg://hpo@127.0.0.1:{closed}/hpo?pass%77ord={pw}",
        "?pass%77ord=***",
    ),
    (
        "query-password-holding-an-ampersand",
        "postgresql+psycopg://hpo@127.0.0.1:{closed}/hpo?password=x&{pw}&sslmode=prefer",
        "?password=***&sslmode=prefer",
    ),
    (
        "query-password-and-userinfo",
        "postgresql+psycopg://hpo:{pw}@127.0.0.1:{closed}/hpo?password={pw}",
        "hpo:***@127.0.0.1:{closed}/hpo?password=***",
    ),
    (
        "query-password-unparsable",
        "postgresql+psycopg://hpo@127.0.0.1:port/hpo?password={pw}",
        ("cannot parse storage URL", "?password=***"),
    ),
]

#: Every command that opens a storage, given one as the last argument.
STORAGE_COMMANDS = {
    **READ_ONLY_COMMANDS,
    "register": ("register", "{dir}/study.yaml"),
    "run": ("run", "{dir}/study.yaml"),
    "dashboard": ("dashboard",),
    "storage-proxy": ("storage-proxy",),
}

PASSWORD_CASES = [
    *[
        case(f"studies-secret-{name}", "studies", "--storage", url, says=says)
        for name, url, says in SECRET_URLS
    ],
    # every command, with a URL refused before any connection is tried
    *[
        case(
            f"{name}-secret-{form}",
            *args,
            "--storage",
            url,
            says=says,
            spec={} if "{dir}/study.yaml" in args else None,
        )
        for name, args in STORAGE_COMMANDS.items()
        for form, url, says in (
            ("no-scheme", "hpo:{pw}@db", "cannot parse storage URL"),
            (
                "query-password",
                "postgresql+psycopg://hpo@127.0.0.1:port/hpo?password={pw}",
                "?password=***",
            ),
        )
    ],
    case(
        "env-storage-secret-no-scheme",
        "studies",
        says="cannot parse storage URL",
        env={"HPO_STORAGE": "hpo:{pw}@db"},
    ),
    # with the password file: its password is in the URL each message names
    *[
        case(
            f"password-file-{name}",
            "studies",
            "--storage",
            url,
            says=says,
            env={"HPO_STORAGE_PASSWORD_FILE": "{dir}/secret"},
            files={"secret": "{pw}\n"},
        )
        for name, url, says in (
            (
                "and-a-closed-port",
                "postgresql+psycopg://hpo@127.0.0.1:{closed}/hpo",
                ("cannot open the storage", "hpo:***@127.0.0.1"),
            ),
            (
                "and-a-password-in-the-url",
                "postgresql+psycopg://hpo:x{pw}@127.0.0.1:{closed}/hpo",
                "has a password and HPO_STORAGE_PASSWORD_FILE",
            ),
            (
                "and-a-password-in-the-query",
                "postgresql+psycopg://hpo@127.0.0.1:{closed}/hpo?password={pw}x",
                ("has a password", "?password=***"),
            ),
            ("and-no-scheme", "hpo:{pw}@db", "cannot parse storage URL"),
            ("and-grpc", "grpc://hpo:{pw}@127.0.0.1:{closed}", "takes no password"),
        )
    ],
]

ALL_CASES = SPEC_CASES + CLI_CASES + STORAGE_CASES + ENV_CASES + DATA_CASES + PASSWORD_CASES


# --------------------------------------------------------------------------- machinery
@pytest.fixture(scope="module")
def seed_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``tiny-digits`` registered, with one completed trial, and a registered grid study."""
    folder = tmp_path_factory.mktemp("seed")
    url = f"sqlite:///{folder / 'hpo.db'}"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for spec in (tiny_spec(), _grid_spec()):
        path = folder / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec))
        result = runner.invoke(app, ["register", str(path), "--storage", url])
        assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name=STUDY, storage=url)
    _add_completed_trial(study)
    yield folder / "hpo.db"
    optuna.logging.set_verbosity(verbosity)


def _grid_spec() -> dict[str, Any]:
    return tiny_spec(
        name=GRID,
        sampler={"name": "grid"},
        budget={},
        space={"optimizer": {"type": "categorical", "choices": ["adam", "sgd"]}},
    )


def _add_completed_trial(study: optuna.Study) -> None:
    """A completed trial as a worker leaves it, without training anything."""
    study.add_trial(
        optuna.trial.create_trial(
            params={"module__hidden1": 16, "lr": 0.01},
            distributions={
                "module__hidden1": IntDistribution(8, 32),
                "lr": FloatDistribution(1e-3, 1e-1, log=True),
            },
            value=0.9,
            user_attrs={"fold_scores": [0.9, 0.9]},
        )
    )


def _copy_database(source: Path, target: Path) -> None:
    """A consistent copy, WAL included (the backup API, not a file copy)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def _fill_deep(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _fill(value, values)
    if isinstance(value, dict):
        return {_fill_deep(k, values): _fill_deep(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_deep(v, values) for v in value]
    return value


def _write(path: Path, content: Any) -> None:
    if content is None:
        return
    if content == "FOLDER":
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def snapshot(folder: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The files in ``folder`` (SQLite's transient ones aside) and every row of ``hpo.db``."""
    database = folder / "hpo.db"
    files = sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if not path.name.endswith(TRANSIENT)
        # the claim lock file (empty) beside an existing database: any registration makes it
        and not (path.name == "hpo.db.lock" and database.is_file())
    )
    rows: dict[str, list[str]] = {}
    if database.is_file():
        with sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True) as connection:
            try:
                tables = [
                    name
                    for (name,) in connection.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table'"
                    )
                ]
                for table in tables:
                    rows[table] = sorted(
                        repr(row) for row in connection.execute(f'SELECT * FROM "{table}"')
                    )
            except sqlite3.DatabaseError:
                rows["(not a database)"] = [database.read_bytes().hex()]
        connection.close()
    return files, rows


def squash(text: str) -> str:
    return "".join(text.split())


#: The longest a case may take before it counts as a hang (a FIFO read or written).
CASE_SECONDS = 120


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Fail the block (TimeoutError) when it runs longer than ``seconds``: a hang."""

    def hung(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the command ran for more than {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run_mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """Mounts a 16 MiB tmpfs on a folder, for a case on a full disk or a read-only file
    system; skips the case where this user may not mount (not root, no mount namespace)."""
    mounted: list[Path] = []

    def mount(folder: Path) -> None:
        if shutil.which("mount") is None:
            pytest.skip("no mount command here")
        done = _run_mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder))
        if done.returncode != 0:
            pytest.skip(f"this user may not mount a tmpfs: {done.stderr.strip()}")
        mounted.append(folder)

    yield mount
    os.chdir(tmp_path)  # a folder cannot be unmounted while it is the working directory
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill_disk(folder: Path, leave: int) -> None:
    """Fill ``folder``'s file system to its last ``leave`` bytes, with one file."""
    status = os.statvfs(folder)
    (folder / "filler").write_bytes(bytes(max(0, status.f_bavail * status.f_frsize - leave)))


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port this test listens on, so a server asked for it cannot have it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("hostile", ALL_CASES)
def test_hostile_input_is_refused_cleanly(
    hostile: Case,
    seed_database: Path,
    tmp_path: Path,
    held_port: int,
    monkeypatch: pytest.MonkeyPatch,
    mount_tmpfs: Callable[[Path], None],
) -> None:
    folder = tmp_path / "case"
    folder.mkdir()
    if hostile.mount:
        mount_tmpfs(folder)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(storage_module, "GRPC_CONNECT_TIMEOUT", 1.0)
    for name in (
        "HPO_STORAGE",
        "HPO_HEARTBEAT",
        "HPO_THREADS",
        "HPO_STORAGE_PASSWORD_FILE",
        "HPO_ALLOW_MODULES",
        "HPO_ARTIFACTS",
    ):
        monkeypatch.delenv(name, raising=False)
    values = {
        "dir": str(folder),
        "db": f"sqlite:///{folder / 'hpo.db'}",
        "closed": str(free_port()),
        "held": str(held_port),
        "pw": PASSWORD,
    }
    if hostile.database:
        _copy_database(seed_database, folder / "hpo.db")
    if hostile.data_spec is not None:
        _register_data_study(hostile.data_spec, values)
    if hostile.spec is not None:
        text = _spec_text(_fill_deep(hostile.spec, values))
        (folder / "study.yaml").write_text(text, encoding="utf-8")
    for name, content in hostile.files.items():
        target = folder / name
        if content is None:
            target.unlink(missing_ok=True)
        else:
            if target.is_file() and not callable(content):
                target.unlink()
            _write(target, _fill(content, values) if isinstance(content, str) else content)
    if hostile.mount == "read-only":
        _run_mount("-o", "remount,ro", str(folder))
    elif hostile.mount == "full":
        _fill_disk(folder, leave=64 * 2**10)
    before = snapshot(folder)

    args = [_fill(arg, values) for arg in hostile.args]
    env = {key: _fill(value, values) for key, value in hostile.env.items()}
    with _deadline(CASE_SECONDS):
        result = runner.invoke(app, args, env=env, input=hostile.input)

    output = result.output
    assert result.exit_code == hostile.exit, output
    assert isinstance(result.exception, SystemExit), (result.exception, output)
    assert "Traceback" not in output, output
    assert output.strip(), "no message at all"
    assert sum(line.startswith("error:") for line in output.splitlines()) <= 1, output
    for expected in hostile.says:
        assert squash(_fill(expected, values)) in squash(output), output
    assert squash(PASSWORD) not in squash(output), output
    assert snapshot(folder) == before


def _register_data_study(overrides: dict[str, Any], values: dict[str, str]) -> None:
    overrides = _fill_deep(dict(overrides), values)
    completed = overrides.pop("completed", False)
    spec = tiny_spec(name=DATA_STUDY, **overrides)
    path = Path(values["dir"]) / "data-study.yaml"
    path.write_text(yaml.safe_dump(spec))
    # registered by someone who trusts the spec's own model (a worker need not)
    model = str(spec["model"])
    trust = ["--allow-module", model.partition(":")[0]] if ":" in model else []
    result = runner.invoke(app, ["register", str(path), "--storage", values["db"], *trust])
    assert result.exit_code == 0, result.output
    path.unlink()
    if completed:
        _add_completed_trial(optuna.load_study(study_name=DATA_STUDY, storage=values["db"]))


@pytest.mark.parametrize("bomb", sorted(ALIAS_BOMBS))
def test_an_alias_bomb_is_refused_before_it_is_built(bomb: str, tmp_path: Path) -> None:
    """10**9 values from ten lines are counted on the parsed graph, not built (issue 25: a
    bomb of 10**7 took 38-65 s to refuse); built, this one would not end. No timed assertion
    (the machines are shared): the count's message is what shows it was not built."""
    path = tmp_path / "study.yaml"
    path.write_text(_spec_text(bomb))
    with pytest.raises(SpecError, match="more than 100,000 values once its aliases"):
        load_spec(path)


def test_there_are_enough_cases() -> None:
    assert len(ALL_CASES) >= 150


def test_a_closed_grpc_port_fails_within_the_default_wait(tmp_path: Path) -> None:
    """Without a server there, a gRPC storage gives up after GRPC_CONNECT_TIMEOUT seconds
    instead of waiting forever."""
    started = time.monotonic()
    result = runner.invoke(app, ["studies", "--storage", f"grpc://127.0.0.1:{free_port()}"])
    elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert squash("no storage proxy answers") in squash(result.output)
    assert elapsed < storage_module.GRPC_CONNECT_TIMEOUT + 3


@pytest.mark.slow
def test_storage_proxy_on_a_taken_port_says_so_and_exits(tmp_path: Path, held_port: int) -> None:
    """A real process: the proxy must not announce a port it could not bind, nor hang."""
    database = tmp_path / "hpo.db"
    result = run_hpo(
        "storage-proxy",
        "--port",
        str(held_port),
        "--storage",
        f"sqlite:///{database}",
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{held_port}" in " ".join(result.stderr.split())
