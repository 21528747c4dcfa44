"""ffmpeg lookup, probing without ffprobe, and decoding of any input to 16 kHz mono float32.

Every ffmpeg call is an argument list (never a shell) with ``-nostdin``. Decoding is streamed:
ffmpeg writes a float32 WAV stream to a pipe that is read window by window, so memory does not grow
with the file's length. The WAV header tells how many channels ffmpeg delivers; the default down-mix
is their exact mean, done here (ffmpeg's ``-ac 1`` is a mean only for some layouts: it drops LFE and
weights centre channels).

A little over 400 lines: probing, the streamed decoder and its WAV-header reader share ffmpeg's
command line and error wording, which read best in one place.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO

import ffmpeg
import numpy as np

from ..constants import SAMPLE_RATE, STDIN
from ..errors import AudioDecodeError, AudioError, FFmpegNotFoundError

logger = logging.getLogger(__name__)

FFMPEG_ENV = "SALMONN_FFMPEG"
PROBE_TIMEOUT_S = 60.0
_FIX = (
    f"install ffmpeg on PATH, run `pip install imageio-ffmpeg`, or set {FFMPEG_ENV}=/path/to/ffmpeg"
)


def find_ffmpeg(override: str | None = None) -> str:
    """Return the ffmpeg executable to use.

    Order: ``override`` (a config value), env ``SALMONN_FFMPEG``, ``ffmpeg`` on PATH, then the
    binary shipped by the ``imageio-ffmpeg`` wheel. Otherwise raises :class:`FFmpegNotFoundError`
    (one line with the fix).
    """
    explicit = override or os.environ.get(FFMPEG_ENV)
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            origin = "ffmpeg path" if override else FFMPEG_ENV
            raise FFmpegNotFoundError(
                f"{origin}={explicit!r} is not an executable file: fix the path or unset it"
            )
        return found
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError) as exc:
        raise FFmpegNotFoundError(f"ffmpeg not found: {_FIX}") from exc


@dataclass(frozen=True)
class AudioInfo:
    """What ``ffmpeg -i`` says about the first audio stream of a file.

    Attributes:
        duration: container duration in seconds, ``None`` when ffmpeg reports ``N/A``.
        sample_rate: native sample rate in Hz (``None`` without an audio stream).
        channels: native channel count (``None`` without an audio stream or for an unknown layout).
        has_audio: whether the file has at least one audio stream.
        codec: the audio codec name, e.g. ``"mp3"`` or ``"aac"``.
    """

    duration: float | None
    sample_rate: int | None
    channels: int | None
    has_audio: bool
    codec: str | None = None


_NAMED_LAYOUTS = {
    "mono": 1, "stereo": 2, "downmix": 2, "binaural": 2, "quad": 4,
    "hexagonal": 6, "octagonal": 8, "cube": 8, "hexadecagonal": 16,
}  # fmt: skip
_DURATION_RE = re.compile(r"Duration: (?:(\d+):(\d\d):(\d\d(?:\.\d+)?)|N/A)")
_AUDIO_STREAM_RE = re.compile(r"^\s*Stream #\d+:\d+\S*: Audio: (.*)$", re.MULTILINE)
_RATE_LAYOUT_RE = re.compile(r"(\d+) Hz, ([^,]+)")
_LOG_PREFIX_RE = re.compile(r"^(?:\[[^\]]*@ ?0x[0-9a-f]+\] ?)+")
_NOISE_RE = re.compile(
    r"Task finished with error|Terminating thread with|Last message repeated|"
    r"Error opening output file|Error parsing options|To ignore this, add|"
    r"Error opening input file |Error closing file|Error writing trailer|Conversion failed|"
    r"Nothing was written into output|^\s*$"
)


# what ffmpeg says when a container (mp4/m4a/mov with its index at the end) cannot be read from a pipe
_UNSEEKABLE_RE = re.compile(r"demux|moov atom|Invalid data found|seek", re.IGNORECASE)
_PASS_THE_PATH = (
    "formats such as mp4, m4a or mov need a seekable file: pass the file's path instead of "
    "piping it to standard input"
)


def channels_from_layout(layout: str) -> int | None:
    """Channel count of an ffmpeg layout name: ``"mono"`` 1, ``"5.1(side)"`` 6, ``"6 channels"``."""
    layout = layout.strip()
    match = re.match(r"(\d+) channels", layout)
    if match:
        return int(match.group(1))
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", layout)
    if match:
        return sum(int(g) for g in match.groups() if g)
    return _NAMED_LAYOUTS.get(layout.split("(")[0])


def _ffmpeg_cause(stderr: str, source: str | None = None) -> str:
    """The most useful line of ffmpeg's stderr: the last one that is not bookkeeping.

    ffmpeg starts some lines with the input's URL (``file:a.wav: Invalid data ...``); that prefix is
    dropped, since the error names the path already.
    """
    url = None if source is None else _ffmpeg_url(source) + ": "
    lines = [_LOG_PREFIX_RE.sub("", line).strip() for line in stderr.splitlines()]
    if url is not None:
        lines = [line.removeprefix(url) for line in lines]
    if any("matches no streams" in line for line in lines):
        return "no audio stream in the file"
    useful = [line for line in lines if not _NOISE_RE.search(line)]
    if not useful:
        return "ffmpeg failed without a message"
    # "Error opening input: Invalid data ..." is generic; an earlier line ("moov atom not found")
    # says why.
    specific = [line for line in useful if not line.startswith("Error opening input")]
    cause = specific[-1] if specific else useful[-1]
    for prefix in ("Error opening input files: ", "Error opening input: "):
        cause = cause.removeprefix(prefix)
    return cause


def _ffmpeg_url(source: str) -> str:
    # "file:" stops names that start with "-" or hold ":" being read as options or protocols.
    return "pipe:0" if source == STDIN else "file:" + source


def _check_source(source: str) -> None:
    """Fail early, with a clear cause, on paths ffmpeg would only describe vaguely."""
    if source == STDIN:
        return
    try:
        os.lstat(source)
    except FileNotFoundError:
        raise AudioError(source, "no such file or directory") from None
    except OSError as exc:  # e.g. a path too long, a folder on the way that cannot be searched
        raise AudioError(source, exc.strerror or str(exc)) from None
    if not os.path.exists(source):
        raise AudioError(source, "broken symbolic link")
    if os.path.isdir(source):  # e.g. a sub-folder the input walk could not list
        try:
            os.scandir(source).close()
        except OSError as exc:
            raise AudioError(
                source, f"a folder that cannot be listed: {exc.strerror or exc}"
            ) from None
        raise AudioError(source, "is a directory, expected an audio or video file")
    try:
        size = os.path.getsize(source)
    except OSError as exc:
        raise AudioError(source, exc.strerror or str(exc)) from exc
    if size == 0 and os.path.isfile(source):
        raise AudioDecodeError(source, "empty file (0 bytes)")


def probe(path: str | os.PathLike[str]) -> AudioInfo:
    """Duration, sample rate, channels, presence of audio, parsed from ``ffmpeg -i`` (no ffprobe).

    Raises :class:`AudioError` for a missing path or a directory, :class:`AudioDecodeError` when
    ffmpeg cannot open the file. A file without audio gives ``has_audio=False`` (decoding it
    raises). Standard input (``"-"``) cannot be probed without consuming it: :class:`AudioError`.
    """
    source = os.fspath(path)
    if source == STDIN:
        raise AudioError(source, "standard input cannot be probed; decode it with iter_chunks('-')")
    _check_source(source)
    cmd = [find_ffmpeg(), "-hide_banner", "-nostdin", "-i", _ffmpeg_url(source)]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
            start_new_session=True,  # not stopped by the terminal's Ctrl-C before we are
        )
    except subprocess.TimeoutExpired as exc:
        raise AudioDecodeError(
            source, f"ffmpeg did not answer within {PROBE_TIMEOUT_S:.0f} s"
        ) from exc
    except OSError as exc:
        raise FFmpegNotFoundError(f"cannot run {cmd[0]}: {exc.strerror or exc}; {_FIX}") from exc
    stderr = done.stderr.decode("utf-8", "replace")
    if "Input #0" not in stderr:
        raise AudioDecodeError(source, _ffmpeg_cause(stderr, source))
    return _parse_probe(stderr)


def _parse_probe(stderr: str) -> AudioInfo:
    duration = None
    match = _DURATION_RE.search(stderr)
    if match and match.group(1) is not None:
        hours, minutes, seconds = match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    stream = _AUDIO_STREAM_RE.search(stderr)
    if stream is None:
        return AudioInfo(duration, None, None, has_audio=False)
    desc = stream.group(1)
    codec = desc.split(" ", 1)[0].rstrip(",")
    rate_layout = _RATE_LAYOUT_RE.search(desc)
    if rate_layout is None:
        return AudioInfo(duration, None, None, has_audio=True, codec=codec)
    rate = int(rate_layout.group(1))
    return AudioInfo(duration, rate, channels_from_layout(rate_layout.group(2)), True, codec)


def decode_command(source: str, ffmpeg_exe: str | None = None, *, strict: bool = True) -> list[str]:
    """The ffmpeg argument list that decodes ``source``'s first audio stream to a 16 kHz float32 WAV
    on stdout, every channel kept (interleaved). ``strict`` adds ``-xerror``: corrupt data is an
    error instead of a silent gap (a wav cut mid-sample otherwise exits 0).
    """
    stream = ffmpeg.input(_ffmpeg_url(source))["a:0"]
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
    buffer = getattr(stdin, "buffer", stdin)
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
                f"cannot run {cmd[0]}: {exc.strerror or exc}; {_FIX}"
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
                cause = _ffmpeg_cause("\n".join(self._stderr), self.source)
                logger.warning("%s: ffmpeg reported decoding errors (%s)", self.source, cause)
            return None
        if self.source == STDIN and self._stdin_empty():
            return AudioDecodeError(self.source, "empty input (0 bytes on standard input)")
        cause = _ffmpeg_cause("\n".join(self._stderr), self.source)
        if self.source == STDIN and _UNSEEKABLE_RE.search(cause):
            cause += f"; {_PASS_THE_PATH}"
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
    _check_source(src)
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
