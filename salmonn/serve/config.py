"""The server's settings, in one frozen dataclass (the ``salmonn serve`` flags fill it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ChunkingOptions, GenerationOptions
from ..errors import ConfigError

DEFAULT_MODEL_NAME = "salmonn"  # served name when the components are given by path


@dataclass(frozen=True)
class ServeConfig:
    """How the server listens, batches and limits requests.

    Attributes:
        host, port: where to listen.
        served_model_name: the one model id of ``/v1/models``; requests naming another get 404.
        model_aliases: other names requests may use for it (e.g. the preset's name when the
            components were given by path).
        api_key: when set, ``/v1/*`` needs ``Authorization: Bearer KEY`` (``/health`` and
            ``/metrics`` stay open).
        max_batch_size: most clips (or text prompts) in one model call, across requests.
        batch_wait_ms: how long the oldest model call waits for calls of other requests in flight.
        max_queue: requests admitted at once (running or waiting); more get 503 with Retry-After.
        max_upload_mb: largest audio upload (decoded bytes) in MB; larger gets 413.
        max_audio_seconds: longest audio; longer gets 413.
        allowed_local_media_path: folder whose files ``file://`` URLs may name; ``None``: refused.
        generation: default decoding (a request's fields override it).
        chunking: how long audio is cut (as the CLI's defaults).
        graceful_shutdown_s: on SIGTERM/SIGINT, how long requests in flight may take to finish;
            those still running then get 503 ``shutting_down``.
        request_timeout: seconds a request's body may take to arrive in full (408 after).
        allowed_hosts: host names the ``Host`` header may name (``"*"``: any); ``None``: the bound
            address (any when it is ``0.0.0.0`` or ``::``).
        allowed_origins: web origins (``https://app.example``, ``"*"``) whose pages may call the
            server; CORS headers are sent for these only. A page of the server's own origin may
            always call it.
        web_ui: serve the browser page at ``/`` (:mod:`salmonn.serve.webui`); ``False``: 404.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str = DEFAULT_MODEL_NAME
    model_aliases: tuple[str, ...] = ()
    api_key: str | None = None
    max_batch_size: int = 8
    batch_wait_ms: float = 10.0
    max_queue: int = 64
    max_upload_mb: float = 100.0
    max_audio_seconds: float = 3600.0
    allowed_local_media_path: str | None = None
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    chunking: ChunkingOptions = field(default_factory=ChunkingOptions)
    graceful_shutdown_s: float = 30.0
    request_timeout: float = 60.0
    allowed_hosts: tuple[str, ...] | None = None
    allowed_origins: tuple[str, ...] = ()
    web_ui: bool = True

    def __post_init__(self) -> None:
        checks = {
            "max_batch_size": self.max_batch_size >= 1,
            "max_queue": self.max_queue >= 1,
            "batch_wait_ms": self.batch_wait_ms >= 0,
            "max_upload_mb": self.max_upload_mb > 0,
            "max_audio_seconds": self.max_audio_seconds > 0,
            "port": 0 <= self.port <= 65535,
            "graceful_shutdown_s": self.graceful_shutdown_s >= 0,
            "request_timeout": self.request_timeout > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"{name} is out of range: {getattr(self, name)!r}")
        if not self.served_model_name.strip():
            raise ConfigError("served_model_name is empty")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)
