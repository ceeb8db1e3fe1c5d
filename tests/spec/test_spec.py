"""Study specs: every shipped study loads, and a bad one is reported all at once, by key."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, run_hpo, tiny_spec

from hpo.errors import SpecError, did_you_mean
from hpo.spec.study_spec import StudySpec, load_spec, parse_spec

STUDIES = sorted((REPO / "studies").glob("*.yaml"))


def problems_of(raw: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    return info.value.problems


def grid_spec(**overrides: Any) -> dict[str, Any]:
    """``tiny_spec`` on a grid: 2 optimizers x 3 widths, no budget.trials."""
    spec = tiny_spec(
        sampler={"name": "grid"},
        budget={},
        space={
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
            "module__hidden1": {"type": "int", "low": 8, "high": 24, "step": 8},
        },
    )
    spec.update(overrides)
    return spec


# --- valid specs ---------------------------------------------------------------------------


def test_studies_folder_is_not_empty() -> None:
    assert len(STUDIES) >= 1


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_shipped_study_loads_and_round_trips(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    assert StudySpec.from_json(spec.to_json()) == spec


def test_parse_tiny_spec() -> None:
    spec = parse_spec(tiny_spec())
    assert spec.name == "tiny-digits"
    assert spec.model == "mlp"
    assert spec.dataset.name == "digits" and spec.dataset.options == {}
    assert spec.sampler.name == "random"
    assert spec.cv.folds == 2
    assert spec.direction == "maximize"
    assert spec.fixed == {"max_epochs": 3, "batch_size": 128}
    assert list(spec.space) == ["module__hidden1", "lr"]


def test_load_spec_reads_what_write_spec_wrote(write_spec: Callable[..., Path]) -> None:
    assert load_spec(write_spec()) == parse_spec(tiny_spec())


def test_json_round_trip_keeps_every_section() -> None:
    spec = parse_spec(
        tiny_spec(
            dataset={"name": "csv", "path": "data/table.csv", "target": "y", "test_size": 0.25},
            pruner={"name": "median", "options": {"n_startup_trials": 2}},
            space={
                "module__hidden1": {"type": "int", "low": 8, "high": 32, "step": 8},
                "module__hidden2": {"type": "int", "low": 4, "high": "module__hidden1"},
                "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
                "module__batch_norm": {"type": "categorical", "choices": [True, False]},
                "optimizer__momentum": {"type": "categorical", "choices": [0, 0.9, None]},
            },
            enqueue=[
                {
                    "module__hidden1": 16,
                    "module__hidden2": 8,
                    "lr": 0.01,
                    "module__batch_norm": False,
                    "optimizer__momentum": None,
                }
            ],
        )
    )
    again = StudySpec.from_json(spec.to_json())
    assert again == spec
    assert again.dataset.options == {"path": "data/table.csv", "target": "y", "test_size": 0.25}
    # A JSON round trip must not turn True into 1 or 0 into 0.0.
    assert again.space["module__batch_norm"].choices == [True, False]  # type: ignore[union-attr]
    assert [type(c) for c in again.space["optimizer__momentum"].choices] == [  # type: ignore
        int,
        float,
        type(None),
    ]


@pytest.mark.parametrize("trials", [1, 4, 40])
def test_n_trials_of_random_is_the_budget(trials: int) -> None:
    assert parse_spec(tiny_spec(budget={"trials": trials})).n_trials == trials


@pytest.mark.parametrize(
    ("enqueue", "n_trials"),
    [
        ([], 6),
        ([{"optimizer": "adam", "module__hidden1": 12}], 7),
        (
            [
                {"optimizer": "adam", "module__hidden1": 12},
                {"optimizer": "sgd", "module__hidden1": 20},
            ],
            8,
        ),
        # a warm start that is a grid point runs once, as the point
        ([{"optimizer": "adam", "module__hidden1": 16}], 6),
        (
            [
                {"optimizer": "adam", "module__hidden1": 16},
                {"optimizer": "sgd", "module__hidden1": 20},
            ],
            7,
        ),
    ],
)
def test_n_trials_of_grid_is_grid_size_plus_enqueued(
    enqueue: list[dict[str, Any]], n_trials: int
) -> None:
    assert parse_spec(grid_spec(enqueue=enqueue)).n_trials == n_trials
    # A budget that agrees with the grid is accepted too.
    assert parse_spec(grid_spec(enqueue=enqueue, budget={"trials": n_trials})).n_trials == n_trials


def test_n_trials_of_shipped_grid_study() -> None:
    # 2 widths x 2 depths x 3 activations x 2 optimizers; the warm start is one of them.
    assert load_spec(REPO / "studies" / "regression-grid.yaml").n_trials == 24


def test_configuration_is_fixed_merged_with_the_searched_values() -> None:
    spec = parse_spec(tiny_spec())
    params = {"module__hidden1": 16, "lr": 0.01}

    configuration = spec.configuration(params)

    assert configuration == {
        "preprocess": "none",  # digits' default
        "max_epochs": 3,
        "batch_size": 128,
        "module__hidden1": 16,
        "lr": 0.01,
    }
    configuration["max_epochs"] = 99
    assert spec.fixed == {"max_epochs": 3, "batch_size": 128}
    assert params == {"module__hidden1": 16, "lr": 0.01}


def test_configuration_of_a_fully_fixed_spec_is_its_fixed_keys_and_preprocess() -> None:
    spec = parse_spec(grid_spec(space={}, fixed={"max_epochs": 3, "optimizer": "sgd"}))
    assert spec.configuration({}) == {"preprocess": "none", "max_epochs": 3, "optimizer": "sgd"}


def test_a_named_criterion_is_part_of_the_configuration() -> None:
    spec = parse_spec(tiny_spec(criterion="nll"))
    assert spec.configuration({})["criterion"] == "nll"


# --- one SpecError with every problem ------------------------------------------------------


def test_every_problem_is_reported_at_once_with_its_key() -> None:
    raw = tiny_spec(
        samplr={"name": "tpe"},
        colour="red",
        dataset={"name": "digitz"},
        scoring="acuracy",
        fixed={"max_epochs": 3, "optimizer": "adamm"},
        space={
            "module__hidden1": {"type": "int", "low": 8, "high": 32},
            "module__hiden1": {"type": "int", "low": 8, "high": 16},
            "module__dropout": {"type": "float", "low": 0.9, "high": 0.1},
            "module__hidden2": {"type": "int", "low": 4, "high": "module__hiddn1"},
        },
    )
    problems = problems_of(raw)

    def problem(key: str) -> str:
        found = [p for p in problems if p.startswith(f"{key}:")]
        assert len(found) == 1, (key, problems)
        return found[0]

    assert "did you mean 'sampler'?" in problem("samplr")
    assert problem("colour") == "colour: unknown key"  # nothing close: no guess
    assert "did you mean 'digits'?" in problem("dataset.name")
    assert "'digitz'" in problem("dataset.name")
    assert "did you mean 'accuracy'?" in problem("scoring")
    assert "'acuracy'" in problem("scoring")
    assert "did you mean 'adam'?" in problem("fixed.optimizer")
    assert "'adamm'" in problem("fixed.optimizer")
    assert "did you mean 'module__hidden1'?" in problem("space.module__hiden1")
    assert "(low=0.9, high=0.1)" in problem("space.module__dropout")
    assert "'module__hiddn1'" in problem("space.module__hidden2")
    assert "did you mean 'module__hidden1'?" in problem("space.module__hidden2")
    assert len(problems) == 8, problems


def test_spec_error_message_lists_every_problem_and_the_source(
    write_spec: Callable[..., Path],
) -> None:
    path = write_spec(scoring="acuracy", dataset={"name": "digitz"})
    with pytest.raises(SpecError) as info:
        load_spec(path)
    error = info.value
    assert error.source == str(path)
    assert len(error.problems) == 2
    message = str(error)
    assert message.startswith(f"{path}: 2 problems")
    for problem in error.problems:
        assert f"  - {problem}" in message


@pytest.mark.parametrize(
    ("raw", "key", "fragments"),
    [
        (
            {k: v for k, v in tiny_spec().items() if k != "name"},
            "name",
            ["required key is missing"],
        ),
        (
            {k: v for k, v in tiny_spec().items() if k != "model"},
            "model",
            ["required key is missing"],
        ),
        (
            {k: v for k, v in tiny_spec().items() if k != "scoring"},
            "scoring",
            ["required key is missing"],
        ),
        (tiny_spec(model="mlpp"), "model", ["did you mean 'mlp'", "package.module:ClassName"]),
        (tiny_spec(sampler={"name": "tpee"}), "sampler.name", ["'tpe'", "'tpee'"]),
        (
            grid_spec(space={"lr": {"type": "float", "low": 1e-3, "high": 1e-1}}),
            "space.lr",
            ["grid", "step"],
        ),
        (
            grid_spec(
                space={"module__hidden1": {"type": "int", "low": 8, "high": 64, "log": True}}
            ),
            "space.module__hidden1",
            ["grid", "log"],
        ),
        (grid_spec(budget={"trials": 5}), "budget.trials", ["6 points", "trials=5"]),
        (tiny_spec(sampler={"name": "random"}, budget={}), "budget.trials", ["required"]),
        (tiny_spec(sampler={"name": "tpe"}, budget={}), "budget.trials", ["required"]),
        (
            tiny_spec(sampler={"name": "tpe"}, budget={"timeout": 60}),
            "budget.trials",
            ["required"],
        ),
        (tiny_spec(budget={"trials": 0}), "budget.trials", ["greater than or equal to 1"]),
        (
            tiny_spec(budget={"trials": 4, "timout": 60}),
            "budget.timout",
            ["unknown key", "did you mean 'timeout'?"],
        ),
        (
            tiny_spec(dataset={"name": "digits", "path": "x.npz"}),
            "dataset.path",
            ["not an option of the digits dataset"],
        ),
        (
            tiny_spec(dataset={"name": "csv", "path": "t.csv", "target": "y", "task_": "x"}),
            "dataset.task_",
            ["not an option of the csv dataset", "did you mean 'task'?"],
        ),
        (tiny_spec(direction="minimize"), "direction", ["maximize"]),
        (tiny_spec(fixed={"lr": 0.01}), "fixed.lr", ["also in space"]),
        (
            tiny_spec(fixed={"mixed_precision": "yes"}),
            "fixed.mixed_precision",
            ["must be true or false, got 'yes'"],
        ),
        (
            tiny_spec(
                space={"module__batch_norm": {"type": "categorical", "choices": [True, "no"]}}
            ),
            "space.module__batch_norm",
            ["must be true or false, got 'no'"],
        ),
        (
            tiny_spec(fixed={"module__hiden2": 8}),
            "fixed.module__hiden2",
            ["not a parameter of the mlp net", "did you mean 'module__hidden2'?"],
        ),
        (
            tiny_spec(fixed={"module__activation": "relu6"}),
            "fixed.module__activation",
            ["unknown name 'relu6'", "did you mean 'relu'?"],
        ),
        (
            tiny_spec(space={"optimizer": {"type": "categorical", "choices": ["adam", "sdg"]}}),
            "space.optimizer",
            ["unknown name 'sdg'", "did you mean 'sgd'?"],
        ),
        (
            tiny_spec(space={"lr": {"type": "flaot", "low": 0.1, "high": 1.0}}),
            "space.lr.type",
            ["int, float, categorical"],
        ),
        (
            tiny_spec(
                space={
                    "module__hidden2": {"type": "int", "low": 4, "high": "module__hidden1"},
                    "module__hidden1": {"type": "int", "low": 8, "high": 32},
                }
            ),
            "space.module__hidden2",
            ["'module__hidden1'", "earlier"],
        ),
        (
            tiny_spec(
                space={
                    "optimizer": {"type": "categorical", "choices": ["adam"]},
                    "lr": {"type": "float", "low": 0.001, "high": "optimizer"},
                }
            ),
            "space.lr",
            ["'optimizer'", "int or float"],
        ),
        (
            tiny_spec(enqueue=[{"module__hidden1": 16, "lr": 0.01, "module__hiden1": 8}]),
            "enqueue[0].module__hiden1",
            ["not a parameter in space", "did you mean 'module__hidden1'?"],
        ),
        (tiny_spec(enqueue=[{"module__hidden1": 16}]), "enqueue[0]", ["missing lr"]),
        (
            grid_spec(
                enqueue=[
                    {"optimizer": "adam", "module__hidden1": 8},
                    {"optimizer": "nadam", "module__hidden1": 8},
                ]
            ),
            "enqueue[1].optimizer",
            ["'nadam' is not one of ['adam', 'sgd']"],
        ),
        (
            tiny_spec(sampler={"name": "tpe", "options": {"n_startup": 3}}),
            "sampler.options.n_startup",
            ["not an option of the tpe sampler", "did you mean 'n_startup_trials'?"],
        ),
        (
            grid_spec(sampler={"name": "grid", "options": {"n_startup_trials": 3}}),
            "sampler.options.n_startup_trials",
            ["not an option of the grid sampler"],
        ),
        (
            tiny_spec(pruner={"name": "median", "options": {"n_warmup": 3}}),
            "pruner.options.n_warmup",
            ["not an option of the median pruner", "did you mean 'n_warmup_steps'?"],
        ),
        (tiny_spec(cv={"folds": 1}), "cv.folds", ["greater than or equal to 2"]),
        (
            tiny_spec(cv={"folds": 3, "stratifed": True}),
            "cv.stratifed",
            ["did you mean 'stratified'?"],
        ),
        (tiny_spec(name="my study"), "name", ["'my study' must start with a letter or digit"]),
    ],
    ids=[
        "missing-name",
        "missing-model",
        "missing-scoring",
        "unknown-model",
        "unknown-sampler",
        "grid-continuous-float",
        "grid-int-log",
        "grid-budget-disagrees",
        "random-no-budget",
        "tpe-no-budget",
        "tpe-timeout-only",
        "zero-trials",
        "budget-typo",
        "dataset-option-digits",
        "dataset-option-csv",
        "direction-minimize",
        "fixed-and-space",
        "fixed-not-a-boolean",
        "choice-not-a-boolean",
        "fixed-unknown-param",
        "fixed-unknown-activation",
        "choice-unknown-optimizer",
        "param-type-typo",
        "bound-names-later-param",
        "bound-names-categorical",
        "enqueue-unknown-key",
        "enqueue-missing-key",
        "enqueue-bad-choice",
        "sampler-option",
        "grid-sampler-option",
        "pruner-option",
        "cv-folds-1",
        "cv-typo",
        "name-with-space",
    ],
)
def test_single_problem_names_its_key(raw: Any, key: str, fragments: list[str]) -> None:
    problems = problems_of(raw)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}: ") or problems[0].startswith(f"{key}."), problems
    for fragment in fragments:
        assert fragment in problems[0]


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodel: mlp\nspace:\n  lr: {type: float, low: 0.1\n  x: 1\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.source == str(path)
    [problem] = info.value.problems
    assert re.match(r"line 5, column \d+: YAML syntax error", problem), problem


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- name: x\n- model: mlp\n", "must hold a mapping"),
        ("just a sentence\n", "must hold a mapping"),
        ("", "must hold a mapping"),
    ],
    ids=["list", "scalar", "empty"],
)
def test_file_that_is_not_a_mapping(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    [problem] = info.value.problems
    assert fragment in problem


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert info.value.source == str(tmp_path / "nope.yaml")
    [problem] = info.value.problems
    assert "does not exist" in problem


# --- edge cases found in review ---------------------------------------------------------


def test_fixed_named_value_given_as_list_is_a_spec_error() -> None:
    problems = problems_of(tiny_spec(fixed={"optimizer": ["adam"]}))
    assert any(p.startswith("fixed.optimizer:") for p in problems)


@pytest.mark.parametrize("section", ["fixed", "dataset"])
def test_non_string_key_is_a_spec_error(section: str) -> None:
    raw = tiny_spec()
    raw[section] = {**raw[section], 1: 2}
    problems = problems_of(raw)
    assert any(p.startswith(f"{section}.1:") for p in problems)


def test_directory_instead_of_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError):
        load_spec(tmp_path)


def test_fractional_int_bound_is_one_problem() -> None:
    problems = problems_of(
        tiny_spec(space={"module__hidden1": {"type": "int", "low": 1.5, "high": 8}})
    )
    assert len(problems) == 1, problems
    assert problems[0].startswith("space.module__hidden1.low: ")


def test_seed_in_sampler_options_points_to_sampler_seed() -> None:
    [problem] = problems_of(tiny_spec(sampler={"name": "tpe", "options": {"seed": 3}}))
    assert problem.startswith("sampler.options.seed: ")
    assert "did you mean 'seed'" not in problem
    assert "sampler.seed" in problem.removeprefix("sampler.options.seed: ")


def test_typo_inside_space_parameter_gets_a_suggestion() -> None:
    [problem] = problems_of(
        tiny_spec(space={"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "logg": True}})
    )
    assert problem.startswith("space.lr.logg: unknown key")
    assert "did you mean 'log'?" in problem


def test_exponent_without_dot_is_read_as_a_number(write_spec: Callable[..., Path]) -> None:
    path = write_spec()
    path.write_text(path.read_text().replace("low: 0.001", "low: 1e-3"))
    assert "low: 1e-3" in path.read_text()
    try:
        spec = load_spec(path)
    except SpecError as error:
        # Rejecting it is fine too, if the message says how to write the number.
        assert "1.0e-3" in " ".join(error.problems), error.problems
    else:
        assert spec.space["lr"].low == 1e-3  # type: ignore[union-attr]


def test_bound_that_cannot_hold_is_a_spec_error() -> None:
    problems = problems_of(
        tiny_spec(
            space={
                "module__hidden1": {"type": "int", "low": 8, "high": 32},
                "module__hidden2": {"type": "int", "low": 16, "high": "module__hidden1"},
            }
        )
    )
    assert any(p.startswith("space.module__hidden2:") for p in problems), problems


def test_missing_required_dataset_option_is_a_spec_error() -> None:
    problems = problems_of(tiny_spec(dataset={"name": "csv", "path": "t.csv"}))
    assert any(p.startswith("dataset") and "target" in p for p in problems), problems


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe"])
def test_a_repeated_choice_is_one_problem_naming_the_key_and_value(sampler: str) -> None:
    """[adam, adam, sgd] would register three grid trials for two points (and draw adam
    twice as often with any other sampler)."""
    raw = grid_spec(
        sampler={"name": sampler},
        budget={} if sampler == "grid" else {"trials": 4},
        space={
            "optimizer": {"type": "categorical", "choices": ["adam", "adam", "sgd"]},
            "module__hidden1": {"type": "int", "low": 8, "high": 24, "step": 8},
        },
    )
    assert problems_of(raw) == [
        "space.optimizer: choice 'adam' is given twice; give each choice once"
    ]


def test_repeated_choices_of_several_keys_are_all_listed() -> None:
    raw = grid_spec(
        space={
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd", "adam"]},
            "module__hidden1": {"type": "categorical", "choices": [32, 32.0, 64]},
        }
    )
    assert problems_of(raw) == [
        "space.optimizer: choice 'adam' is given twice; give each choice once",
        "space.module__hidden1: choice 32 is given twice, as 32 and 32.0: one value to "
        "Optuna, which stores a choice found by == (1, 1.0 and true are one; so are 0, 0.0 "
        "and false); give each choice once",
    ]


def test_a_grid_of_distinct_choices_counts_each_point_once() -> None:
    raw = grid_spec(
        space={"optimizer": {"type": "categorical", "choices": ["adam", "sgd", "adamw"]}}
    )
    assert parse_spec(raw).n_trials == 3


@pytest.mark.parametrize(
    ("enqueue", "problem"),
    [
        (
            [
                {"optimizer": "adam", "module__hidden1": 8},
                {"optimizer": "adam", "module__hidden1": 8},
            ],
            "enqueue[1]: the same point as enqueue[0]",
        ),
        (
            [
                {"optimizer": "sgd", "module__hidden1": 8},
                {"optimizer": "adam", "module__hidden1": 16},
                {"optimizer": "sgd", "module__hidden1": 8.0},
            ],
            "enqueue[2]: the same point as enqueue[0]",
        ),
    ],
    ids=["twice", "as-another-number"],
)
def test_a_warm_start_given_twice_is_refused(enqueue: list[dict[str, Any]], problem: str) -> None:
    said = f"{problem}, which would run twice; give each point once"
    assert problems_of(grid_spec(enqueue=enqueue)) == [said]
    random = grid_spec(sampler={"name": "random"}, budget={"trials": 9}, enqueue=enqueue)
    assert problems_of(random) == [said]


def test_a_warm_start_matches_a_choice_by_type_as_the_grid_does() -> None:
    """true equals the choice 1 to Python, but a grid point 1 is not the warm start true:
    accepted, the point would run twice."""
    raw = grid_spec(
        space={"module__hidden1": {"type": "categorical", "choices": [1, 2]}},
        enqueue=[{"module__hidden1": True}],
    )
    assert problems_of(raw) == ["enqueue[0].module__hidden1: True is not one of [1, 2]"]
    raw["enqueue"] = [{"module__hidden1": 1.0}]  # a number by value: the grid point 1
    assert parse_spec(raw).n_trials == 2


def test_enqueue_value_out_of_range_is_a_spec_error() -> None:
    problems = problems_of(tiny_spec(enqueue=[{"module__hidden1": 1000, "lr": 0.01}]))
    assert any(p.startswith("enqueue[0].module__hidden1:") for p in problems), problems


@pytest.mark.parametrize(
    ("word", "candidates", "suggestion"),
    [
        ("samplr", ["sampler", "pruner", "space"], "; did you mean 'sampler'?"),
        (
            "module__hiden1",
            ("module__hidden1", "module__hidden2"),
            "; did you mean 'module__hidden1'?",
        ),
        ("zzz", ["sampler", "pruner"], ""),
        ("anything", [], ""),
        (3, ["3e", "x"], "; did you mean '3e'?"),
    ],
)
def test_did_you_mean_suggests_the_closest_candidate_or_nothing(
    word: object, candidates: list[str], suggestion: str
) -> None:
    assert did_you_mean(word, candidates) == suggestion


# --- the CLI -------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_register_bad_spec_exits_2_listing_every_problem_and_writes_nothing(
    write_spec: Callable[..., Path], tmp_path: Path, sqlite_url: str
) -> None:
    path = write_spec(
        samplr={"name": "tpe"},
        scoring="acuracy",
        dataset={"name": "digitz"},
        fixed={"optimizer": "adamm"},
    )
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert len(info.value.problems) == 4

    result = run_hpo("register", str(path), "--storage", sqlite_url, timeout=120)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # Rich wraps long lines at the console width, so compare without whitespace.
    stderr = "".join(result.stderr.split())
    assert "".join(str(path).split()) in stderr
    for problem in info.value.problems:
        assert "".join(problem.split()) in stderr
    # The spec is checked before the storage is opened: not even an empty database is left.
    assert not (tmp_path / "hpo.db").exists()
    assert sqlite_url.endswith(str(tmp_path / "hpo.db"))


# --- issue 15: duplicate keys ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("name: x\nmodel: mlp\nname: y\n", 3, "'name'"),
        ("name: x\nfixed:\n  lr: 0.1\n  max_epochs: 3\n  lr: 0.2\n", 5, "'lr'"),
        ("name: x\nspace:\n  lr: {type: float, low: 0.1, high: 1, low: 0.2}\n", 3, "'low'"),
        ("name: x\nenqueue:\n  - {lr: 0.1, lr: 0.2}\n", 3, "'lr'"),
    ],
    ids=["top", "fixed", "flow-mapping", "in-a-list"],
)
def test_duplicate_key_is_refused_with_key_and_line(
    tmp_path: Path, text: str, line: int, key: str
) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    [problem] = info.value.problems
    assert problem.startswith(f"line {line}, column "), problem
    assert f"duplicate key {key}" in problem
    assert "keep only one" in problem


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    spec = tiny_spec()
    spec["fixed"] = {"<<": {"max_epochs": 5, "batch_size": 64}, "max_epochs": 3}
    path.write_text(
        "base: &base {max_epochs: 5, batch_size: 64}\n"
        + yaml.safe_dump({k: v for k, v in spec.items() if k != "fixed"})
        + "fixed: {<<: *base, max_epochs: 3}\n"
    )
    with pytest.raises(SpecError) as info:
        load_spec(path)
    # only the anchor's holder is unknown; the merge itself is fine
    [problem] = info.value.problems
    assert problem.startswith("base: unknown key")


# --- issue 15: seeds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"sampler": {"name": "random", "seed": -1}}, "sampler.seed"),
        ({"cv": {"folds": 2, "seed": -5}}, "cv.seed"),
        ({"cv": {"folds": 2, "seed": 2**32}}, "cv.seed"),
        ({"sampler": {"name": "random", "seed": True}}, "sampler.seed"),
        ({"dataset": {"name": "diabetes", "seed": -1}}, "dataset.seed"),
        ({"dataset": {"name": "synthetic_regression", "seed": "one"}}, "dataset.seed"),
    ],
    ids=["sampler", "cv", "cv-too-big", "bool", "dataset", "dataset-text"],
)
def test_bad_seed_is_refused(overrides: dict[str, Any], key: str) -> None:
    [problem] = problems_of(tiny_spec(**overrides))
    assert problem.startswith(f"{key}: must be "), problem
    assert "from 0 to" in problem


def test_null_and_zero_seeds_are_fine() -> None:
    parse_spec(tiny_spec(sampler={"name": "random", "seed": None}, cv={"folds": 2, "seed": 0}))
    parse_spec(tiny_spec(dataset={"name": "diabetes", "seed": 7}))


# --- issue 15: NaN and infinities ------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"space": {"lr": {"type": "float", "low": NAN, "high": 0.1}}}, "space.lr.low"),
        ({"space": {"lr": {"type": "float", "low": 0.01, "high": INF}}}, "space.lr.high"),
        (
            {"space": {"module__hidden1": {"type": "int", "low": -INF, "high": 8}}},
            "space.module__hidden1.low",
        ),
        ({"space": {"lr": {"type": "categorical", "choices": [0.1, NAN]}}}, "space.lr.choices[1]"),
        (
            {"space": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "step": NAN}}},
            "space.lr.step",
        ),
        ({"fixed": {"max_epochs": 3, "lr": INF}}, "fixed.lr"),
        ({"fixed": {"max_epochs": NAN}}, "fixed.max_epochs"),
        (
            {
                "space": {"lr": {"type": "float", "low": 0.01, "high": 0.1}},
                "enqueue": [{"lr": NAN}],
            },
            "enqueue[0].lr",
        ),
        ({"sampler": {"name": "tpe", "options": {"n_startup_trials": INF}}}, "sampler.options"),
        ({"pruner": {"name": "median", "options": {"n_warmup_steps": NAN}}}, "pruner.options"),
        ({"budget": {"trials": NAN}}, "budget.trials"),
        ({"budget": {"trials": 4, "timeout": INF}}, "budget.timeout"),
        ({"dataset": {"name": "synthetic_regression", "noise": NAN}}, "dataset.noise"),
    ],
    ids=[
        "low-nan",
        "high-inf",
        "int-low-minus-inf",
        "choice",
        "step",
        "fixed-lr",
        "fixed-max-epochs",
        "enqueue",
        "sampler-option",
        "pruner-option",
        "budget-trials",
        "budget-timeout",
        "dataset-option",
    ],
)
def test_non_finite_number_is_one_problem_naming_its_key(
    overrides: dict[str, Any], key: str
) -> None:
    [problem] = problems_of(tiny_spec(**overrides))
    assert problem.startswith(key), problem
    assert "must be a finite number" in problem


def test_yaml_nan_and_inf_are_refused_from_a_file(tmp_path: Path) -> None:
    spec = tiny_spec()
    spec["space"]["lr"] = {"type": "float", "low": 0.001, "high": 0.1}
    text = yaml.safe_dump(spec).replace("high: 0.1", "high: .inf").replace("low: 8", "low: .nan")
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert sorted(p.partition(":")[0] for p in info.value.problems) == [
        "space.lr.high",
        "space.module__hidden1.low",
    ]


# --- issue 15: huge grids ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("space", "fragment"),
    [
        (
            {"optimizer__momentum": {"type": "float", "low": 0.0, "high": 1.0, "step": 1e-7}},
            "10,000,001 points",
        ),
        (
            {
                "optimizer__weight_decay": {
                    "type": "float",
                    "low": 0.0,
                    "high": 1.0,
                    "step": 1e-6,
                },
                "optimizer__momentum": {"type": "float", "low": 0.0, "high": 1.0, "step": 1e-6},
            },
            "about 10^12 points",
        ),
        (
            {
                "module__hidden1": {"type": "int", "low": 1, "high": 2000},
                "module__hidden2": {"type": "int", "low": 1, "high": "module__hidden1"},
            },
            "may have up to 4,000,000 points",
        ),
        (
            {
                "module__hidden1": {"type": "int", "low": 1, "high": 300},
                "module__hidden2": {"type": "int", "low": 1, "high": "module__hidden1"},
            },
            "more than 10,000 points",
        ),
    ],
    ids=["1e7", "1e12", "cut-box-too-big-to-walk", "cut-walked"],
)
def test_huge_grid_is_refused_without_expanding(space: dict[str, Any], fragment: str) -> None:
    [problem] = problems_of(grid_spec(space=space))
    assert problem.startswith("space: ")
    assert fragment in problem
    assert "random or tpe" in problem


def test_cut_grid_under_the_cap_is_counted_exactly() -> None:
    space = {
        "module__hidden1": {"type": "int", "low": 1, "high": 140},
        "module__hidden2": {"type": "int", "low": 1, "high": "module__hidden1"},
    }
    # its uncut box has 19,600 points, more than the cap, but the cut leaves 140 * 141 / 2
    assert parse_spec(grid_spec(space=space)).n_trials == 9_870


# --- issue 15: value rules of the net parameters hpo knows -----------------------------------


def _cat(*choices: Any) -> dict[str, Any]:
    return {"type": "categorical", "choices": list(choices)}


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        ({"fixed": {"max_epochs": 0}}, "fixed.max_epochs", "got 0"),
        ({"fixed": {"max_epochs": 2.5}}, "fixed.max_epochs", "whole number"),
        ({"fixed": {"max_epochs": True}}, "fixed.max_epochs", "got True"),
        ({"fixed": {"max_epochs": 3, "batch_size": "two"}}, "fixed.batch_size", "got 'two'"),
        ({"fixed": {"max_epochs": 3, "batch_size": 0}}, "fixed.batch_size", "-1 for"),
        ({"fixed": {"max_epochs": 3, "batch_size": -2}}, "fixed.batch_size", "got -2"),
        ({"fixed": {"max_epochs": 3, "lr": 0}}, "fixed.lr", "> 0"),
        ({"fixed": {"max_epochs": 3, "lr": "0.1"}}, "fixed.lr", "got '0.1'"),
        ({"fixed": {"max_epochs": 3, "early_stopping_patience": 0}}, "fixed.early_stopping", ""),
        ({"fixed": {"max_epochs": 3, "validation_fraction": 1.0}}, "fixed.validation", "(0, 1)"),
        ({"fixed": {"max_epochs": 3, "validation_fraction": 0}}, "fixed.validation", "(0, 1)"),
        ({"fixed": {"max_epochs": 3, "module__dropout": 1.0}}, "fixed.module__dropout", "[0, 1)"),
        ({"fixed": {"max_epochs": 3, "module__dropout": -0.1}}, "fixed.module__dropout", ""),
        ({"fixed": {"max_epochs": 3, "module__units": 10**8}}, "fixed.module__units", "100000"),
        ({"fixed": {"max_epochs": 3, "module__depth": 0}}, "fixed.module__depth", "got 0"),
        ({"fixed": {"max_epochs": 3, "optimizer__weight_decay": -1e-4}}, "fixed.optimizer__w", ""),
        ({"fixed": {"max_epochs": None}}, "fixed.max_epochs", "got null"),
        ({"space": {"module__hidden1": _cat(64, 0)}}, "space.module__hidden1", "every choice"),
        ({"space": {"module__hidden1": _cat(64, False)}}, "space.module__hidden1", "got False"),
        ({"space": {"module__dropout": _cat(0.0, 1.5)}}, "space.module__dropout", "got 1.5"),
        ({"space": {"batch_size": _cat(32, "64")}}, "space.batch_size", "got '64'"),
        (
            {"space": {"module__hidden1": {"type": "int", "low": 0, "high": 64}}},
            "space.module__hidden1.low",
            "out of range",
        ),
        (
            {"space": {"module__hidden1": {"type": "int", "low": 8, "high": 10**8}}},
            "space.module__hidden1.high",
            "100000",
        ),
        (
            {"space": {"lr": {"type": "float", "low": 0.0, "high": 0.1}}},
            "space.lr.low",
            "> 0",
        ),
        (
            {"space": {"module__dropout": {"type": "float", "low": 0.0, "high": 1.0}}},
            "space.module__dropout.high",
            "[0, 1)",
        ),
        (
            {"space": {"batch_size": {"type": "int", "low": -1, "high": 64}}},
            "space.batch_size.low",
            "out of range",
        ),
        (
            {"space": {"max_epochs": {"type": "float", "low": 1, "high": 9}}},
            "space.max_epochs",
            "type: int",
        ),
    ],
)
def test_value_breaking_its_rule_is_one_problem_naming_its_key(
    overrides: dict[str, Any], key: str, fragment: str
) -> None:
    # only the key under test: nothing of tiny_spec's fixed or space in the way (a space of
    # one choice searches nothing the tests name)
    spec = tiny_spec(fixed={}, space={"optimizer": {"type": "categorical", "choices": ["adam"]}})
    spec.update(overrides)
    [problem] = problems_of(spec)
    assert problem.startswith(key), problem
    assert fragment in problem
    assert "must be" in problem


@pytest.mark.parametrize(
    "fixed",
    [
        {"max_epochs": 1, "batch_size": -1},
        {"max_epochs": 3, "batch_size": 1, "lr": 1, "early_stopping_patience": None},
        {"max_epochs": 3, "module__dropout": 0, "module__hidden2": None, "module__units": 100_000},
        {"max_epochs": 3, "validation_fraction": 0.5, "optimizer__weight_decay": 0},
    ],
)
def test_values_within_their_rules_are_fine(fixed: dict[str, Any]) -> None:
    parse_spec(tiny_spec(fixed=fixed, space={"module__hidden1": _cat(8, 16)}))


def test_module_rules_hold_for_built_in_models_only() -> None:
    spec = tiny_spec(model="mynets.nets:Net", fixed={"max_epochs": 3, "module__units": "wide"})
    parse_spec(spec)  # a user module's arguments are its own business


def test_every_rule_names_a_parameter_of_some_built_in_model() -> None:
    from hpo.spec.rules import RULES
    from hpo.spec.study_spec import allowed_keys

    known = {key for model in ("mlp", "cnn", "regressor") for key in allowed_keys(model)}
    assert set(RULES) <= known


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_search_with_nothing_to_search_says_how_to_run_one_configuration(sampler: str) -> None:
    [problem] = problems_of(tiny_spec(sampler={"name": sampler}, space={}))
    assert problem.startswith(f"space: empty, so the {sampler} sampler has nothing to search")
    assert "`sampler: {name: grid}` with `space: {}`" in problem
    spec = tiny_spec(sampler={"name": sampler})
    del spec["space"]
    [problem] = problems_of(spec)
    assert problem.startswith("space: missing") and "`space: {}`" in problem


def test_one_fixed_configuration_is_a_grid_of_one_point() -> None:
    spec = parse_spec(tiny_spec(sampler={"name": "grid"}, space={}, budget={}))
    assert spec.n_trials == 1
