"""optuna-dashboard served on a storage: optuna-dashboard's own server, or, with ``quiet``, the
same app (``optuna_dashboard.wsgi``, its public API) on a threaded wsgiref server that logs no
requests (the page polls every few seconds, and each poll is a log line otherwise)."""

from __future__ import annotations

from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna


def serve_dashboard(
    storage: optuna.storages.BaseStorage,
    host: str,
    port: int,
    artifact_store: Any,
    *,
    quiet: bool = False,
) -> None:
    """Serve optuna-dashboard until interrupted.

    Raises:
        OSError: the port cannot be listened on.
    """
    import optuna_dashboard

    if not quiet:
        optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=artifact_store)
        return
    app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)
    server = make_server(host, port, app, _ThreadedServer, handler_class=_SilentHandler)
    with server:
        server.serve_forever()


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass
