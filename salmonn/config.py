"""Runtime option dataclasses. Each default lives here once; the CLI reads its defaults from these."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any

from .constants import MIN_SECONDS, WINDOW_SECONDS
from .errors import ConfigError

DEFAULT_BATCH_SIZE = 4  # chunks per model call, taken across files
AUTO_BATCH_SIZE = (
    "auto"  # the largest batch that fits the device (salmonn.model.capacity); CPU: the default
)


def check_batch_size(value: Any) -> Any:
    """``value`` as a batch size: an integer >= 1, or ``"auto"`` (kept as the string).

    Raises:
        ConfigError: not an integer nor "auto", or below 1.
    """
    if isinstance(value, str) and value.strip().lower() == AUTO_BATCH_SIZE:
        return AUTO_BATCH_SIZE
    if isinstance(value, bool):
        raise ConfigError(f"batch_size must be an integer or auto, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"batch_size must be an integer, got {value!r}") from None
    if number != value and not isinstance(value, str):
        raise ConfigError(f"batch_size must be an integer, got {value!r}")
    if number < 1:
        raise ConfigError(f"batch_size must be >= 1, got {number}")
    return number


_DEVICE_NAME = re.compile(r"(cpu|mps|(cuda|xpu)(:\d+)?)")


def check_device(name: str) -> str:
    """``name`` when it names a device the model can run on (``cpu``, ``cuda``, ``cuda:N``, ``mps``,
    ``xpu[:N]``), checked without importing torch (so the CLI can check a value early); whether
    that device is there is :func:`salmonn.model.devices.resolve_device`'s question.

    Raises:
        ConfigError: any other name.
    """
    if not _DEVICE_NAME.fullmatch(name):
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or cuda:N")
    return name


def prefetch_depth(batch_size: Any) -> int:
    """How many decoded chunks to keep ready ahead of the model: two batches, at least 16
    (32 for ``"auto"``, whose size is known only once the model is loaded)."""
    if batch_size == AUTO_BATCH_SIZE:
        return 32
    return max(16, 2 * batch_size)


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings; the defaults are the original's (docs/original-model.md, "Generation").

    Attributes:
        max_new_tokens: generated tokens at most (the final EOS included).
        min_length: EOS is banned while the generated ids plus the dummy BOS number fewer than
            this (transformers 4.28's count); the original's 1 never bans it.
        num_beams: beam width; 1 means greedy (or plain sampling with ``do_sample``).
        do_sample: sample instead of taking the best token (beam-sample when ``num_beams > 1``).
        temperature, top_k, top_p: sampling filters, used only when ``do_sample``.
        repetition_penalty: CTRL-style penalty on already generated tokens; 1.0 is off.
        length_penalty: exponent of the hypothesis length in beam scores.
        seed: seed for sampling; every item (clip, chunk, prompt) draws from its own generator
            seeded with it, so batching never changes a sampled answer. ``None`` draws from
            torch's global generator (random).
    """

    max_new_tokens: int = 200
    min_length: int = 1
    num_beams: int = 4
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.min_length < 0:
            raise ConfigError(f"min_length must be >= 0, got {self.min_length}")
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def with_overrides(self, **overrides: Any) -> GenerationOptions:
        """Return a copy with the given fields replaced (``None`` values are ignored)."""
        return _override(self, overrides)


@dataclass(frozen=True)
class ChunkingOptions:
    """How an input is decoded and cut into model windows.

    Attributes:
        max_seconds: longest chunk, at most 30 s (one Whisper window).
        strategy: ``"quiet"`` cuts at the quietest point of the last ``search_seconds`` before the limit;
            ``"fixed"`` cuts exactly every ``max_seconds - overlap_seconds``.
        search_seconds: width of the region searched for a quiet cut point.
        overlap_seconds: audio shared by consecutive chunks.
        min_seconds: a final piece shorter than this is handled by ``short_tail``.
        short_tail: ``"merge"`` moves the last quiet cut earlier so that the final piece lasts at least
            ``min_seconds`` (when no cut can move, e.g. with fixed cuts, the piece is zero-padded and logged);
            ``"pad"`` keeps a short final piece as its own chunk, zero-padded to ``min_seconds`` as the
            original does (docs/original-model.md, "Audio front end").
        channel: ``None`` down-mixes to the mean of all channels; an integer keeps that channel only
            (the original keeps channel 0).
        strict_decode: stop at the first decoding error (ffmpeg ``-xerror``), so a damaged file is an
            error instead of audio with a silent gap; ``False`` decodes past damage with a warning.
    """

    max_seconds: float = float(WINDOW_SECONDS)
    strategy: str = "quiet"
    search_seconds: float = 5.0
    overlap_seconds: float = 0.0
    min_seconds: float = float(MIN_SECONDS)
    short_tail: str = "merge"
    channel: int | None = None
    strict_decode: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.max_seconds <= WINDOW_SECONDS:
            raise ConfigError(
                f"max_seconds must be in (0, {WINDOW_SECONDS}], got {self.max_seconds}"
            )
        if self.strategy not in ("quiet", "fixed"):
            raise ConfigError(f"strategy must be 'quiet' or 'fixed', got {self.strategy!r}")
        if not 0 <= self.overlap_seconds < self.max_seconds / 2:
            raise ConfigError(
                f"overlap_seconds must be in [0, max_seconds/2), got {self.overlap_seconds}"
            )
        if self.search_seconds < 0:
            raise ConfigError(f"search_seconds must be >= 0, got {self.search_seconds}")
        if self.search_seconds >= self.max_seconds:
            # a short max_seconds with the default search width: search the last half of each chunk
            object.__setattr__(self, "search_seconds", self.max_seconds / 2)
        if self.short_tail not in ("merge", "pad"):
            raise ConfigError(f"short_tail must be 'merge' or 'pad', got {self.short_tail!r}")
        if self.channel is not None and self.channel < 0:
            raise ConfigError(f"channel must be >= 0, got {self.channel}")

    def with_overrides(self, **overrides: Any) -> ChunkingOptions:
        """Return a copy with the given fields replaced (``None`` values are ignored)."""
        return _override(self, overrides)


def _override(options: Any, overrides: dict[str, Any]) -> Any:
    names = {f.name for f in fields(options)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown option(s) for {type(options).__name__}: {', '.join(unknown)}")
    return replace(options, **{k: v for k, v in overrides.items() if v is not None})
