"""An OpenAI-compatible HTTP server for SALMONN (``salmonn serve``; needs ``salmonn[serve]``).

Endpoints: ``/v1/chat/completions`` (text + one audio part), ``/v1/audio/transcriptions``,
``/v1/audio/translations``, ``/v1/models``, ``/health``, ``/ready``, ``/metrics``. Every request runs the
library task API (:mod:`salmonn.jobs.tasks` over :func:`salmonn.jobs.engine.process`), so an answer equals the
CLI's for the same file and settings; concurrent requests share one model worker that merges their
model calls (:mod:`salmonn.serve.batcher`).

Importing this package is cheap; FastAPI and uvicorn load in :func:`create_app` / :func:`run_server`::

    from salmonn.serve import ServeConfig, run_server
    run_server(ServeConfig(port=8000), lambda: salmonn.load_model(preset="salmonn-7b"))
"""

from __future__ import annotations

import errno
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import SalmonnError
from .config import DEFAULT_MODEL_NAME, ServeConfig


class ListenError(SalmonnError):
    """The server cannot listen where it was asked: ``what`` is ``"host"`` (no such local address)
    or ``"port"`` (in use, or not allowed); ``reason`` says why in one line."""

    def __init__(self, what: str, value: object, reason: str) -> None:
        super().__init__(f"{what} {value}: {reason}")
        self.what, self.value, self.reason = what, value, reason


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: any free one), or :class:`ListenError`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ListenError("host", host, f"not a known address ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ListenError("port", port, f"already in use on {host}") from None
        if err.errno == errno.EADDRNOTAVAIL:
            raise ListenError("host", host, "not an address of this machine") from None
        raise ListenError("port", port, f"cannot listen on {host}: {err.strerror}") from None
    return sock


SERVE_PACKAGES = {
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "multipart": "python-multipart",
    "prometheus_client": "prometheus-client",
}
SERVE_EXTRA_HINT = "pip install 'salmonn[serve]'"
SHUTDOWN_BACKSTOP_S = 5  # uvicorn cuts connections this long after the app's own grace


def missing_packages() -> list[str]:
    """The distributions of the ``serve`` extra that cannot be imported (empty when all are there)."""
    import importlib.util

    return [
        dist for module, dist in SERVE_PACKAGES.items() if importlib.util.find_spec(module) is None
    ]


def create_app(config: ServeConfig, load_model: Callable[[], Any], **callbacks: Any) -> Any:
    """The FastAPI app (see :func:`salmonn.serve.app.create_app`)."""
    from .app import create_app as _create_app

    return _create_app(config, load_model, **callbacks)


def run_server(
    config: ServeConfig,
    load_model: Callable[[], Any],
    *,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve until SIGINT/SIGTERM, then return (requests in flight get up to
    ``config.graceful_shutdown_s`` to finish; those still running then get 503 ``shutting_down``).

    ``load_model()`` runs once, after the server listens; ``on_ready(url)`` is called when it has
    loaded. A failed load stops the server and is raised here; :class:`ListenError` when the
    address cannot be listened on (before anything loads).
    """
    failures: list[BaseException] = []
    holder: dict[str, Any] = {}

    def ready() -> None:
        server = holder["server"]
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if on_ready is not None and server.started:
            on_ready(_url(server, config))

    def failed(exc: BaseException) -> None:
        failures.append(exc)
        holder["server"].should_exit = True

    sock = listen(config.host, config.port)  # before the load starts: a busy port fails at once
    app = create_app(config, load_model, on_ready=ready, on_error=failed)
    server = build_server(app, config, log_level=log_level)
    holder["server"] = server
    with signals_stop(server):
        server.run(sockets=[sock])
    if failures:
        raise failures[0]


def build_server(app: Any, config: ServeConfig, *, log_level: str = "warning") -> Any:
    """A ``uvicorn.Server`` for ``app`` (of :func:`create_app`) that tells the app when it is asked
    to stop (``handle_exit``: SIGINT/SIGTERM), so that the requests still running after
    ``config.graceful_shutdown_s`` are answered 503 ``shutting_down`` by the app itself; uvicorn's
    own cut-off comes a few seconds later, as a backstop."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.salmonn.begin_shutdown()
            super().handle_exit(sig, frame)

    return Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=log_level,
            log_config=None,
            access_log=log_level in ("debug", "info"),
            lifespan="on",
            timeout_graceful_shutdown=int(config.graceful_shutdown_s) + SHUTDOWN_BACKSTOP_S,
        )
    )


class signals_stop:
    """SIGINT/SIGTERM handlers for the life of ``server.run``: each asks ``server`` to stop
    (``handle_exit``).

    uvicorn installs its own handlers only once its event loop runs; a Ctrl-C before that (while
    the loop and the app are set up) would otherwise be lost, or kill the process mid-start. uvicorn
    also re-raises the signal that stopped it once it has shut down: that lands here too and ends
    nothing, so a clean stop exits 0.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._stop)

    def _stop(self, sig: int, frame: Any) -> None:
        if not self.server.should_exit:
            self.server.handle_exit(sig, frame)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _url(server: Any, config: ServeConfig) -> str:
    port = config.port
    servers = getattr(server, "servers", None) or []
    if servers and servers[0].sockets:
        port = servers[0].sockets[0].getsockname()[1]
    host = config.host if ":" not in config.host else f"[{config.host}]"
    return f"http://{host}:{port}/v1"


__all__ = [
    "DEFAULT_MODEL_NAME",
    "SERVE_EXTRA_HINT",
    "ListenError",
    "ServeConfig",
    "build_server",
    "create_app",
    "missing_packages",
    "run_server",
]
