"""Servers that can be exposed can be locked (issue 25, item 5), checked on the real processes.

``hpo dashboard`` answers only to the hosts it was told of and forbids framing on every
response; bound beyond loopback (``--host 0.0.0.0 --expose``) it refuses to start without a
credential (``--auth-file``) and then asks every request for it. ``hpo storage-proxy`` cannot be
secured (Optuna's gRPC proxy takes no TLS or credentials), so beyond loopback it refuses without
``--insecure``. Every request goes to 127.0.0.1: a server bound to 0.0.0.0 is reached there too,
and nothing here sends traffic beyond this machine.
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import free_port, run_hpo, served

from hpo.service.guard import FRAME_ANCESTORS

#: Each test starts a server process.
pytestmark = pytest.mark.slow

PASSWORD = "correct-horse-battery"
TOKEN = "t0ken-of-32-characters-0123456789"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered, not followed: its Location names the Host sent, which may be
    a name that is not this machine."""

    def redirect_request(self, *args: Any) -> None:
        return None


#: No proxy from the environment, no redirect followed: every request goes to 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def request(
    port: int,
    *,
    host: str | None = None,
    authorization: str | None = None,
    path: str = "/api/studies",
) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` from 127.0.0.1:``port`` (``Host: host`` when given): status, headers, body;
    retried while the server is starting. A redirect is returned as it is."""
    headers = {"Host": host} if host else {}
    if authorization:
        headers["Authorization"] = authorization
    deadline = time.monotonic() + 60
    while True:
        try:
            opened = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
            with _OPENER.open(opened, timeout=5) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def assert_framing_headers(headers: dict[str, str]) -> None:
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert FRAME_ANCESTORS in headers["Content-Security-Policy"]


@pytest.fixture
def dashboard(sqlite_url: str, tmp_path: Path) -> Iterator[Any]:
    """Starts ``hpo dashboard`` with the options given, on a free port; yields the port."""

    @contextlib.contextmanager
    def start(*options: str, server: str = "wsgiref") -> Iterator[int]:
        port = free_port()
        command = [sys.executable, "-m", "hpo", "dashboard", "--storage", sqlite_url, "--quiet"]
        command += ["--port", str(port), "--server", server, "--artifacts", str(tmp_path)]
        command += options
        with served(command):
            yield port

    yield start


@pytest.mark.parametrize("server", ["wsgiref", "gunicorn"])
def test_a_loopback_dashboard_forbids_framing_and_answers_to_its_own_hosts_only(
    dashboard: Any, server: str
) -> None:
    with dashboard(server=server) as port:
        status, headers, _ = request(port, path="/dashboard")
        assert status == 200
        assert_framing_headers(headers)
        # optuna-dashboard's own policy is kept, with frame-ancestors added to it
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.2"):
            status, headers, _ = request(port, host=host, path="/api/studies")
            assert status == 200, host
            assert_framing_headers(headers)
        # a page on another site that made its name resolve here (DNS rebinding)
        status, headers, body = request(port, host=f"attacker.example:{port}", path="/api/studies")
        assert status == 400
        assert b"attacker.example" in body and b"--allowed-host" in body
        assert_framing_headers(headers)


def test_an_exposed_dashboard_refuses_to_start_without_a_credential(
    sqlite_url: str, tmp_path: Path
) -> None:
    port = free_port()
    refused = run_hpo(
        "dashboard", "--storage", sqlite_url, "--host", "0.0.0.0", "--expose", "--port", str(port)
    )
    message = " ".join(refused.stderr.split())
    assert refused.returncode == 2, message
    assert "--expose on 0.0.0.0 needs a credential: --auth-file PATH" in message
    assert "--insecure" in message and "Traceback" not in message
    assert "Ctrl-C to stop" not in message
    with pytest.raises(OSError):  # nothing listens there
        _OPENER.open(f"http://127.0.0.1:{port}/api/studies", timeout=2)


@pytest.mark.parametrize("server", ["wsgiref", "gunicorn"])
def test_an_exposed_dashboard_asks_every_request_for_its_credential(
    dashboard: Any, tmp_path: Path, server: str
) -> None:
    secret = tmp_path / "dashboard-auth"
    secret.write_text(f"hpo:{PASSWORD}\n")
    options = ("--host", "0.0.0.0", "--expose", "--auth-file", str(secret))
    with dashboard(*options, "--allowed-host", "hpo.example", server=server) as port:
        for authorization in (None, basic("hpo", "wrong-password"), basic("eve", PASSWORD)):
            status, headers, body = request(port, authorization=authorization, path="/api/studies")
            assert status == 401, authorization
            assert headers["WWW-Authenticate"] == 'Basic realm="hpo dashboard", charset="UTF-8"'
            assert PASSWORD.encode() not in body
            assert_framing_headers(headers)
        right = basic("hpo", PASSWORD)
        status, headers, body = request(port, authorization=right, path="/api/studies")
        assert status == 200 and b"study_summaries" in body
        assert_framing_headers(headers)
        status, _, _ = request(
            port, host="hpo.example:8080", authorization=right, path="/api/studies"
        )
        assert status == 200
        # the host is checked before the credential, and the credential does not lift it
        for authorization in (None, right):
            status, _, _ = request(
                port, host="other.example", authorization=authorization, path="/api/studies"
            )
            assert status == 400


def test_a_token_file_takes_the_token_as_bearer_or_as_a_password(
    dashboard: Any, tmp_path: Path
) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    with dashboard("--auth-file", str(secret)) as port:  # on loopback too, when asked
        assert request(port, path="/api/studies")[0] == 401
        assert request(port, authorization=f"Bearer {TOKEN}x", path="/api/studies")[0] == 401
        assert request(port, authorization=f"Bearer {TOKEN}", path="/api/studies")[0] == 200
        assert request(port, authorization=basic("anyone", TOKEN), path="/api/studies")[0] == 200


def test_an_insecure_dashboard_still_forbids_framing(dashboard: Any) -> None:
    with dashboard("--host", "0.0.0.0", "--expose", "--insecure") as port:
        status, headers, _ = request(port, path="/api/studies")
        assert status == 200
        assert_framing_headers(headers)


def test_the_storage_proxy_cannot_be_exposed_without_insecure(sqlite_url: str) -> None:
    """Optuna's gRPC proxy takes no server credentials, and its client none either: beyond
    loopback hpo refuses to serve it unless told --insecure, and a gRPC client finds nothing."""
    assert "credentials" not in _parameters(optuna.storages.run_grpc_proxy_server)
    assert "credentials" not in _parameters(optuna.storages.GrpcStorageProxy)
    optuna.create_study(study_name="seen", storage=sqlite_url)
    port = free_port()
    command = ["storage-proxy", "--storage", sqlite_url, "--port", str(port)]
    refused = run_hpo(*command, "--host", "0.0.0.0", "--expose", timeout=60)
    message = " ".join(refused.stderr.split())
    assert refused.returncode == 2, message
    assert "hpo storage-proxy cannot be secured" in message
    assert "no server credentials" in message and "--expose --insecure" in message
    client = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
    with pytest.raises(ConnectionError, match="GRPC connection timeout"):
        client.wait_server_ready(timeout=3)

    full = [sys.executable, "-m", "hpo", *command, "--host", "0.0.0.0", "--expose", "--insecure"]
    with served(full) as proxy:
        client = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
        client.wait_server_ready(timeout=60)
        assert [study.study_name for study in client.get_all_studies()] == ["seen"]
    output = " ".join(proxy.stdout.read().split())  # type: ignore[union-attr]
    assert "warning: hpo storage-proxy has no authentication and no TLS" in output, output


def _parameters(function: Any) -> set[str]:
    return set(inspect.signature(function).parameters)
