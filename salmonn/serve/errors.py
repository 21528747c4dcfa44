"""Errors the server answers with, in the OpenAI shape ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

from typing import Any

from ..errors import SalmonnError


class APIError(SalmonnError):
    """An HTTP error answer.

    Attributes:
        status: the HTTP status (400, 401, 404, 413, 503, 500).
        message: one line for the client.
        type: OpenAI's error type (``invalid_request_error``, ``authentication_error``, ...).
        param: the request field at fault, or ``None``.
        code: a short machine-readable code (``model_not_found``, ``queue_full``, ...).
        headers: extra response headers (``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class RequestCancelled(SalmonnError):
    """A request was cancelled (its client left, or the shutdown's grace ran out): its model
    calls leave the queue and the running decode at the worker's next step."""


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    """400: a request field that cannot be used (``message`` names it)."""
    return APIError(400, message, param=param, code=code)


def bad_audio(message: str, param: str | None = None) -> APIError:
    """400: audio that cannot be read."""
    return APIError(400, message, param=param, code="invalid_audio")


def too_large(message: str, param: str | None = None, code: str = "file_too_large") -> APIError:
    """413: an upload or an audio duration over the server's limits."""
    return APIError(413, message, param=param, code=code)


def context_exceeded(message: str, param: str) -> APIError:
    """400: a prompt (or prompt plus ``max_tokens``) longer than the model's context."""
    return APIError(400, message, param=param, code="context_length_exceeded")


def timed_out(message: str) -> APIError:
    """408: the request's body did not arrive in time (``--request-timeout``)."""
    return APIError(408, message, code="request_timeout", headers={"Connection": "close"})


def unsupported_media_type(message: str) -> APIError:
    """415: a body of the wrong ``Content-Type``."""
    return APIError(415, message, code="unsupported_media_type")


def forbidden(message: str, code: str) -> APIError:
    """403: a ``Host`` or ``Origin`` that this server does not answer (``--allowed-hosts``,
    ``--allowed-origins``)."""
    return APIError(403, message, code=code)


def unauthorized() -> APIError:
    return APIError(
        401,
        "missing or wrong API key: send 'Authorization: Bearer KEY' with the server's --api-key",
        type="authentication_error",
        code="invalid_api_key",
    )


def model_not_found(name: str, served: str) -> APIError:
    return APIError(
        404,
        f"the model {name!r} does not exist on this server; it serves {served!r}",
        param="model",
        code="model_not_found",
    )


def queue_full(retry_after_s: int = 1) -> APIError:
    return APIError(
        503,
        "the server is busy (request queue full); retry later",
        type="server_error",
        code="queue_full",
        headers={"Retry-After": str(retry_after_s)},
    )


def unavailable(message: str, code: str = "unavailable") -> APIError:
    return APIError(503, message, type="server_error", code=code, headers={"Retry-After": "1"})


def internal() -> APIError:
    return APIError(
        500,
        "internal server error (see the server's log)",
        type="server_error",
        code="internal_error",
    )
