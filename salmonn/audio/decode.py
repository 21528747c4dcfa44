"""Decoding of any input to 16 kHz mono float32, streamed through ffmpeg.

Every ffmpeg call is an argument list (never a shell) with ``-nostdin``. Decoding is streamed:
ffmpeg writes a float32 WAV stream to a pipe that is read window by window, so memory does not grow
with the file's length. The WAV header tells how many channels ffmpeg delivers; the default down-mix
is their exact mean, done here (ffmpeg's ``-ac 1`` is a mean only for some layouts: it drops LFE and
weights centre channels).

Finding ffmpeg, probing and the wording of its errors are :mod:`salmonn.audio.probe`; their public
names are importable from here as well.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from typing import IO, BinaryIO, cast

import ffmpeg
import numpy as np

from ..constants import SAMPLE_RATE, STDIN
from ..errors import AudioDecodeError, AudioError, FFmpegNotFoundError
from .probe import (
    FFMPEG_ENV,
    FFMPEG_FIX,
    PASS_THE_PATH,
    PROBE_TIMEOUT_S,
    UNSEEKABLE_RE,
    AudioInfo,
    channels_from_layout,
    check_source,
    ffmpeg_cause,
    ffmpeg_url,
    find_ffmpeg,
    probe,
)

logger = logging.getLogger(__name__)

__all__ = [
    "FFMPEG_ENV",
    "PROBE_TIMEOUT_S",
    "AudioInfo",
    "channels_from_layout",
    "decode_command",
    "find_ffmpeg",
    "load_audio",
    "probe",
    "stream_audio",
]


def decode_command(source: str, ffmpeg_exe: str | None = None, *, strict: bool = True) -> list[str]:
    """The ffmpeg argument list that decodes ``source``'s first audio stream to a 16 kHz float32 WAV
    on stdout, every channel kept (interleaved). ``strict`` adds ``-xerror``: corrupt data is an
    error instead of a silent gap (a wav cut mid-sample otherwise exits 0).
    """
    stream = ffmpeg.input(ffmpeg_url(source))["a:0"]
    out = stream.output("pipe:1", format="wav", acodec="pcm_f32le", ar=SAMPLE_RATE)
    flags = ["-nostdin", "-hide_banner", "-nostats", "-loglevel", "error"]
    out = out.global_args(*flags, *(["-xerror"] if strict else []))
    return list(out.compile(cmd=ffmpeg_exe or find_ffmpeg()))


def _stdin_source() -> tuple[int | BinaryIO | None, BinaryIO | None]:
    """(Popen's stdin, a stream to copy into ffmpeg's stdin when there is no regular file).

    A file redirected to standard input is handed to ffmpeg as is (it may seek in it); a pipe is
    copied through, so that an empty one can be told apart from undecodable data.
    """
    stdin = sys.stdin
    if stdin is None:
        raise AudioError(STDIN, "standard input is closed")
    # the text stream's binary buffer; a stand-in stdin without one is taken to read bytes itself,
    # unless it is a text stream (io.StringIO): audio is bytes
    if not hasattr(stdin, "buffer") and isinstance(stdin, io.TextIOBase):
        raise AudioError(STDIN, "standard input is a text stream without bytes to decode")
    buffer = cast(BinaryIO, getattr(stdin, "buffer", stdin))
    try:
        fd = stdin.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return subprocess.PIPE, buffer  # e.g. a test runner's in-memory stdin
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd, None
    return subprocess.PIPE, buffer


class _FFmpegStream:
    """One running ffmpeg decode: stderr drained in a thread (last lines kept), stdout read here."""

    def __init__(self, source: str, strict: bool = True) -> None:
        self.source = source
        cmd = decode_command(source, strict=strict)
        stdin: int | BinaryIO | None = subprocess.DEVNULL
        self._feed_from: BinaryIO | None = None
        self._fed = 0  # bytes copied into ffmpeg's stdin
        if source == STDIN:
            stdin, self._feed_from = _stdin_source()
        self._stdin_fd = stdin if isinstance(stdin, int) and stdin >= 0 else None
        try:
            # its own session: a Ctrl-C in the terminal stops us, and we stop ffmpeg (close());
            # ffmpeg killed first would read as a corrupt file and mark a good input failed
            self.proc = subprocess.Popen(
                cmd,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,
            )
        except OSError as exc:
            raise FFmpegNotFoundError(
                f"cannot run {cmd[0]}: {exc.strerror or exc}; {FFMPEG_FIX}"
            ) from exc
        self._stderr: deque[str] = deque(maxlen=40)
        self._threads = [threading.Thread(target=self._drain, daemon=True)]
        if self._feed_from is not None:
            self._threads.append(threading.Thread(target=self._feed, daemon=True))
        for thread in self._threads:
            thread.start()
        assert self.proc.stdout is not None
        self.stdout: IO[bytes] = self.proc.stdout

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._stderr.append(raw.decode("utf-8", "replace").rstrip())

    def _feed(self) -> None:
        assert self.proc.stdin is not None and self._feed_from is not None
        try:
            while block := self._feed_from.read(1 << 16):
                self._fed += len(block)
                self.proc.stdin.write(block)
        except (BrokenPipeError, ValueError, OSError):
            pass  # ffmpeg stopped reading (error or close); its exit status tells the rest
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def read_exact(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the stream."""
        parts, got = [], 0
        while got < size:
            block = self.stdout.read(size - got)
            if not block:
                break
            parts.append(block)
            got += len(block)
        return b"".join(parts)

    def read_into(self, view: memoryview) -> int:
        """Fill ``view``; returns the byte count, smaller only at the end of the stream."""
        got = 0
        while got < len(view):
            n = self.stdout.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                break
            got += n
        return got

    def _stdin_empty(self) -> bool:
        """Whether standard input held no byte at all (a pipe that closed at once, an empty file)."""
        if self._feed_from is not None:
            return self._fed == 0
        try:
            return self._stdin_fd is not None and os.fstat(self._stdin_fd).st_size == 0
        except OSError:
            return False

    def failure(self) -> AudioDecodeError | None:
        """Wait for ffmpeg to exit; the error it reported, if any."""
        code = self.proc.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        if code == 0:
            if self._stderr:  # lenient decoding went past errors: say so, the audio may have gaps
                cause = ffmpeg_cause("\n".join(self._stderr), self.source)
                logger.warning("%s: ffmpeg reported decoding errors (%s)", self.source, cause)
            return None
        if self.source == STDIN and self._stdin_empty():
            return AudioDecodeError(self.source, "empty input (0 bytes on standard input)")
        cause = ffmpeg_cause("\n".join(self._stderr), self.source)
        if self.source == STDIN and UNSEEKABLE_RE.search(cause):
            cause += f"; {PASS_THE_PATH}"
        return AudioDecodeError(self.source, cause)

    def close(self) -> None:
        """Stop ffmpeg (if still running) and release the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        for thread in self._threads:
            thread.join(timeout=5)


def _read_wav_header(stream: _FFmpegStream) -> int:
    """Parse ffmpeg's streamed WAV header up to the ``data`` chunk; return the channel count."""
    riff = stream.read_exact(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise stream.failure() or AudioDecodeError(stream.source, "no audio samples (0 s of audio)")
    channels = 0
    while True:
        head = stream.read_exact(8)
        if len(head) < 8:
            raise stream.failure() or AudioDecodeError(
                stream.source, "no audio samples (0 s of audio)"
            )
        tag, size = head[:4], struct.unpack("<I", head[4:])[0]
        if tag == b"data":
            break
        body = stream.read_exact(size + (size & 1))
        if tag == b"fmt ":
            _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if rate != SAMPLE_RATE or bits != 32:
                raise AudioDecodeError(stream.source, f"ffmpeg delivered {rate} Hz/{bits} bit")
    if channels < 1:
        raise AudioDecodeError(stream.source, "ffmpeg's output has no channel count")
    return channels


def stream_audio(
    source: str | os.PathLike[str],
    *,
    channel: int | None = None,
    block_seconds: float = 1.0,
    strict: bool = True,
) -> Iterator[np.ndarray]:
    """Decode ``source`` (a path, or ``"-"`` for standard input) as a stream of mono 16 kHz blocks.

    Yields float32 arrays of shape ``(n,)``, ``n = block_seconds * 16000`` except for the last
    block. ``channel=None`` averages all channels; an integer keeps that channel (0-based). Memory
    stays at one block whatever the length. Raises :class:`AudioError` / :class:`AudioDecodeError`
    with the path and a one-line cause, possibly after some blocks were yielded (corrupt data
    mid-file). ``strict=False`` lets ffmpeg skip corrupt data (logged as a warning) instead.
    Closing the generator early stops ffmpeg.
    """
    src = os.fspath(source)
    check_source(src)
    proc = _FFmpegStream(src, strict)
    try:
        channels = _read_wav_header(proc)
        if channel is not None and channel >= channels:
            raise AudioError(src, f"channel {channel} requested but the audio has {channels}")
        frames = max(1, int(block_seconds * SAMPLE_RATE))
        raw = bytearray(frames * channels * 4)
        view = memoryview(raw)
        total = 0
        while got := proc.read_into(view):
            block = np.frombuffer(raw, np.float32, got // (4 * channels) * channels)
            block = block.reshape(-1, channels)
            if channel is not None:
                mono = np.ascontiguousarray(block[:, channel])
            elif channels == 1:
                mono = block[:, 0].copy()
            else:
                mono = block.mean(axis=1, dtype=np.float32)
            total += len(mono)
            if len(mono):
                yield mono
            if got < len(raw):
                break
        error = proc.failure()
        if error is not None:
            raise error
        if total == 0:
            raise AudioDecodeError(src, "no audio samples (0 s of audio)")
    finally:
        proc.close()


def load_audio(path: str | os.PathLike[str], channel: int | None = None) -> np.ndarray:
    """Decode a whole input to float32 16 kHz mono, shape ``(n,)``.

    For short clips: stream long ones with :func:`stream_audio` or :func:`~salmonn.iter_chunks`.
    """
    blocks = list(stream_audio(path, channel=channel, block_seconds=10.0))
    return np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)
