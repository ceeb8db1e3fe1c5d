"""What stands in front of optuna-dashboard's app (``hpo dashboard``): a small WSGI middleware.

``GuardedApp`` answers every request before the dashboard sees it, in this order:

1. **Host check.** A request whose ``Host`` is not one of the allowed names gets 400: the
   loopback names (``localhost``, ``127.0.0.0/8``, ``::1``), the address the server is bound
   to, and each ``--allowed-host``. A web page elsewhere that makes its own host name resolve
   to this machine (DNS rebinding) then cannot reach the studies from a visitor's browser.
2. **Credential**, when one is set (``--auth-file``; ``hpo dashboard --expose`` beyond loopback
   requires it): 401 with ``WWW-Authenticate: Basic`` unless the request carries it, compared
   in constant time (``hmac.compare_digest``). The file's first line is ``user:password`` (HTTP
   basic auth) or a token, which is taken as ``Authorization: Bearer TOKEN`` or as the
   password of basic auth under any user name (what a browser's login box sends).
3. **Framing headers** on every response, loopback or not: ``X-Frame-Options: DENY``,
   ``Content-Security-Policy: frame-ancestors 'none'`` (added to optuna-dashboard's own policy)
   and ``X-Content-Type-Options: nosniff``, so no other site can frame the dashboard and trick
   a click (clickjacking). The dashboard frames none of its own pages (its one iframe is a
   ``srcdoc`` sandbox), so nothing of it is lost.

The server still speaks plain HTTP: a credential crosses the network readable unless a TLS
proxy or an SSH tunnel carries it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.errors import HpoError
from hpo.files import read_input
from hpo.spec.rules import PASSWORD_BYTES

#: The least a password or token may hold, in characters.
MIN_SECRET_CHARS = 8
#: The realm a browser's login box names.
REALM = "hpo dashboard"

#: Sent with every response.
FRAMING_HEADERS = (
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
)
FRAME_ANCESTORS = "frame-ancestors 'none'"

#: A host name or an IP address as ``--allowed-host`` takes it (no port, no scheme).
_HOST_NAME = re.compile(
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|[0-9A-Fa-f:.]+)$"
)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class Credential:
    """What a request must carry: ``user`` and ``secret`` for basic auth, or ``user`` None for
    a token (as ``Bearer``, or as basic auth's password under any user name)."""

    user: str | None
    secret: str

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"Credential(user={self.user!r}, secret=***)"

    def accepts(self, authorization: str) -> bool:
        """Whether an ``Authorization`` header's value carries this credential."""
        scheme, _, value = authorization.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.user is None:
            return _same(value.encode("utf-8"), self.secret.encode("utf-8"))
        if scheme != "basic":
            return False
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        user, colon, secret = decoded.partition(b":")
        if not colon:
            return False
        secret_ok = _same(secret, self.secret.encode("utf-8"))
        if self.user is None:
            return secret_ok
        user_ok = _same(user, self.user.encode("utf-8"))
        return user_ok & secret_ok  # both compared, whichever is wrong


def _same(given: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(given, expected)


def read_credential(path: str | Path) -> Credential:
    """The credential in ``path``: its first line, ``user:password`` or a token.

    Raises:
        HpoError: the file cannot be read (missing, a FIFO or a device, larger than a password
            file may be), or its first line is empty, or its password or token is shorter
            than ``MIN_SECRET_CHARS``.
    """
    try:
        text = read_input(path, PASSWORD_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise HpoError(f"cannot read the --auth-file {path}: {reason}") from None
    line = (text.splitlines() or [""])[0].strip()
    if not line:
        raise HpoError(
            f"the --auth-file {path} is empty; write user:password (basic auth) or a token on "
            "its first line"
        )
    user, colon, secret = line.partition(":")
    credential = Credential(user, secret) if colon else Credential(None, line)
    if colon and not user:
        raise HpoError(f"the --auth-file {path} holds ':password' without a user name")
    if len(credential.secret) < MIN_SECRET_CHARS:
        what = "password" if colon else "token"
        raise HpoError(
            f"the {what} in the --auth-file {path} is shorter than {MIN_SECRET_CHARS} "
            "characters; anyone could guess it"
        )
    return credential


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot be an ``--allowed-host``, or None."""
    if _HOST_NAME.match(host.strip()):
        return None
    return (
        f"--allowed-host {host!r} is not a host name or an IP address; give the name browsers "
        "use for this machine, without a scheme, port or path (e.g. --allowed-host hpo.example)"
    )


def _bare(host: str) -> str:
    """A ``Host`` header's (or an address's) host, lowercased, without port or brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _is_loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GuardedApp:
    """A WSGI app in front of ``app``: Host check, credential, framing headers (module doc).

    Args:
        app: The WSGI app guarded (optuna-dashboard's).
        bound: The address the server listens on (allowed as a Host).
        allowed_hosts: More host names a request may name (``--allowed-host``).
        credential: What every request must carry, or None for no credential.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        bound: str,
        allowed_hosts: Iterable[str] = (),
        credential: Credential | None = None,
    ) -> None:
        self.app = app
        self.allowed = frozenset({_bare(bound), *(_bare(host) for host in allowed_hosts)})
        self.credential = credential

    def host_allowed(self, host: str) -> bool:
        bare = _bare(host)
        return bool(bare) and (bare in self.allowed or _is_loopback_name(bare))

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def framed(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            return start_response(status, with_framing_headers(headers), *exc_info)

        host = environ.get("HTTP_HOST", "")
        if not self.host_allowed(host):
            return _refuse(
                framed,
                "400 Bad Request",
                f"this dashboard does not answer to the host {host or '(none)'!r}; "
                "hpo dashboard --allowed-host NAME lets it\n",
            )
        if self.credential is not None and not self.credential.accepts(
            environ.get("HTTP_AUTHORIZATION", "")
        ):
            return _refuse(
                framed,
                "401 Unauthorized",
                "this dashboard asks for the credential of its --auth-file\n",
                [("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')],
            )
        return self.app(environ, framed)


def with_framing_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` with ``FRAMING_HEADERS`` (replacing any of those names) and
    ``frame-ancestors 'none'`` in the Content-Security-Policy (added to one already there)."""
    names = {name.lower() for name, _ in FRAMING_HEADERS}
    kept: list[tuple[str, str]] = []
    has_policy = False
    for name, value in headers:
        if name.lower() in names:
            continue
        if name.lower() == "content-security-policy":
            has_policy = True
            if "frame-ancestors" not in value:
                value = f"{value.rstrip('; ')}; {FRAME_ANCESTORS}"
        kept.append((name, value))
    if not has_policy:
        kept.append(("Content-Security-Policy", FRAME_ANCESTORS))
    return kept + list(FRAMING_HEADERS)


def _refuse(
    start_response: Callable[..., Any],
    status: str,
    text: str,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    body = text.encode("utf-8")
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *(headers or []),
        ],
    )
    return [body]
