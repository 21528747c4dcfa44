"""Exceptions raised by salmonn. Every one derives from :class:`SalmonnError`."""

from __future__ import annotations

from collections.abc import Sequence


class SalmonnError(Exception):
    """Base class of every error salmonn raises on purpose."""


class ConfigError(SalmonnError, ValueError):
    """Invalid options or configuration values."""


class DeviceUnavailableError(ConfigError):
    """The requested device cannot be used here (e.g. CUDA on a machine without it)."""

    def __init__(self, device: str, reason: str) -> None:
        self.device, self.reason = device, reason
        super().__init__(f"device {device!r} requested but {reason}; use device 'cpu'")


class FFmpegNotFoundError(SalmonnError):
    """No usable ffmpeg binary was found."""


class AudioError(SalmonnError):
    """An input could not be read as audio.

    ``path`` is the input that failed and ``reason`` a one-line cause; ``str(err)`` is ``"{path}: {reason}"``.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason.strip().splitlines()[-1] if reason.strip() else "unknown error"
        super().__init__(f"{self.path}: {self.reason}")


class AudioDecodeError(AudioError):
    """ffmpeg failed on the input, or produced no samples."""


class CheckpointError(SalmonnError):
    """A weight file or folder does not match what the model needs."""


class PromptError(SalmonnError):
    """A prompt template is invalid or is missing variables."""


def name_some(keys: Sequence[str], limit: int = 3) -> str:
    """``"a, b, c (+4 more)"``: the first ``limit`` names and how many were left out."""
    head = ", ".join(keys[:limit])
    return f"{head} (+{len(keys) - limit} more)" if len(keys) > limit else head


def key_mismatch(expected: Sequence[str], given: Sequence[str], what: str = "keys") -> str:
    """One-line description of the missing and unexpected names of a state dict ("" when equal)."""
    given_set, expected_set = set(given), set(expected)
    missing = [k for k in expected if k not in given_set]
    unexpected = [k for k in given if k not in expected_set]
    parts = []
    if missing:
        parts.append(f"missing {what} {name_some(missing)}")
    if unexpected:
        parts.append(f"unexpected {what} {name_some(unexpected)}")
    return "; ".join(parts)


def error_line(exc: BaseException, *, lead: int = 0) -> str:
    """The line that says what went wrong: the last non-empty line of ``exc``'s message, after the
    exception's type name when the error is not one of ours (``"RuntimeError: CUDA out of memory"``).

    ``lead=N`` takes the first ``N`` lines (joined by a space) instead, for errors that state the cause
    first and advice after: the hub's (``404 Client Error.`` / ``Repository Not Found for url: ...``)
    and Ray's (``The actor died unexpectedly ...`` before its details).
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = " ".join(lines[:lead]) if lead else lines[-1] if lines else ""
    if isinstance(exc, SalmonnError):
        return message or type(exc).__name__
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
