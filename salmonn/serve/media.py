"""Audio sent to the server: base64 data, ``data:`` URLs, ``file://`` URLs under an allowed folder.

Uploaded bytes go to a private temporary folder for ffmpeg and are deleted when the request ends;
remote URLs are never fetched.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import tempfile
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from ..audio.inputs import DEFAULT_EXTENSIONS
from .errors import bad_audio, bad_request, too_large

FORMATS = frozenset(ext.lstrip(".") for ext in DEFAULT_EXTENSIONS)
_MIME_SUBTYPES = {
    "mpeg": "mp3",
    "mp3": "mp3",
    "x-mp3": "mp3",
    "wav": "wav",
    "x-wav": "wav",
    "wave": "wav",
    "vnd.wave": "wav",
    "x-flac": "flac",
    "mp4": "m4a",
    "x-m4a": "m4a",
    "aacp": "aac",
    "x-aac": "aac",
}


@dataclass
class AudioFile:
    """A file ffmpeg can open for one request; :meth:`cleanup` deletes it when it was uploaded."""

    path: str
    temp_dir: str | None = None

    def cleanup(self) -> None:
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


def check_format(fmt: str | None, param: str) -> str:
    """A known audio/video format name (``wav``, ``mp3``, ...), lower case."""
    if fmt is not None and not isinstance(fmt, str):
        raise bad_request(f"{param} must be a string such as 'wav'", param)
    name = (fmt or "").strip().lower().lstrip(".")
    if name not in FORMATS:
        raise bad_request(
            f"{param}: unknown audio format {fmt!r}; use one of wav, mp3, flac, ogg, m4a, webm, ...",
            param,
        )
    return name


def decode_base64(data: object, param: str, max_bytes: int) -> bytes:
    """The bytes of a base64 string; 400 when it is not base64 or empty, 413 over ``max_bytes``."""
    if not isinstance(data, str):
        raise bad_request(f"{param} must be a base64 string", param)
    text = "".join(data.split())
    if len(text) * 3 // 4 > max_bytes:
        raise _too_big(len(text) * 3 // 4, max_bytes, param)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param} is not valid base64", param, code="invalid_base64") from None
    if not raw:
        raise bad_audio(f"{param}: the audio is empty", param)
    if len(raw) > max_bytes:
        raise _too_big(len(raw), max_bytes, param)
    return raw


def _too_big(size: int, max_bytes: int, param: str | None) -> Exception:
    return too_large(
        f"{param or 'file'}: the audio is {size:,} bytes, over the server's limit of "
        f"{max_bytes:,} bytes (--max-upload-mb {max_bytes / 1e6:g})",
        param,
    )


def check_size(
    size: int, max_bytes: int, param: str | None = None, shown: int | None = None
) -> None:
    """413 when an upload of ``size`` bytes is over ``max_bytes``; the message gives ``shown``
    bytes as the upload's size when given (e.g. the request's whole length)."""
    if size > max_bytes:
        raise _too_big(size if shown is None else shown, max_bytes, param)


def from_data_url(url: str, param: str, max_bytes: int) -> tuple[bytes, str]:
    """``data:audio/wav;base64,...`` -> (bytes, format)."""
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise bad_request(f"{param}: expected data:audio/FORMAT;base64,DATA", param)
    mime = header[len("data:") :].split(";")[0].strip().lower()
    kind, _, subtype = mime.partition("/")
    if kind not in ("audio", "video"):
        raise bad_request(f"{param}: expected an audio data URL, got {mime or 'no type'!r}", param)
    fmt = check_format(_MIME_SUBTYPES.get(subtype, subtype), param)
    return decode_base64(payload, param, max_bytes), fmt


def local_file(url: str, allowed_dir: str | None, param: str) -> AudioFile:
    """A ``file://`` URL; it must lie under ``allowed_dir`` (``--allowed-local-media-path``)."""
    if allowed_dir is None:
        raise bad_request(
            f"{param}: file:// URLs are off; start the server with --allowed-local-media-path DIR",
            param,
        )
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise bad_request(f"{param}: a file:// URL must name a local path", param)
    given = unquote(parsed.path)
    if "\x00" in given:
        raise bad_request(f"{param}: the path holds a NUL byte", param)
    # messages name the path as the client gave it, never where a symlink leads on the server
    path = os.path.realpath(given)
    root = os.path.realpath(allowed_dir)
    if os.path.commonpath([path, root]) != root:
        raise bad_request(
            f"{param}: {given!r} is outside the allowed folder (--allowed-local-media-path)", param
        )
    if not os.path.isfile(path):
        raise bad_request(f"{param}: no such file {given!r}", param)
    return AudioFile(path)


def from_url(url: object, allowed_dir: str | None, param: str, max_bytes: int) -> AudioFile:
    """An ``audio_url``: a data URL or a local file; remote URLs are refused."""
    if not isinstance(url, str) or not url:
        raise bad_request(f"{param} must be a URL string", param)
    scheme = url.split(":", 1)[0].lower()
    if scheme == "data":
        raw, fmt = from_data_url(url, param, max_bytes)
        return save(raw, fmt)
    if scheme == "file":
        return local_file(url, allowed_dir, param)
    raise bad_request(
        f"{param}: the server does not fetch remote URLs ({scheme}://); send the audio as "
        "base64 (input_audio or a data: URL)",
        param,
        code="unsupported_url",
    )


def save(raw: bytes, fmt: str) -> AudioFile:
    """Write uploaded bytes to a private temporary file named ``audio.FORMAT``."""
    folder = tempfile.mkdtemp(prefix="salmonn-serve-")
    path = os.path.join(folder, f"audio.{fmt}")
    try:
        with open(path, "wb") as handle:
            handle.write(raw)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return AudioFile(path, folder)
