"""Results that travel: a refit stored as Optuna artifacts, loaded in another process from the
storage and the artifact folder alone, and served by optuna-dashboard."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port, get_json, served, tiny_spec
from sklearn.metrics import get_scorer

from hpo.engine.data import load_dataset
from hpo.errors import HpoError, StudyError
from hpo.results.artifacts import ARTIFACTS_ENV, resolve_artifacts_dir
from hpo.results.load import load_refit
from hpo.results.refit import RefitResult, refit_study
from hpo.service.storage import open_storage
from hpo.service.study import register_study
from hpo.service.worker import run_worker
from hpo.spec.references import ALLOW_ENV
from hpo.spec.study_spec import parse_spec

#: The tolerance on probabilities predicted in another process. Same weights, same scaling,
#: same machine: they came out bit for bit equal when measured, but torch may sum a matrix
#: product in another order on another thread count, which moves the last float32 bits.
PROBA_ATOL = 1e-6


@dataclass(frozen=True)
class Refit:
    url: str
    store: Path
    result: RefitResult


def run_and_refit(
    url: str, raw: dict[str, Any], folder: Path, allow_modules: tuple[str, ...] = ()
) -> Refit:
    """Register ``raw``, run its budget with one in-process worker, refit it."""
    spec = parse_spec(raw)
    register_study(spec, open_storage(url))
    run_worker(
        spec.name,
        url,
        worker_index=0,
        heartbeat_seconds=0,
        threads=1,
        allow_modules=allow_modules,
    )
    result = refit_study(
        open_storage(url),
        spec.name,
        results_dir=folder / "results",
        artifacts=folder / "store",
        device="cpu",
    )
    return Refit(url, folder / "store", result)


@pytest.fixture(scope="module")
def digits_refit(tmp_path_factory: pytest.TempPathFactory) -> Refit:
    """A digits MLP study, standard-scaled, refit once for the tests of this module."""
    folder = tmp_path_factory.mktemp("digits-refit")
    raw = tiny_spec(name="travel-digits", budget={"trials": 1}, preprocess="standard")
    return run_and_refit(f"sqlite:///{folder / 'hpo.db'}", raw, folder)


def test_the_artifact_folder_is_the_flag_else_the_environment_else_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ARTIFACTS_ENV, raising=False)
    assert resolve_artifacts_dir(None) == Path("results")
    monkeypatch.setenv(ARTIFACTS_ENV, "/shared/artifacts")
    assert resolve_artifacts_dir(None) == Path("/shared/artifacts")
    assert resolve_artifacts_dir("mine") == Path("mine")


@pytest.mark.slow
def test_load_refit_in_another_process_predicts_as_the_refit_net(
    digits_refit: Refit, tmp_path: Path
) -> None:
    data = load_dataset("digits")
    np.save(tmp_path / "X.npy", data.X_test)
    np.save(tmp_path / "y.npy", data.y_test)
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import sklearn.datasets
        import hpo.engine.data
        from sklearn.metrics import get_scorer

        def no_data(*args, **kwargs):
            raise AssertionError("load_refit must not load the dataset")

        # The net comes back from the storage and the artifact folder alone.
        hpo.engine.data.load_dataset = no_data
        sklearn.datasets.load_digits = no_data
        from hpo.results.load import load_refit

        url, store, folder = sys.argv[1:]
        net = load_refit("travel-digits", url, artifacts=store)
        X, y = np.load(folder + "/X.npy"), np.load(folder + "/y.npy")
        np.save(folder + "/proba.npy", net.predict_proba(X))
        np.save(folder + "/predicted.npy", net.predict(X))
        print(json.dumps({
            "class": type(net).__name__,
            "classes": net.classes_.tolist(),
            "scaling": net.scaling_.kind,
            "accuracy": get_scorer("accuracy")(net, X, y),
            "neg_log_loss": get_scorer("neg_log_loss")(net, X, y),
        }))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, digits_refit.url, str(digits_refit.store), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    there = json.loads(done.stdout.strip().splitlines()[-1])
    net = digits_refit.result.net
    assert there["class"] == "TunedClassifier" and there["classes"] == list(range(10))
    assert there["scaling"] == "standard"
    np.testing.assert_allclose(
        np.load(tmp_path / "proba.npy"), net.predict_proba(data.X_test), rtol=0, atol=PROBA_ATOL
    )
    np.testing.assert_array_equal(np.load(tmp_path / "predicted.npy"), net.predict(data.X_test))
    metrics = digits_refit.result.metrics
    assert there["accuracy"] == metrics["accuracy"]
    assert there["neg_log_loss"] == pytest.approx(-metrics["log_loss"], rel=1e-4)


@pytest.mark.slow
def test_load_refit_of_a_regression_scores_as_the_refit(tmp_path: Path) -> None:
    raw = tiny_spec(
        name="travel-regression",
        model="regressor",
        dataset={"name": "synthetic_regression", "n_train": 80, "n_test": 40},
        scoring="r2",
        preprocess="minmax",
        budget={"trials": 1},
        fixed={"max_epochs": 5, "batch_size": 20, "module__depth": 2, "module__units": 8},
        space={"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
    )
    refit = run_and_refit(f"sqlite:///{tmp_path / 'hpo.db'}", raw, tmp_path)

    net = load_refit("travel-regression", refit.url, artifacts=refit.store)

    data = load_dataset("synthetic_regression", n_train=80, n_test=40)
    assert type(net).__name__ == "TunedRegressor" and net.scaling_.kind == "minmax"
    np.testing.assert_array_equal(net.predict(data.X_test), refit.result.net.predict(data.X_test))
    assert get_scorer("r2")(net, data.X_test, data.y_test) == refit.result.metrics["score"]


USER_NETS = """
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, input_shape=(1,), n_outputs=2, hidden=8):
        super().__init__()
        size = 1
        for length in input_shape:
            size *= length
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs)
        )

    def forward(self, x):
        return self.layers(x)
"""


@pytest.mark.slow
def test_load_refit_rebuilds_a_trusted_user_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "code" / "travel_user_nets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(USER_NETS)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    raw = tiny_spec(
        name="travel-user-net",
        model="travel_user_nets.models:TinyNet",
        budget={"trials": 1},
        fixed={"max_epochs": 3, "batch_size": 128, "module__hidden": 6},
        space={"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
    )
    refit = run_and_refit(
        f"sqlite:///{tmp_path / 'hpo.db'}", raw, tmp_path, allow_modules=("travel_user_nets",)
    )

    net = load_refit(
        "travel-user-net",
        refit.url,
        artifacts=refit.store,
        allow_modules=["travel_user_nets"],
    )

    assert type(net.module_).__name__ == "TinyNet" and net.module_.layers[1].out_features == 6
    X = load_dataset("digits").X_test
    np.testing.assert_array_equal(net.predict_proba(X), refit.result.net.predict_proba(X))


def test_load_refit_refuses_an_untrusted_model_without_importing_it(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "code" / "travel_untrusted_nets"
    package.mkdir(parents=True)
    marker = tmp_path / "imported"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (package / "models.py").write_text(USER_NETS)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    monkeypatch.chdir(tmp_path / "code")  # where a user's package would be found, too
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    raw = tiny_spec(name="travel-untrusted", model="travel_untrusted_nets.models:TinyNet")
    raw["space"] = {"lr": raw["space"]["lr"]}
    register_study(parse_spec(raw), open_storage(sqlite_url))

    with pytest.raises(HpoError, match="not trusted") as refused:
        load_refit("travel-untrusted", sqlite_url, artifacts=tmp_path)
    assert "--allow-module travel_untrusted_nets" in str(refused.value)
    assert not marker.exists() and "travel_untrusted_nets" not in sys.modules

    # Trusted, it is imported and checked as on every path, and gets to the next question.
    with pytest.raises(StudyError, match="hpo refit travel-untrusted"):
        load_refit(
            "travel-untrusted",
            sqlite_url,
            artifacts=tmp_path,
            allow_modules=["travel_untrusted_nets"],
        )
    assert marker.exists()


def test_load_refit_before_any_refit_says_to_run_hpo_refit(
    sqlite_url: str, tmp_path: Path
) -> None:
    register_study(parse_spec(tiny_spec(name="not-refit")), open_storage(sqlite_url))
    with pytest.raises(StudyError, match="has not been refit yet.*run hpo refit not-refit"):
        load_refit("not-refit", sqlite_url, artifacts=tmp_path)
    with pytest.raises(StudyError, match="no study named 'nope'"):
        load_refit("nope", sqlite_url, artifacts=tmp_path)


@pytest.mark.slow
def test_load_refit_from_a_wrong_artifact_folder_names_it_and_the_option(
    digits_refit: Refit, tmp_path: Path
) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(HpoError) as no_folder:
        load_refit("travel-digits", digits_refit.url, artifacts=missing)
    message = str(no_folder.value)
    assert f"artifact folder {missing} does not exist" in message
    assert "--artifacts DIR" in message and f"{ARTIFACTS_ENV}=DIR" in message
    assert str(digits_refit.store.resolve()) in message  # where refit wrote them

    with pytest.raises(HpoError) as other_folder:
        load_refit("travel-digits", digits_refit.url, artifacts=tmp_path)
    message = str(other_folder.value)
    assert f"artifact folder {tmp_path} does not hold the refit's" in message
    assert str(digits_refit.store.resolve()) in message and "--artifacts DIR" in message


@pytest.mark.slow
def test_dashboard_serves_the_refit_artifacts(digits_refit: Refit, tmp_path: Path) -> None:
    port = free_port()
    command = [
        *(sys.executable, "-m", "hpo", "dashboard"),
        *("--storage", digits_refit.url, "--port", str(port)),
        *("--artifacts", str(digits_refit.store)),
    ]
    with served(command, cwd=tmp_path):
        [summary] = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        study_id = summary["study_id"]
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study_id}")
        listed = {a["artifact_id"]: a["filename"] for a in detail["artifacts"]}
        ids = digits_refit.result.artifacts
        assert {listed[ids[kind]] for kind in ids} == {
            "model.pt",
            "params.json",
            "metrics.json",
            "history.json",
            "confusion_matrix.csv",
            "predictions.csv",
        }
        url = f"http://127.0.0.1:{port}/artifacts/{study_id}/{ids['params']}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["Content-Type"] == "application/json"
            assert response.read() == digits_refit.result.files["params"].read_bytes()
