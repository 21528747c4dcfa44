"""The FastAPI application: OpenAI-compatible endpoints over :class:`~salmonn.serve.service.Service`.

:func:`create_app` assembles the app from its parts: the shared state
(:mod:`~salmonn.serve.state`: model loading, admissions, shutdown), the request guard every request
passes first (:mod:`~salmonn.serve.guard`: Host/Origin, API key, Content-Type, body size and time),
CORS headers for ``--allowed-origins`` only, the error handlers (every error in OpenAI's shape),
and the routes, one module per kind: :mod:`~salmonn.serve.routes_info` (health, readiness,
metrics, models), :mod:`~salmonn.serve.routes_chat` and :mod:`~salmonn.serve.routes_audio`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import routes_audio, routes_chat, routes_info
from .config import ServeConfig
from .errors import APIError, internal
from .guard import RequestGuard
from .state import ServerState

logger = logging.getLogger(__name__)


def create_app(
    config: ServeConfig,
    load_model: Callable[[], Any],
    *,
    on_ready: Callable[[], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The ASGI app. ``load_model()`` runs in a thread at startup; ``on_ready()`` follows it, or
    ``on_error(exc)`` when it fails."""
    state = ServerState(config, load_model, on_ready, on_error)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, state.shutdown)

    app = FastAPI(title="salmonn", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.salmonn = state
    _install_handlers(app, state)
    _install_routes(app, state)
    if config.web_ui:  # the browser page at / (salmonn/serve/web/)
        from .webui import install_web_ui

        install_web_ui(app, config)
    return app


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _install_handlers(app: FastAPI, state: ServerState) -> None:
    def count(label: str, status: str) -> None:
        state.metrics.requests.labels(label, status).inc()

    app.add_middleware(RequestGuard, config=state.config, count=count)
    if state.config.allowed_origins:  # outside the guard: its refusals carry CORS headers too
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(state.config.allowed_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        headers = dict(exc.headers) if exc.headers is not None else None
        err = APIError(exc.status_code, str(exc.detail), code=code, headers=headers)
        return _error_response(err)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> Response:
        logger.info("the client of %s left while sending its body", request.url.path)
        return Response(status_code=499)  # nobody reads it; counted as 499

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error on %s", request.url.path, exc_info=exc)
        return _error_response(internal())


def _install_routes(app: FastAPI, state: ServerState) -> None:
    routes_info.install(app, state)
    routes_chat.install(app, state)
    routes_audio.install(app, state)
