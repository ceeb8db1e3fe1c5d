"""optuna-dashboard served on a storage: its public WSGI app (``optuna_dashboard.wsgi``) on the
server optuna-dashboard's own CLI would pick (``--server``): gunicorn when it is installed, else
a threaded wsgiref server. Both log each request unless ``quiet`` (the page polls every few
seconds, and each poll is a log line otherwise).

The app is always served behind ``hpo.service.guard.GuardedApp``: requests naming another
host are refused, every response carries framing headers, and with a credential every request
must carry it."""

from __future__ import annotations

import socket
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any, Literal
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from hpo.errors import HpoError
from hpo.service.guard import Credential, GuardedApp

Server = Literal["auto", "wsgiref", "gunicorn"]
#: The ``--server`` choices, as optuna-dashboard's CLI has them.
SERVERS: tuple[Server, ...] = ("auto", "wsgiref", "gunicorn")
#: Threads of the one gunicorn worker, as optuna-dashboard's CLI sets them.
GUNICORN_THREADS = 4


def resolve_server(server: Server) -> Literal["wsgiref", "gunicorn"]:
    """The server ``server`` stands for: ``auto`` is gunicorn when it can be imported, else
    wsgiref (optuna-dashboard's rule); the others are themselves.

    Raises:
        HpoError: ``gunicorn`` was asked for and is not installed.
    """
    if server == "wsgiref":
        return "wsgiref"
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        if server == "gunicorn":
            raise HpoError(
                "--server gunicorn needs gunicorn, which is not installed here: pip install "
                "gunicorn (or pip install 'hpo[gunicorn]'), or serve with --server wsgiref"
            ) from None
        return "wsgiref"
    return "gunicorn"


def serve_dashboard(
    open_storage: Callable[[], optuna.storages.BaseStorage],
    host: str,
    port: int,
    artifact_store: Any,
    *,
    server: Server = "auto",
    quiet: bool = False,
    credential: Credential | None = None,
    allowed_hosts: tuple[str, ...] = (),
) -> None:
    """Serve optuna-dashboard until interrupted, behind ``GuardedApp``.

    Args:
        open_storage: Opens the storage to show. gunicorn calls it in its worker process, so
            no database connection crosses its fork.
        host: Address to listen on.
        port: Port to listen on.
        artifact_store: The Optuna artifact store whose files the study pages show.
        server: ``auto`` (gunicorn when installed, else wsgiref), ``wsgiref`` or
            ``gunicorn``. Default: ``auto``.
        quiet: Log no requests (and, with gunicorn, nothing below an error). Default: False.
        credential: What every request must carry (``hpo.service.guard.read_credential``), or
            None for none. Default: None.
        allowed_hosts: Host names requests may name besides the loopback names and ``host``.
            Default: none.

    Raises:
        HpoError: ``gunicorn`` was asked for and is not installed.
        OSError: the port cannot be listened on.
    """
    import optuna_dashboard

    def app() -> Any:
        dashboard = optuna_dashboard.wsgi(open_storage(), artifact_store=artifact_store)
        return GuardedApp(
            dashboard, bound=host, allowed_hosts=allowed_hosts, credential=credential
        )

    if resolve_server(server) == "gunicorn":
        _check_can_listen(host, port)  # gunicorn would retry for 5 s, then exit on its own
        _serve_gunicorn(app, host, port, quiet=quiet)
        return
    handler = _SilentHandler if quiet else WSGIRequestHandler
    with make_server(host, port, app(), _ThreadedServer, handler_class=handler) as httpd:
        httpd.serve_forever()


def _serve_gunicorn(app: Callable[[], Any], host: str, port: int, *, quiet: bool) -> None:
    """One gunicorn worker of ``GUNICORN_THREADS`` threads (optuna-dashboard's CLI does the
    same), through gunicorn's public ``BaseApplication``, which reads no command line, config
    file or ``GUNICORN_CMD_ARGS``: only what is set here."""
    from gunicorn.app.base import BaseApplication

    class DashboardApplication(BaseApplication):
        def load_config(self) -> None:
            bare = host.strip("[]")
            self.cfg.set("bind", f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}")
            self.cfg.set("workers", 1)
            self.cfg.set("threads", GUNICORN_THREADS)
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn >= 25.1 opens a control socket at one path in $HOME (or
                # $XDG_RUNTIME_DIR) by default: a second dashboard would fight over it.
                self.cfg.set("control_socket_disable", True)
            if quiet:
                self.cfg.set("loglevel", "error")
            else:
                self.cfg.set("accesslog", "-")  # as wsgiref: a line per request

        def load(self) -> Any:
            return app()  # in the worker, after the fork

    DashboardApplication().run()


def _check_can_listen(host: str, port: int) -> None:
    """Raise the ``OSError`` that listening on ``host:port`` would raise now, if any."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As gunicorn binds: a port in TIME_WAIT is free, a listening one is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((bare, port))
        probe.listen()


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    # Request threads are joined when the server closes (Ctrl-C): a request answered just
    # before still writes its log line, which wsgiref writes after the response has gone.
    daemon_threads = False
    block_on_close = True


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass
