"""A user's own module and loss named in a spec: trust, import, signature checks, training.

The user's code is a real package written into a temporary folder; its ``__init__`` leaves a
marker file when it is imported, so a refusal can be shown to happen before any import.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import REPO, run_hpo, tiny_spec

from hpo.engine.build import build_net
from hpo.engine.data import load_dataset
from hpo.engine.user_code import admit_user_code, check_user_code, model_class
from hpo.errors import CodeImportError, HpoError, SpecError
from hpo.spec.references import allowed_prefixes, check_trusted, is_trusted, parse_reference
from hpo.spec.study_spec import parse_spec

USER_PACKAGE = '''
"""A user's models; nothing here knows hpo."""
import math
import os

import torch
from torch import nn

if os.environ.get("USERNETS_MARKER"):
    open(os.environ["USERNETS_MARKER"], "w").close()


class Net(nn.Module):
    def __init__(self, input_shape, n_outputs, width=16, depth=1):
        super().__init__()
        layers = [nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.layers = nn.Sequential(*layers, nn.Linear(width, n_outputs))

    def forward(self, X):
        return self.layers(X)


class Fixed64(nn.Module):
    """Takes neither input_shape nor n_outputs: its sizes are its own."""

    def __init__(self, classes=10):
        super().__init__()
        self.linear = nn.Linear(64, classes)

    def forward(self, X):
        return self.linear(X.flatten(1))


class NeedsWidth(nn.Module):
    def __init__(self, input_shape, n_outputs, width):
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), n_outputs)

    def forward(self, X):
        return self.linear(X.flatten(1))


class ScaledMSE(nn.Module):
    def __init__(self, scale=1.0, reduction="mean"):
        super().__init__()
        self.scale = scale
        self.reduction = reduction

    def forward(self, prediction, target):
        loss = (prediction - target) ** 2 * self.scale
        return loss.mean() if self.reduction == "mean" else loss


NOT_A_MODULE = 3
'''


@pytest.fixture
def user_package(tmp_path: Path) -> Iterator[Path]:
    """``usernets`` (``usernets.models``) in a folder of its own, importable here."""
    root = tmp_path / "code"
    package = root / "usernets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(textwrap.dedent(USER_PACKAGE))
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [n for n in sys.modules if n == "usernets" or n.startswith("usernets.")]:
        del sys.modules[name]


#: One configuration, no search: everything in fixed, a grid of one point.
ONE_POINT: dict[str, object] = {"space": {}, "sampler": {"name": "grid"}, "budget": {}}


def user_spec(**overrides: object) -> dict[str, object]:
    defaults: dict[str, object] = {
        "name": "user-digits",
        "model": "usernets.models:Net",
        "space": {
            "module__width": {"type": "int", "low": 8, "high": 32},
            "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        },
    }
    return tiny_spec(**{**defaults, **overrides})


# --- the spec -------------------------------------------------------------------------------


def test_a_spec_names_a_user_module_and_keeps_its_module_keys_for_later() -> None:
    spec = parse_spec(user_spec(fixed={"max_epochs": 2, "module__anything": 1}))
    assert spec.model == "usernets.models:Net"
    assert spec.custom_code == [("model", "usernets.models:Net")]


@pytest.mark.parametrize("model", ["usernets.models", "usernets.models:", "1pkg:Net", "a b:C"])
def test_a_malformed_reference_says_the_form(model: str) -> None:
    with pytest.raises(SpecError, match="package.module:ClassName"):
        parse_spec(user_spec(model=model))


def test_a_criterion_is_a_builtin_name_or_a_reference() -> None:
    assert parse_spec(user_spec(criterion="nll")).criterion == "nll"
    spec = parse_spec(user_spec(criterion="usernets.models:ScaledMSE"))
    assert spec.custom_code == [
        ("model", "usernets.models:Net"),
        ("criterion", "usernets.models:ScaledMSE"),
    ]
    with pytest.raises(SpecError, match="unknown loss 'hubr'; did you mean 'huber'"):
        parse_spec(user_spec(criterion="hubr"))


def test_net_keys_of_a_user_module_are_still_checked_at_parse() -> None:
    with pytest.raises(SpecError, match="fixed.max_epoch: .*did you mean 'max_epochs'"):
        parse_spec(user_spec(fixed={"max_epoch": 2}))


# --- trust ----------------------------------------------------------------------------------


def test_a_prefix_trusts_its_package_and_what_is_inside_it_only() -> None:
    prefixes = allowed_prefixes(["usernets"], environ={})
    assert is_trusted(parse_reference("usernets.models:Net"), prefixes)
    assert is_trusted(parse_reference("usernets:Net"), prefixes)
    assert not is_trusted(parse_reference("usernets_evil.models:Net"), prefixes)
    assert not is_trusted(parse_reference("os:system"), prefixes)
    assert is_trusted(parse_reference("hpo.engine.models:MLP"), prefixes)  # a built-in model
    assert not is_trusted(parse_reference("hpo.spec.references:import_reference"), prefixes)
    assert not is_trusted(parse_reference("hpo.engine.models:Dropout"), prefixes)


def test_the_environment_adds_prefixes() -> None:
    prefixes = allowed_prefixes([], environ={"HPO_ALLOW_MODULES": "a.b, c"})
    assert prefixes == ("a.b", "c")


def test_untrusted_code_is_refused_with_the_flag_that_trusts_it() -> None:
    with pytest.raises(HpoError) as refused:
        check_trusted(
            [("model", "usernets.models:Net"), ("criterion", "losses:Mine")],
            allowed_prefixes([], environ={}),
        )
    message = str(refused.value)
    assert "model: usernets.models:Net" in message and "criterion: losses:Mine" in message
    assert "--allow-module losses --allow-module usernets" in message
    assert "HPO_ALLOW_MODULES=losses,usernets" in message


def test_a_refused_module_is_never_imported(
    user_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    monkeypatch.setenv("USERNETS_MARKER", str(marker))
    monkeypatch.delenv("HPO_ALLOW_MODULES", raising=False)
    with pytest.raises(HpoError, match="--allow-module usernets"):
        admit_user_code(parse_spec(user_spec()), [], "test")
    assert not marker.exists() and "usernets.models" not in sys.modules
    admit_user_code(parse_spec(user_spec()), ["usernets"], "test")
    assert marker.exists()


# --- signature checks -----------------------------------------------------------------------


def problems(spec: dict[str, object]) -> list[str]:
    with pytest.raises(SpecError) as error:
        check_user_code(parse_spec(spec))
    return error.value.problems


def test_an_unknown_module_key_is_named_with_a_close_one(user_package: Path) -> None:
    (problem,) = problems(user_spec(fixed={"max_epochs": 2, "module__widht": 3}))
    assert problem.startswith("module__widht: not an argument of Net; did you mean 'width'?")
    assert "(it takes width, depth)" in problem


def test_a_required_argument_no_key_gives_is_named(user_package: Path) -> None:
    (problem,) = problems(user_spec(model="usernets.models:NeedsWidth", **ONE_POINT))
    assert problem == (
        "module: NeedsWidth needs width; give fixed.module__width (or search them in space)"
    )


def test_hpo_gives_the_data_arguments(user_package: Path) -> None:
    (problem,) = problems(user_spec(fixed={"module__n_outputs": 3}))
    assert problem == (
        "module__n_outputs: hpo passes n_outputs from the data; remove it from the spec"
    )


def test_criterion_keys_are_held_against_the_loss(user_package: Path) -> None:
    (problem,) = problems(user_spec(criterion="huber", fixed={"criterion__delt": 2.0}))
    assert "criterion__delt: not an argument of HuberLoss; did you mean 'delta'?" in problem
    check_user_code(parse_spec(user_spec(criterion="huber", fixed={"criterion__delta": 2.0})))


def test_code_that_cannot_be_imported_says_what_to_do() -> None:
    with pytest.raises(CodeImportError, match="install the package on this machine"):
        check_user_code(parse_spec(user_spec(model="nowhere_to_be_found.models:Net")))


def test_a_name_that_is_not_a_module_class_is_refused(user_package: Path) -> None:
    with pytest.raises(HpoError, match="not a torch.nn.Module subclass"):
        model_class("usernets.models:NOT_A_MODULE")
    with pytest.raises(HpoError, match="has no 'Nett'; did you mean 'Net'"):
        model_class("usernets.models:Nett")


# --- building and training ------------------------------------------------------------------


@pytest.mark.slow
def test_the_data_arguments_go_only_to_a_module_that_takes_them(user_package: Path) -> None:
    data = load_dataset("digits")
    spec = parse_spec(user_spec(model="usernets.models:Fixed64", **ONE_POINT))
    net = build_net(spec, data, spec.configuration({}), "cpu")
    assert "module__input_shape" not in net.get_params()
    net.fit(data.X_train, data.y_train)
    assert net.predict(data.X_test).shape == (len(data.X_test),)

    spec = parse_spec(user_spec())
    net = build_net(spec, data, spec.configuration({"module__width": 8, "lr": 0.01}), "cpu")
    assert net.get_params()["module__input_shape"] == (1, 8, 8)
    assert net.get_params()["module__n_outputs"] == 10


@pytest.mark.slow
def test_a_user_loss_and_a_named_loss_train_a_regression(user_package: Path) -> None:
    data = load_dataset("diabetes")
    for criterion, loss in (("usernets.models:ScaledMSE", "ScaledMSE"), ("huber", "HuberLoss")):
        spec = parse_spec(
            user_spec(
                dataset={"name": "diabetes"},
                scoring="neg_mean_squared_error",
                criterion=criterion,
                **ONE_POINT,
                fixed={"max_epochs": 5, "module__width": 8, "lr": 0.01},
            )
        )
        net = build_net(spec, data, spec.configuration({}), "cpu")
        net.fit(data.X_train, data.y_train)
        assert type(net.criterion_).__name__ == loss
        assert np.isfinite(net.history[-1, "train_loss"])


# --- real processes -------------------------------------------------------------------------


@pytest.fixture
def registered(
    user_package: Path, tmp_path: Path, write_spec: Callable[..., Path]
) -> tuple[str, Path]:
    """A user-module study registered from the package's folder; (storage URL, that folder)."""
    url = f"sqlite:///{tmp_path / 'user.db'}"
    path = write_spec(user_spec(budget={"trials": 2}), name="user.yaml")
    registered = run_hpo(
        "register", str(path), "--storage", url, "--allow-module", "usernets", cwd=user_package
    )
    assert registered.returncode == 0, registered.stderr
    return url, user_package


@pytest.mark.slow
def test_a_worker_refuses_untrusted_code_before_any_trial_and_runs_trusted_code(
    registered: tuple[str, Path], tmp_path: Path
) -> None:
    url, code = registered
    marker = tmp_path / "imported"
    env = {"USERNETS_MARKER": str(marker), "HPO_ALLOW_MODULES": ""}

    refused = run_hpo("worker", "--study", "user-digits", "--storage", url, cwd=code, env=env)

    assert refused.returncode == 1
    assert "--allow-module usernets" in refused.stderr and "Traceback" not in refused.stderr
    assert not marker.exists()
    study = optuna.load_study(study_name="user-digits", storage=url)
    assert study.trials == []

    trusted = run_hpo(
        "worker", "--study", "user-digits", "--storage", url, "--allow-module", "usernets",
        cwd=code, env=env,
    )  # fmt: skip
    assert trusted.returncode == 0, trusted.stderr
    assert marker.exists()
    states = [t.state for t in optuna.load_study(study_name="user-digits", storage=url).trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2


@pytest.mark.slow
def test_the_environment_trusts_code_for_a_worker(registered: tuple[str, Path]) -> None:
    url, code = registered
    run = run_hpo(
        "worker", "--study", "user-digits", "--storage", url, "--trials", "1",
        cwd=code, env={"HPO_ALLOW_MODULES": "usernets"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr


@pytest.mark.slow
def test_registration_checks_keys_where_the_code_imports_and_workers_check_them_everywhere(
    user_package: Path, tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    url = f"sqlite:///{tmp_path / 'user.db'}"
    path = write_spec(user_spec(fixed={"max_epochs": 2, "module__widht": 3}), name="bad.yaml")

    trust = ("--allow-module", "usernets")
    here = run_hpo("register", str(path), "--storage", url, *trust, cwd=user_package)
    assert here.returncode == 2
    assert "module__widht: not an argument of Net; did you mean 'width'?" in here.stderr

    elsewhere = run_hpo("register", str(path), "--storage", url, *trust, cwd=tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "not checked here" in elsewhere.stderr and "each worker checks it" in elsewhere.stderr

    worker = run_hpo(
        "worker", "--study", "user-digits", "--storage", url, "--allow-module", "usernets",
        cwd=user_package,
    )  # fmt: skip
    assert worker.returncode == 2
    assert "did you mean 'width'?" in worker.stderr
    assert optuna.load_study(study_name="user-digits", storage=url).trials == []


@pytest.mark.slow
def test_hpo_run_needs_the_flag_and_its_workers_import_the_code(
    user_package: Path, tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    url = f"sqlite:///{tmp_path / 'run.db'}"
    path = write_spec(user_spec(budget={"trials": 2}), name="run.yaml")
    env = {"HPO_ALLOW_MODULES": ""}
    refused = run_hpo("run", str(path), "--storage", url, cwd=user_package, env=env)
    assert refused.returncode == 1 and "--allow-module usernets" in refused.stderr

    ran = run_hpo(
        "run", str(path), "--storage", url, "--workers", "2", "--allow-module", "usernets",
        "--results", str(tmp_path / "results"), cwd=user_package, env=env,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "2 COMPLETE" in ran.stderr
    assert os.path.exists(tmp_path / "results" / "user-digits" / "best_params.csv")


@pytest.mark.slow
def test_a_worker_keeps_fold_processes_for_the_trials_whose_module_does_not_stack(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    """tests/user_nets.py: UserMLP stacks through vmap, DropoutMLP is refused by the probe; a
    worker on two threads stacks the one and fits the other's folds two at once."""
    url = f"sqlite:///{tmp_path / 'plans.db'}"
    models = {"stacks": "tests.user_nets:UserMLP", "refused": "tests.user_nets:DropoutMLP"}
    for name, model in models.items():
        path = write_spec(
            tiny_spec(name=name, model=model, **ONE_POINT),
            name=f"{name}.yaml",
        )
        trust = ("--allow-module", "tests")
        registered = run_hpo(
            "register", str(path), "--storage", url, *trust, env={"PYTHONPATH": str(REPO)}
        )
        assert registered.returncode == 0, registered.stderr
        worker = run_hpo(
            "worker", "--study", name, "--storage", url, "--threads", "2",
            "--allow-module", "tests", env={"PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert worker.returncode == 0, worker.stderr
    plans = {
        name: optuna.load_study(study_name=name, storage=url).trials[0].user_attrs["folds_plan"]
        for name in ("stacks", "refused")
    }
    assert plans == {
        "stacks": "folds stacked, 1 thread",
        "refused": "2 folds at once (1 fold process), 1 thread each",
    }
