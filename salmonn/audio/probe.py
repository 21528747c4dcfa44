"""ffmpeg itself: finding the binary, probing an input without ffprobe, and what its errors mean.

:func:`find_ffmpeg` (``SALMONN_FFMPEG``, the ``ffmpeg`` on PATH, else the imageio-ffmpeg binary),
:func:`probe` (duration, rate and channels from ffmpeg's own banner) and the wording of a failure
(its cause in one line, the path named once) are shared by the streamed decoder
(:mod:`salmonn.audio.decode`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from ..constants import STDIN
from ..errors import AudioDecodeError, AudioError, FFmpegNotFoundError

FFMPEG_ENV = "SALMONN_FFMPEG"
PROBE_TIMEOUT_S = 60.0
FFMPEG_FIX = (
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
        raise FFmpegNotFoundError(f"ffmpeg not found: {FFMPEG_FIX}") from exc


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
UNSEEKABLE_RE = re.compile(r"demux|moov atom|Invalid data found|seek", re.IGNORECASE)
PASS_THE_PATH = (
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


def ffmpeg_cause(stderr: str, source: str | None = None) -> str:
    """The most useful line of ffmpeg's stderr: the last one that is not bookkeeping.

    ffmpeg starts some lines with the input's URL (``file:a.wav: Invalid data ...``); that prefix is
    dropped, since the error names the path already.
    """
    url = None if source is None else ffmpeg_url(source) + ": "
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


def ffmpeg_url(source: str) -> str:
    # "file:" stops names that start with "-" or hold ":" being read as options or protocols.
    return "pipe:0" if source == STDIN else "file:" + source


def check_source(source: str) -> None:
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
    check_source(source)
    cmd = [find_ffmpeg(), "-hide_banner", "-nostdin", "-i", ffmpeg_url(source)]
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
        raise FFmpegNotFoundError(
            f"cannot run {cmd[0]}: {exc.strerror or exc}; {FFMPEG_FIX}"
        ) from exc
    stderr = done.stderr.decode("utf-8", "replace")
    if "Input #0" not in stderr:
        raise AudioDecodeError(source, ffmpeg_cause(stderr, source))
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
