"""The Python API: ``import hpo``, its version, ``hpo.run``, ``hpo.best_net``,
``hpo.skorch_params`` (a best_params.csv row in plain skorch)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from conftest import REPO, run_hpo, tiny_spec
from skorch import NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import EarlyStopping
from skorch.dataset import ValidSplit

import hpo
from hpo.engine.data import load_dataset
from hpo.engine.models import MLP
from hpo.errors import SpecError


@pytest.mark.slow
def test_import_hpo_is_light_and_knows_its_version() -> None:
    code = "import sys, hpo; print(hpo.__version__); print('torch' in sys.modules)"
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert shown == [hpo.__version__, "False"]
    assert hpo.__version__[0].isdigit()


@pytest.mark.slow
def test_the_command_prints_the_same_version() -> None:
    shown = run_hpo("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"hpo {hpo.__version__}"


def test_the_package_says_it_is_typed() -> None:
    assert (REPO / "hpo" / "py.typed").is_file()
    assert 'hpo = ["py.typed"]' in (REPO / "pyproject.toml").read_text()


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'rnu'"):
        hpo.rnu  # noqa: B018


def best_row(text: str) -> pd.Series:
    return pd.read_csv(io.StringIO(text)).iloc[0]


@pytest.mark.slow
def test_a_best_params_row_fits_in_plain_skorch() -> None:
    row = best_row(
        "study,trial,value,preprocess,max_epochs,batch_size,early_stopping_patience,"
        "validation_fraction,lr,optimizer,optimizer__betas,module__hidden1,module__activation,"
        "criterion\n"
        'digits,7,0.95,none,4,64,2,0.25,0.01,adamax,"[0.8, 0.99]",24,tanh,cross_entropy\n'
    )
    params = hpo.skorch_params(row)

    assert params["optimizer"] is torch.optim.Adamax
    assert params["criterion"] is torch.nn.CrossEntropyLoss
    assert params["optimizer__betas"] == [0.8, 0.99]
    assert isinstance(params["train_split"], ValidSplit) and params["train_split"].cv == 0.25
    (stopping,) = params["callbacks"]
    assert isinstance(stopping, EarlyStopping) and stopping.patience == 2
    assert {"study", "trial", "value", "preprocess"}.isdisjoint(params)
    assert all(type(value) in (int, float, str, list) for key, value in params.items()
               if key.startswith(("module__", "lr", "max_", "batch")))  # fmt: skip

    data = load_dataset("digits")
    net = NeuralNetClassifier(
        MLP, module__input_shape=(1, 8, 8), module__n_outputs=10, **params
    ).fit(data.X_train, data.y_train)
    assert type(net.optimizer_) is torch.optim.Adamax
    assert net.module_.activation == "tanh" and net.module_.hidden1 == 24
    assert (net.predict(data.X_test) == data.y_test).mean() > 0.5


@pytest.mark.slow
def test_without_early_stopping_plain_skorch_trains_on_every_row() -> None:
    row = best_row("study,trial,value,lr,max_epochs,criterion\nd,0,-3.1,0.01,2,huber\n")
    params = hpo.skorch_params(row)
    assert params["train_split"] is None
    assert params["criterion"] is torch.nn.HuberLoss
    data = load_dataset("diabetes")
    net = NeuralNetRegressor(MLP, module__input_shape=(10,), module__n_outputs=1, **params)
    net.fit(data.X_train, data.y_train)
    assert "valid_loss" not in net.history[-1]


def test_a_scaling_that_plain_skorch_lacks_is_left_out_with_a_warning() -> None:
    row = best_row("study,trial,value,preprocess,lr\nd,0,0.9,standard,0.01\n")
    with pytest.warns(UserWarning, match="preprocess='standard' has no plain skorch parameter"):
        params = hpo.skorch_params(row)
    assert "preprocess" not in params


@pytest.mark.slow
def test_run_takes_a_mapping_and_returns_the_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    learns = {
        "fixed": {"max_epochs": 12, "batch_size": 32},
        "space": {
            "module__hidden1": {"type": "int", "low": 32, "high": 64},
            "lr": {"type": "float", "low": 0.005, "high": 0.02, "log": True},
        },
    }
    study = hpo.run(
        tiny_spec(name="api-digits", **learns),
        workers=1,
        storage=url,
        trials=2,
        results_dir=tmp_path / "results",
    )
    assert isinstance(study, optuna.Study) and study.study_name == "api-digits"
    assert len(study.trials) == 2
    row = pd.read_csv(tmp_path / "results" / "api-digits" / "best_params.csv").iloc[0]
    assert row["criterion"] == "cross_entropy"  # the task's default, named for plain skorch
    plain = NeuralNetClassifier(
        MLP, module__input_shape=(1, 8, 8), module__n_outputs=10, **hpo.skorch_params(row)
    )
    data = load_dataset("digits")
    assert plain.fit(data.X_train, data.y_train).score(data.X_test, data.y_test) > 0.5

    net = hpo.best_net("api-digits", storage=url)
    assert not net.initialized_
    assert net.module__hidden1 == study.best_params["module__hidden1"]
    assert net.lr == study.best_params["lr"]
    assert net.get_params()["module__input_shape"] == (1, 8, 8)
    assert np.isfinite(net.fit(data.X_train, data.y_train).history[-1, "train_loss"])


def test_run_reports_a_bad_mapping_as_a_spec_error() -> None:
    with pytest.raises(SpecError, match="(?s)<spec mapping>: 1 problem.*budget.trials"):
        hpo.run({**tiny_spec(), "budget": {"trials": 0}})


def test_a_cell_the_export_quoted_against_formulas_reads_back_as_it_was() -> None:
    row = best_row("study,trial,value,lr,'+weird,module__note\nd,0,0.9,0.01,1,'=1+1\n")
    params = hpo.skorch_params(row)
    assert params["module__note"] == "=1+1" and params["+weird"] == 1
