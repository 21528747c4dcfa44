"""The routes about the server itself: ``/health``, ``/ready``, ``/metrics``, ``/v1/models``.

``/health`` is liveness: 200 once the model is loaded (its ``status`` says ``ok``, or ``saturated``
when every queue slot is taken, with the counts), 503 while it loads or the server stops.
``/ready`` is readiness for a load balancer: 200 only when a request would be admitted now, 503
otherwise. ``/metrics`` is Prometheus text. ``/v1/models`` lists the one served model.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from . import schema
from .metrics import CONTENT_TYPE
from .openai_api import check_model
from .state import ServerState


def install(app: FastAPI, state: ServerState) -> None:
    """Add the routes to ``app``."""
    name = state.config.served_model_name

    def status() -> tuple[str, int]:
        if state.closing:
            return "shutting down", 503
        if state.service is None:
            return "loading", 503
        return ("saturated" if state.admissions.full else "ok"), 200

    def queue() -> dict[str, int]:
        return {"in_flight": state.admissions.count, "max_queue": state.admissions.limit}

    @app.get("/health", openapi_extra=schema.HEALTH)
    async def health() -> JSONResponse:
        text, code = status()
        return JSONResponse({"status": text, **queue()}, status_code=code)

    @app.get("/ready", openapi_extra=schema.READY)
    async def ready() -> JSONResponse:
        text, code = status()
        if text == "saturated":
            code = 503
        return JSONResponse({"status": text, **queue()}, status_code=code)

    @app.get("/metrics", response_class=PlainTextResponse, openapi_extra=schema.METRICS)
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    def model_card() -> dict[str, Any]:
        return {"id": name, "object": "model", "created": state.created, "owned_by": "salmonn"}

    @app.get("/v1/models", openapi_extra=schema.MODELS)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", openapi_extra=schema.MODEL)
    async def model(model_id: str) -> dict[str, Any]:
        check_model({"model": model_id}, name, state.config.model_aliases)
        return model_card()
