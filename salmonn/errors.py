"""Exceptions raised by salmonn. Every one derives from :class:`SalmonnError`."""

from __future__ import annotations


class SalmonnError(Exception):
    """Base class of every error salmonn raises on purpose."""


class ConfigError(SalmonnError, ValueError):
    """Invalid options or configuration values."""


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
