"""Several objectives and constraints: ``scoring: [scorer, measure, ...]`` makes a
multi-objective Optuna study whose Pareto front exports and refits by the spec's pick rule;
``constraints`` make trials infeasible through Optuna's ``Trial.set_constraint``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from conftest import tiny_spec
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from hpo.engine.data import load_dataset
from hpo.engine.measures import n_parameters
from hpo.engine.models import MLP
from hpo.errors import SpecError, StudyError
from hpo.results.export import export_study
from hpo.results.refit import refit_study
from hpo.results.report import write_report
from hpo.service.storage import open_storage
from hpo.service.study import register_study, result_trial
from hpo.service.worker import run_worker
from hpo.spec.objectives import pick_from_front
from hpo.spec.study_spec import StudySpec, parse_spec, spec_json_equal

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HIDDEN = {"module__hidden1": {"type": "int", "low": 8, "high": 32}}


def digits_mlp_parameters(hidden: int) -> int:
    """Trainable parameters of hpo's MLP on digits (64 inputs, 10 classes), one hidden layer."""
    shape = load_dataset("digits").input_shape
    return n_parameters(MLP(input_shape=shape, n_outputs=10, hidden1=hidden))


def run(spec: StudySpec, url: str) -> optuna.Study:
    register_study(spec, open_storage(url))
    run_worker(spec.name, url, worker_index=0, heartbeat_seconds=0)
    return optuna.load_study(study_name=spec.name, storage=url)


@pytest.mark.slow
def test_two_objectives_make_a_pareto_front_that_exports_and_refits(
    sqlite_url: str, tmp_path: Path
) -> None:
    spec = parse_spec(
        tiny_spec(
            name="tiny-front",
            scoring=["accuracy", "n_parameters", "fit_seconds", "predict_ms_per_1000_rows"],
            pruner={"name": "none"},
            space=HIDDEN,
            budget={"trials": 5},
            refit={"pick": {"best_first_within": 0.05}},
        )
    )
    study = run(spec, sqlite_url)
    assert study.directions == [StudyDirection.MAXIMIZE] + [StudyDirection.MINIMIZE] * 3
    assert study.metric_names == [
        "accuracy",
        "n_parameters",
        "fit_seconds",
        "predict_ms_per_1000_rows",
    ]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 5
    for trial in trials:
        accuracy, parameters, seconds, predict_ms = trial.values
        assert accuracy == pytest.approx(sum(trial.user_attrs["fold_scores"]) / 2)
        assert parameters == digits_mlp_parameters(trial.params["module__hidden1"])
        assert seconds == pytest.approx(sum(trial.user_attrs["fit_seconds"]) / 2, rel=1e-3)
        assert predict_ms > 0
        assert trial.intermediate_values == {}  # Optuna reports one objective only

    front = study.best_trials
    picked = pick_from_front(front, spec)
    best_accuracy = max(t.values[0] for t in front)
    assert picked.values[0] >= best_accuracy - 0.05
    close = [t for t in front if t.values[0] >= best_accuracy - 0.05]
    assert picked.values[1] == min(t.values[1] for t in close)  # fewest parameters

    out = export_study(open_storage(sqlite_url), spec.name, tmp_path / "front.csv", pareto=True)
    frame = pd.read_csv(out)
    assert sorted(frame["number"]) == sorted(t.number for t in front)
    assert list(frame.loc[frame["picked"], "number"]) == [picked.number]
    assert {"accuracy", "n_parameters", "module__hidden1"} <= set(frame.columns)
    best = pd.read_csv(export_study(open_storage(sqlite_url), spec.name, tmp_path / "best.csv"))
    assert best["trial"][0] == picked.number and best["value"][0] == picked.values[0]

    refit = refit_study(
        open_storage(sqlite_url),
        spec.name,
        results_dir=tmp_path / "results",
        artifacts=tmp_path / "artifacts",
        device="cpu",
    )
    assert refit.trial == picked.number and refit.cv_score == picked.values[0]

    report = write_report(
        open_storage(sqlite_url),
        spec.name,
        results_dir=tmp_path / "results",
        artifacts=tmp_path / "artifacts",
    )
    assert report.figures[0] == "Pareto front"
    assert "Optimization history" in report.figures and "Slices" in report.figures
    page = report.path.read_text()
    assert "picked from the Pareto front" in page and "n_parameters (minimize)" in page


@pytest.mark.slow
def test_a_constraint_makes_trials_infeasible_and_the_best_is_feasible(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="hpo")
    limit = digits_mlp_parameters(20)
    spec = parse_spec(
        tiny_spec(
            name="tiny-small",
            space=HIDDEN,
            budget={"trials": 8},
            constraints={"n_parameters": {"max": limit}},
        )
    )
    study = run(spec, sqlite_url)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    feasible = {t.number: t.params["module__hidden1"] <= 20 for t in trials}
    assert set(feasible.values()) == {True, False}  # the seed draws both kinds
    for trial in trials:
        (value,) = trial.constraints.values()
        assert (value <= 0) == feasible[trial.number]
        assert trial.user_attrs["measures"]["n_parameters"] == digits_mlp_parameters(
            trial.params["module__hidden1"]
        )
    assert feasible[study.best_trial.number]
    assert study.best_trial.value == max(t.value for t in trials if feasible[t.number])
    assert f"infeasible: n_parameters <= {limit} broken" in caplog.text

    frame = pd.read_csv(
        export_study(open_storage(sqlite_url), spec.name, tmp_path / "t.csv", all_trials=True)
    )
    assert dict(zip(frame["number"], frame["feasible"], strict=True)) == feasible
    assert set(frame.loc[~frame["feasible"], "broken"]) == {f"n_parameters <= {limit}"}
    page = write_report(
        open_storage(sqlite_url), spec.name, out=tmp_path / "r.html", artifacts=tmp_path / "a"
    ).path.read_text()
    assert f"n_parameters &lt;= {limit}" in page  # the constraints row


@pytest.mark.slow
def test_no_feasible_trial_is_said_plainly(sqlite_url: str) -> None:
    spec = parse_spec(
        tiny_spec(
            name="tiny-none",
            space=HIDDEN,
            budget={"trials": 2},
            constraints={"n_parameters": {"max": 10}},
        )
    )
    study = run(spec, sqlite_url)
    with pytest.raises(StudyError, match="none of its 2 completed trials meets the constraints"):
        result_trial(study, spec)


@pytest.mark.slow
def test_a_second_scorer_is_scored_on_every_fold(sqlite_url: str) -> None:
    spec = parse_spec(
        tiny_spec(
            name="tiny-two-scorers",
            scoring=["accuracy", "neg_log_loss"],
            pruner={"name": "none"},
            space=HIDDEN,
            budget={"trials": 2},
        )
    )
    study = run(spec, sqlite_url)
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MAXIMIZE]
    for trial in study.trials:
        assert trial.values[1] == trial.user_attrs["extra_scores"]["neg_log_loss"] < 0


def front_trial(number: int, values: list[float]) -> optuna.trial.FrozenTrial:
    trial = create_trial(
        values=values, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}
    )
    trial.number = number
    return trial


@pytest.mark.parametrize(
    ("within", "picked"),
    [(0.0, 1), (0.01, 2), (0.05, 3)],
)
def test_the_pick_rule_takes_the_best_second_objective_within_the_first(
    within: float, picked: int
) -> None:
    spec = parse_spec(
        tiny_spec(
            scoring=["accuracy", "n_parameters"],
            pruner={"name": "none"},
            refit={"pick": {"best_first_within": within}},
        )
    )
    front = [
        front_trial(1, [0.97, 5000]),
        front_trial(2, [0.965, 3000]),
        front_trial(3, [0.93, 800]),
        front_trial(4, [0.90, 500]),
    ]
    assert pick_from_front(front, spec).number == picked


def spec_problems(**overrides: Any) -> str:
    with pytest.raises(SpecError) as raised:
        parse_spec(tiny_spec(**overrides))
    return str(raised.value)


def test_objective_and_constraint_mistakes_are_named() -> None:
    assert "pruner: median cannot stop a trial of several objectives" in spec_problems(
        scoring=["accuracy", "n_parameters"], pruner={"name": "median"}
    )
    assert "the first objective must be a scikit-learn scorer" in spec_problems(
        scoring=["n_parameters", "accuracy"], pruner={"name": "none"}
    )
    typo = spec_problems(scoring=["accuracy", "n_params"], pruner={"name": "none"})
    assert "scoring[1]: 'n_params' is neither" in typo and "n_parameters" in typo
    assert "constraints.fit_seconds: give min, max or both" in spec_problems(
        constraints={"fit_seconds": {}}
    )
    assert "refit.pick: picks from the Pareto front" in spec_problems(
        refit={"pick": {"best_first_within": 0.01}}
    )


def test_a_spec_stored_before_objectives_existed_is_the_same_spec() -> None:
    spec = parse_spec(tiny_spec())
    stored = json.loads(spec.to_json())
    for key in ("objectives", "constraints", "refit"):
        del stored[key]  # what an older hpo stored
    assert spec_json_equal(json.dumps(stored), spec.to_json())
