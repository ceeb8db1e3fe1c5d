"""One trust rule for code named in a spec, held on every path that runs a spec.

The paths: ``hpo register``, ``hpo run``, ``hpo worker``, ``hpo refit`` (real commands in
subprocesses), ``hpo.run`` and ``hpo.load_refit`` (the Python API, in a subprocess of its own so
that nothing this test process imported helps it). Each path must give the same answer for the
same code:

- a module in the working directory (a local file) and a package on ``PYTHONPATH`` (installed):
  refused without ``--allow-module``, never imported; accepted with it;
- a stored spec someone else wrote that names hpo's own functions (the red team's findings:
  ``criterion: hpo.spec.references:import_reference`` imports any module,
  ``criterion: hpo.service.storage:serve_storage_proxy`` opens a server): refused, with or
  without ``--allow-module hpo``;
- a callable of an installed module that is not an ``nn.Module`` class (``subprocess:Popen``):
  refused even when its module is trusted, never called.

Every module written here leaves a marker file when it is imported, so "never imported" is
checked, not assumed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import REPO, run_hpo, tiny_spec

from hpo.service.storage import open_backend
from hpo.service.study import register_study
from hpo.spec.study_spec import parse_spec

pytestmark = pytest.mark.slow

MODULE = """
import math, os
from torch import nn

open(os.path.join(os.environ["TRUST_MARKERS"], __name__), "w").close()


class Net(nn.Module):
    def __init__(self, input_shape, n_outputs, width=8):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
            nn.Linear(width, n_outputs),
        )

    def forward(self, X):
        return self.layers(X)
"""

#: The Python API's paths, as a user's script calls them; an HpoError is the user's message.
API_SCRIPT = """
import sys
import hpo
from hpo.errors import HpoError

path, spec, name, url, *allow = sys.argv[1:]
try:
    if path == "hpo.run":
        hpo.run(spec, workers=1, storage=url, trials=1, allow_modules=allow, results_dir="out")
    else:
        net = hpo.load_refit(name, url, artifacts="artifacts", allow_modules=allow)
        print("predicted", len(net.predict(__import__("numpy").zeros((3, 1, 8, 8), "float32"))))
except HpoError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(error.exit_code)
"""

PATHS = ("register", "run", "worker", "refit", "hpo.run", "hpo.load_refit")

#: Paths that read the spec from a file; the others read it from the storage.
FROM_A_FILE = ("register", "run", "hpo.run")


class Place:
    """A working directory with a local module, an 'installed' package, a spec file, a
    storage holding the same spec as someone else registered it, and the marker folder."""

    def __init__(self, root: Path, raw: dict[str, Any]) -> None:
        self.root = root
        self.markers = root / "markers"
        self.markers.mkdir()
        (root / "local_nets.py").write_text(textwrap.dedent(MODULE))
        site = root / "site"
        (site / "installed_nets").mkdir(parents=True)
        (site / "installed_nets" / "__init__.py").write_text(textwrap.dedent(MODULE))
        self.site = site
        self.spec_file = root / "study.yaml"
        self.spec_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.name = raw["name"]
        self.stored_url = f"sqlite:///{root / 'stored.db'}"
        self.fresh_db = root / "fresh.db"
        # Someone else's registration: the library call, which checks no trust of its own.
        register_study(parse_spec(raw), open_backend(self.stored_url))

    def env(self) -> dict[str, str]:
        return {
            "TRUST_MARKERS": str(self.markers),
            "PYTHONPATH": os.pathsep.join([str(self.site), str(REPO)]),
            "HPO_ALLOW_MODULES": "",
            "HPO_ARTIFACTS": str(self.root / "artifacts"),
        }

    def imported(self) -> list[str]:
        return sorted(os.listdir(self.markers))

    def take(self, path: str, allow: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        """Run one path on this place's spec; a path that reads a file uses a fresh storage."""
        flags = [arg for prefix in allow for arg in ("--allow-module", prefix)]
        fresh = f"sqlite:///{self.fresh_db}"
        url = fresh if path in FROM_A_FILE else self.stored_url
        if path.startswith("hpo."):
            script = [sys.executable, "-c", API_SCRIPT, path, str(self.spec_file), self.name, url]
            return subprocess.run(
                [*script, *allow],
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=600,
                env={**os.environ, "OMP_NUM_THREADS": "1", **self.env()},
            )
        arguments = {
            "register": ["register", str(self.spec_file)],
            "run": ["run", str(self.spec_file), "--trials", "1", "--results", "out"],
            "worker": ["worker", "--study", self.name, "--trials", "1", "--device", "cpu"],
            "refit": ["refit", self.name, "--device", "cpu", "--results", "out"],
        }[path]
        return run_hpo(
            *arguments, "--storage", url, *flags, cwd=self.root, env=self.env(), timeout=600
        )


def one_point(**overrides: Any) -> dict[str, Any]:
    """A study of one grid point, two folds, one epoch: a trial takes about a second."""
    return tiny_spec(
        name="trusted",
        sampler={"name": "grid"},
        budget={},
        space={},
        fixed={"max_epochs": 1, "batch_size": 128, "lr": 0.01},
        **overrides,
    )


@pytest.fixture
def place(tmp_path: Path) -> Callable[[dict[str, Any]], Place]:
    return lambda raw: Place(tmp_path, raw)


def assert_refused(taken: subprocess.CompletedProcess[str], *says: str) -> None:
    assert taken.returncode != 0, taken.stdout + taken.stderr
    assert "Traceback" not in taken.stderr, taken.stderr
    said = " ".join(taken.stderr.split())  # rich wraps long messages at the terminal's width
    for text in says:
        assert text in said, taken.stderr


#: (what the spec names, the flag given, what the refusal says).
REFUSED = {
    "local file, untrusted": (
        {"model": "local_nets:Net"},
        (),
        ("local_nets:Net", "not trusted here", "--allow-module local_nets"),
    ),
    "installed package, untrusted": (
        {"model": "installed_nets:Net"},
        (),
        ("installed_nets:Net", "not trusted here", "--allow-module installed_nets"),
    ),
    "hpo's import_reference": (
        {
            "criterion": "hpo.spec.references:import_reference",
            "fixed": {"max_epochs": 1, "criterion__text": "local_nets:Net"},
        },
        (),
        ("criterion: hpo.spec.references:import_reference", "only for its models"),
    ),
    "hpo's import_reference, hpo trusted by hand": (
        {
            "criterion": "hpo.spec.references:import_reference",
            "fixed": {"max_epochs": 1, "criterion__text": "local_nets:Net"},
        },
        ("hpo",),
        ("is not a torch.nn.Module subclass", "was not used"),
    ),
    "hpo's gRPC proxy": (
        {
            "criterion": "hpo.service.storage:serve_storage_proxy",
            "fixed": {"max_epochs": 1, "criterion__host": "0.0.0.0", "criterion__port": 1},
        },
        (),
        ("criterion: hpo.service.storage:serve_storage_proxy", "only for its models"),
    ),
    "an installed callable that is no module class": (
        {"model": "subprocess:Popen", "fixed": {"max_epochs": 1, "module__args": "true"}},
        ("subprocess",),
        ("model: subprocess:Popen is not a torch.nn.Module subclass",),
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_every_path_refuses_the_same_code_before_it_runs(
    case: str, place: Callable[[dict[str, Any]], Place]
) -> None:
    names, allow, says = REFUSED[case]
    here = place(tiny_spec(name="refused", **names))
    stored = optuna.load_study(study_name="refused", storage=here.stored_url)
    for path in PATHS:
        taken = here.take(path, allow)
        assert_refused(taken, *says)
        assert here.imported() == [], f"{path} imported {here.imported()}"
        assert not here.fresh_db.exists(), f"{path} created a storage"
    assert stored.get_trials(deepcopy=False) == []


@pytest.mark.parametrize("model", ["local_nets:Net", "installed_nets:Net"])
def test_every_path_runs_code_it_was_told_to_trust(
    model: str, place: Callable[[dict[str, Any]], Place]
) -> None:
    here = place(one_point(model=model))
    module = model.split(":")[0]
    said = {}
    for path in PATHS:
        taken = here.take(path, (module,))
        assert taken.returncode == 0, f"{path}: {taken.stderr}"
        assert here.imported() == [module], path
        os.remove(here.markers / module)
        said[path] = taken.stdout
    assert "predicted 3" in said["hpo.load_refit"]
    for url in (f"sqlite:///{here.fresh_db}", here.stored_url):
        study = optuna.load_study(study_name="trusted", storage=url)
        assert [t.state.name for t in study.trials] == ["COMPLETE"]
