"""hpo export: CSV cells a spreadsheet would run as formulas are neutralised, JSON is not,
and the neutralised CSV reads back to the values the trials carry."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from conftest import tiny_spec
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo.results.export import csv_cell, csv_value, export_study, read_best_params
from hpo.service.storage import open_storage
from hpo.service.study import register_study
from hpo.spec.study_spec import parse_spec

HOSTILE = [
    '=HYPERLINK("http://evil","x")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A9)",
    "\tTAB=1",
    "\rCR=1",
    "'=already quoted",
    "''@twice",
]
HARMLESS = ["relu", "'plain quote", "", "a=b", "-0.5", "+3", "-1e-3", "[0.9, 0.999]"]


@pytest.mark.parametrize("text", HOSTILE + HARMLESS)
def test_csv_cell_round_trips(text: str) -> None:
    assert csv_value(csv_cell(text)) == text


@pytest.mark.parametrize("text", HOSTILE)
def test_csv_cell_quotes_formulas(text: str) -> None:
    assert csv_cell(text) == "'" + text


@pytest.mark.parametrize("value", [*HARMLESS, -0.5, -3, 0.0, None, True, [1, 2]])
def test_csv_cell_leaves_numbers_and_plain_text(value: Any) -> None:
    assert csv_cell(value) == value


def hostile_study(url: str, best: str = HOSTILE[0]) -> str:
    """A registered study whose best trial carries formula-like values: params outside the
    spec, as plain Optuna can add."""
    spec = parse_spec(
        tiny_spec(name="export-digits", fixed={"max_epochs": 3, "optimizer__momentum": -0.5})
    )
    register_study(spec, open_storage(url))
    name = spec.name
    study = optuna.load_study(study_name=name, storage=url)
    choices = tuple(dict.fromkeys([*HOSTILE, best, "relu"]))
    for number, (activation, value) in enumerate([(best, 0.9), ("relu", 0.5)]):
        study.add_trial(
            create_trial(
                params={"module__activation": activation, "lr": -0.25 if number == 0 else 0.1},
                distributions={
                    "module__activation": CategoricalDistribution(choices),
                    "lr": FloatDistribution(-1.0, 1.0),
                },
                value=value,
                user_attrs={"fold_scores": [value], "fail_reason": None},
            )
        )
    study.add_trial(
        create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "@SUM(A1) failed"})
    )
    return name


def formula_like(cell: str) -> bool:
    """What a spreadsheet would run: a leading ``= + @``, tab or CR, or ``-`` not before a
    digit (``-0.5`` is a number)."""
    first = cell[:1]
    return first != "" and (first in "=+@\t\r" or (first == "-" and not cell[1:2].isdigit()))


def cells(path: Path) -> list[list[str]]:
    with path.open(newline="") as file:
        return list(csv.reader(file))


@pytest.mark.parametrize("best", [HOSTILE[0], "\rCR=1", "\tTAB=1", "'=already quoted"])
def test_best_params_csv_is_neutralised_and_reads_back(
    sqlite_url: str, tmp_path: Path, best: str
) -> None:
    name = hostile_study(sqlite_url, best)
    out = export_study(open_storage(sqlite_url), name, tmp_path / "best_params.csv")

    header, row = cells(out)
    written = dict(zip(header, row, strict=True))
    assert written["study"] == name
    assert written["module__activation"] == "'" + best
    # numbers stay numbers: a spreadsheet reads -0.5 as minus a half
    assert written["optimizer__momentum"] == "-0.5"
    assert written["lr"] == "-0.25"
    assert not any(formula_like(cell) for cell in header + row)

    params = read_best_params(out)
    assert params["module__activation"] == best
    assert params["optimizer__momentum"] == -0.5
    assert params["lr"] == -0.25
    assert "study" not in params


def test_trials_csv_is_neutralised(sqlite_url: str, tmp_path: Path) -> None:
    name = hostile_study(sqlite_url)
    out = export_study(open_storage(sqlite_url), name, tmp_path / "trials.csv", all_trials=True)

    rows = cells(out)
    for row in rows:
        assert not any(formula_like(cell) for cell in row), row
    frame = pd.read_csv(out)
    assert frame["fail_reason"].dropna().tolist() == ["'@SUM(A1) failed"]
    assert frame["module__activation"].tolist()[0] == "'" + HOSTILE[0]
    assert frame["lr"].tolist()[:2] == [-0.25, 0.1]
    assert frame["lr"].dtype == float


def test_json_keeps_the_values_as_they_are(sqlite_url: str, tmp_path: Path) -> None:
    name = hostile_study(sqlite_url)
    best = json.loads(
        export_study(open_storage(sqlite_url), name, tmp_path / "b.json").read_text()
    )
    assert best[0]["study"] == name
    assert best[0]["module__activation"] == HOSTILE[0]
    assert best[0]["optimizer__momentum"] == -0.5
    every = json.loads(
        export_study(
            open_storage(sqlite_url), name, tmp_path / "t.json", all_trials=True
        ).read_text()
    )
    assert [t["fail_reason"] for t in every] == [None, None, "@SUM(A1) failed"]
    assert every[0]["fold_scores"] == [0.9]  # a list, not a JSON string inside JSON


def test_json_keeps_every_digit_of_a_value(sqlite_url: str, tmp_path: Path) -> None:
    name = hostile_study(sqlite_url)
    study = optuna.load_study(study_name=name, storage=sqlite_url)
    exact = 0.123456789012345678
    study.add_trial(create_trial(value=exact, params={}, distributions={}))
    every = json.loads(
        export_study(
            open_storage(sqlite_url), name, tmp_path / "t.json", all_trials=True
        ).read_text()
    )
    assert every[-1]["value"] == exact  # pandas' to_json kept 10 digits
