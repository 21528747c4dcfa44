"""The request guard: what every HTTP request passes before a route sees it, as one ASGI middleware.

In order: the ``Host`` header must name this server (``--allowed-hosts``; by default the bound
address, so a web page cannot reach a loopback server through DNS rebinding), an ``Origin`` header
must be this server's own or one of ``--allowed-origins`` (a page elsewhere cannot drive the
server: no CSRF), ``/v1`` needs the API key (``Bearer``, any case, compared in constant time), a
POST body must have its endpoint's ``Content-Type`` (JSON or multipart), and a declared
``Content-Length`` must be within the endpoint's limit. Then the body is counted as it arrives,
whatever its framing (chunked included): past the limit the route's read fails with 413 before
more is buffered or written to disk, and a body still incomplete ``--request-timeout`` seconds
after the request began fails with 408. Every answer is counted in ``/metrics`` by route (unknown
paths share one label), so random paths cannot grow the metrics.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .config import ServeConfig
from .errors import (
    APIError,
    forbidden,
    timed_out,
    too_large,
    unauthorized,
    unsupported_media_type,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_CLOSE = (b"connection", b"close")
JSON_SLACK_BYTES = 1_000_000  # room for the JSON (or the multipart form) around the audio
OTHER_BODY_BYTES = 64_000  # a body where none is expected
CHAT = "/v1/chat/completions"
AUDIO = ("/v1/audio/transcriptions", "/v1/audio/translations")
ROUTES = ("/", "/health", "/ready", "/metrics", "/openapi.json", "/v1/models", CHAT, *AUDIO)
MODEL_ROUTE = "/v1/models/{model}"
OPEN_PREFIX = "/v1"  # paths that need the API key
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def route_label(path: str) -> str:
    """The ``/metrics`` label of a path: its route, or ``"other"``."""
    if path in ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return MODEL_ROUTE
    return "other"


def body_limit(path: str, config: ServeConfig) -> int:
    """Most body bytes a request to ``path`` may send."""
    if path == CHAT:  # the audio comes as base64: 4 characters per 3 bytes
        return config.max_upload_bytes * 4 // 3 + JSON_SLACK_BYTES
    if path in AUDIO:
        return config.max_upload_bytes + JSON_SLACK_BYTES
    return OTHER_BODY_BYTES


def allowed_hosts(config: ServeConfig) -> frozenset[str] | None:
    """Host names that requests may name (``None``: any): ``--allowed-hosts``, or the bound
    address (with ``localhost`` and the other loopback names when it is a loopback address)."""
    if config.allowed_hosts is not None:
        hosts = {h.lower().strip("[]") for h in config.allowed_hosts}
        return None if "*" in hosts else frozenset(hosts)
    if config.host in WILDCARD_HOSTS:
        return None
    hosts = {config.host.lower().strip("[]")}
    try:
        loopback = ipaddress.ip_address(config.host.strip("[]")).is_loopback
    except ValueError:
        loopback = config.host == "localhost"
    if loopback:
        hosts |= {"localhost", "127.0.0.1", "::1"}
    return frozenset(hosts)


def _host_name(value: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _origin_host(origin: str) -> str:
    """``http://host:port`` -> ``host:port`` (the form of a ``Host`` header)."""
    return origin.split("://", 1)[-1].rstrip("/").lower()


class RequestGuard:
    """ASGI middleware applying the module's checks; ``count(label, status)`` counts each answer."""

    def __init__(self, app: Any, config: ServeConfig, count: Callable[[str, str], None]) -> None:
        self.app = app
        self.config = config
        self.count = count
        self.hosts = allowed_hosts(config)
        self.origins = frozenset(o.rstrip("/").lower() for o in config.allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        label = route_label(path)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status: list[int] = []
        body: _Body | None = None

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                if body is None or not body.complete:  # the rest of the body is not wanted
                    message = {**message, "headers": [*message["headers"], _CLOSE]}
            await send(message)

        try:
            self.check(scope["method"], path, headers)
        except APIError as err:
            if err.status == 413:  # read what is declared first, so that the client sees the 413
                await _drain(receive, headers, body_limit(path, self.config), self.config)
            await send_error(counted_send, err)
            self.count(label, str(err.status))
            return
        body = _Body(receive, path, self.config)
        # a request that declares no body has none to wait for (its answer keeps the connection)
        body.complete = headers.get("content-length", "0") == "0" and (
            "transfer-encoding" not in headers
        )
        try:
            await self.app(scope, body.receive, counted_send)
        except Exception:
            self.count(label, str(status[0]) if status else "500")
            raise
        self.count(label, str(status[0]) if status else "499")

    def check(self, method: str, path: str, headers: dict[str, str]) -> None:
        """Raise the :class:`APIError` that refuses this request, if any."""
        host = headers.get("host")
        if self.hosts is not None and host is not None and _host_name(host) not in self.hosts:
            raise forbidden(
                "this server does not answer for the host named in the Host header "
                "(see --allowed-hosts)",
                "host_not_allowed",
            )
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, host):
            raise forbidden(
                "requests from this web origin are refused (see --allowed-origins)",
                "origin_not_allowed",
            )
        key = self.config.api_key
        if key and path.startswith(OPEN_PREFIX):
            scheme, _, given = headers.get("authorization", "").strip().partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode("utf-8", "surrogateescape"), key.encode("utf-8")
            )
            if not ok:
                raise unauthorized()
        if method == "POST":
            self._check_type(path, headers.get("content-type", ""))
        declared = headers.get("content-length", "")
        limit = body_limit(path, self.config)
        if declared.isdigit() and int(declared) > limit:
            raise _over_limit(path, limit, self.config, size=int(declared))

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.rstrip("/").lower()
        if "*" in self.origins or origin in self.origins:
            return True
        return host is not None and _origin_host(origin) == host.strip().lower()

    @staticmethod
    def _check_type(path: str, content_type: str) -> None:
        media = content_type.split(";", 1)[0].strip().lower()
        if path == CHAT and media != "application/json":
            raise unsupported_media_type(
                f"{path} takes a JSON body: send 'Content-Type: application/json' "
                f"(got {media or 'none'!r})"
            )
        if path in AUDIO and media != "multipart/form-data":
            raise unsupported_media_type(
                f"{path} takes a multipart/form-data body with the file (got {media or 'none'!r})"
            )


def _over_limit(path: str, limit: int, config: ServeConfig, size: int | None = None) -> APIError:
    """The 413 for a body over ``limit``; ``size``: its declared size, named when known (a body cut
    off while arriving has no known size)."""
    if path in AUDIO:
        what = f"is {size / 1e6:.1f} MB" if size is not None else "is"
        return too_large(
            f"file: the upload {what} over the server's limit of {limit:,} bytes (--max-upload-mb "
            f"{config.max_upload_mb:g} for the audio, plus room for the form)",
            "file",
        )
    if path == CHAT:
        return too_large(
            f"the request body {_size(size)}over the server's limit of {limit:,} bytes for "
            f"{path} (--max-upload-mb {config.max_upload_mb:g} of audio, as base64, plus room "
            "for the JSON)",
            code="request_too_large",
        )
    return too_large(
        f"the request body {_size(size)}over {limit:,} bytes; {path} takes none",
        code="request_too_large",
    )


def _size(size: int | None) -> str:
    return f"is {size:,} bytes, " if size is not None else "is "


class _Body:
    """The request's ``receive``: counts body bytes and stops at the limit or the deadline."""

    def __init__(self, receive: Receive, path: str, config: ServeConfig) -> None:
        self._receive = receive
        self.config = config
        self.limit = body_limit(path, config)
        self.timeout = config.request_timeout
        self.deadline = time.monotonic() + self.timeout
        self.path = path
        self.size = 0
        self.complete = False

    async def receive(self) -> Message:
        if self.complete:  # the body is in: what comes now is a disconnect
            return await self._receive()
        remaining = self.deadline - time.monotonic()
        try:
            message = await asyncio.wait_for(self._receive(), max(remaining, 0.001))
        except TimeoutError:
            raise timed_out(
                f"the request body did not arrive within {self.timeout:g} s (--request-timeout)"
            ) from None
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                err = _over_limit(self.path, self.limit, self.config)
                err.headers["Connection"] = "close"
                raise err
            if not message.get("more_body", False):
                self.complete = True
        else:
            self.complete = True
        return message


DRAIN_EXTRA_BYTES = 64 * 2**20
"""How far past its limit a declared body is still read (and dropped) before the 413: a client that
sends its whole body before reading the answer (most HTTP libraries) then gets the 413 instead of a
broken connection. Larger declared bodies, and chunked ones, are cut off at once."""


async def _drain(
    receive: Receive, headers: dict[str, str], limit: int, config: ServeConfig
) -> None:
    """Read and drop a body of a declared size up to ``limit + DRAIN_EXTRA_BYTES`` (nothing is kept),
    within ``--request-timeout``."""
    declared = headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > limit + DRAIN_EXTRA_BYTES:
        return
    left, deadline = int(declared), time.monotonic() + config.request_timeout
    while left > 0:
        try:
            message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            return
        if message["type"] != "http.request":
            return
        left -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def send_error(send: Send, err: APIError) -> None:
    """Answer ``err`` in OpenAI's JSON shape (outside the routes)."""
    import json

    body = json.dumps(err.body()).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
