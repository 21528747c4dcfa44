"""Output writers: a name -> class registry over text, json, jsonl, srt, vtt and tsv.

Each writer wraps a text stream the caller owns: ``write(record)`` for every record, then
``close()`` (which ends the document, flushes, and leaves the stream open). ``multi=True`` tells the
writer that several records go to this one stream (json writes an array, tsv adds a path column,
text and vtt name each file). Failed records (``error`` set) appear in json/jsonl only; the other
formats skip them. Writers write nothing but the format itself.

Times are rounded by :func:`salmonn.jobs.records.milliseconds` in every format. The non-JSON writers drop
control characters (C0 but newline and tab, DEL, C1) from every text they write, the record's and
each segment's text and the paths alike, so model output cannot move a terminal's cursor or break a
subtitle file; JSON keeps them, escaped.
"""

from __future__ import annotations

import json
import re
from typing import ClassVar, TextIO

from ..errors import ConfigError
from .records import Record, Segment, milliseconds

# C0 controls but tab and newline, DEL, and the C1 controls (0x80-0x9f; 0x9b is a one-byte CSI)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class Writer:
    """Base class. Subclasses set ``extension`` and implement :meth:`_write`.

    Attributes:
        extension: file suffix for ``-o DIR/`` outputs (``".txt"``, ...).
    """

    extension: ClassVar[str] = ""

    def __init__(self, stream: TextIO, *, multi: bool = False) -> None:
        self.stream = stream
        self.multi = multi
        self.count = 0  # records written (failed ones skipped by the format not counted)
        self._closed = False

    def write(self, record: Record) -> None:
        if self._closed:
            raise ConfigError(f"{type(self).__name__} is closed")
        if record.error is not None and not self._writes_errors():
            return
        self._write(record)
        self.count += 1
        self.stream.flush()

    def close(self) -> None:
        """End the document (closing bracket, empty-file header), flush; stream stays open."""
        if not self._closed:
            self._closed = True
            self._finish()
            self.stream.flush()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _writes_errors(self) -> bool:
        return False

    def _write(self, record: Record) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass


class JsonlWriter(Writer):
    """One JSON object per line (``Record.to_json``), flushed after each line."""

    extension = ".jsonl"

    def _writes_errors(self) -> bool:
        return True

    def _write(self, record: Record) -> None:
        self.stream.write(record.to_json() + "\n")


class JsonWriter(Writer):
    """One indented JSON object, or with ``multi`` an array written incrementally ("]" at close)."""

    extension = ".json"

    def _writes_errors(self) -> bool:
        return True

    def _write(self, record: Record) -> None:
        text = json.dumps(record.to_dict(), ensure_ascii=False, allow_nan=False, indent=2)
        if not self.multi:
            if self.count:
                raise ConfigError("the json writer holds one record; create it with multi=True")
            self.stream.write(text + "\n")
            return
        self.stream.write("[\n" if self.count == 0 else ",\n")
        self.stream.write(_indent(text, "  "))

    def _finish(self) -> None:
        if self.multi:
            self.stream.write("[]\n" if self.count == 0 else "\n]\n")


class TextWriter(Writer):
    """The record's text. With ``multi``: a ``==> path <==`` line before each."""

    extension = ".txt"

    def _write(self, record: Record) -> None:
        text = printable(record.text or "").strip("\n")
        if self.multi:
            path = printable(record.path, newlines=False)
            self.stream.write(("\n" if self.count else "") + f"==> {path} <==\n")
        self.stream.write(text + "\n")


class SrtWriter(Writer):
    """SubRip cues from the segments, numbered continuously over all records of the stream."""

    extension = ".srt"

    def __init__(self, stream: TextIO, *, multi: bool = False) -> None:
        super().__init__(stream, multi=multi)
        self.cues = 0

    def _write(self, record: Record) -> None:
        for seg in cue_segments(record):
            self.cues += 1
            times = f"{srt_time(seg.start)} --> {srt_time(seg.end)}"
            self.stream.write(f"{self.cues}\n{times}\n{_cue_text(seg.text)}\n\n")


class VttWriter(Writer):
    """WebVTT cues from the segments; with ``multi`` a ``NOTE`` line names each record's file."""

    extension = ".vtt"

    def __init__(self, stream: TextIO, *, multi: bool = False) -> None:
        super().__init__(stream, multi=multi)
        self.cues = 0

    def _write(self, record: Record) -> None:
        if self.count == 0:
            self.stream.write("WEBVTT\n\n")
        if self.multi:
            self.stream.write(f"NOTE {_cue_text(printable(record.path, newlines=False))}\n\n")
        for seg in cue_segments(record):
            self.cues += 1
            times = f"{vtt_time(seg.start)} --> {vtt_time(seg.end)}"
            self.stream.write(f"{self.cues}\n{times}\n{_vtt_escape(_cue_text(seg.text))}\n\n")

    def _finish(self) -> None:
        if self.count == 0:
            self.stream.write("WEBVTT\n\n")


class TsvWriter(Writer):
    """``start<TAB>end<TAB>text`` rows (integer ms) under a header; ``multi`` adds path."""

    extension = ".tsv"

    def _header(self) -> str:
        return ("path\t" if self.multi else "") + "start\tend\ttext\n"

    def _write(self, record: Record) -> None:
        if self.count == 0:
            self.stream.write(self._header())
        prefix = _tsv_field(record.path) + "\t" if self.multi else ""
        for seg in cue_segments(record):
            start, end = _ms(seg.start), _ms(seg.end)
            self.stream.write(f"{prefix}{start}\t{end}\t{_tsv_field(seg.text)}\n")

    def _finish(self) -> None:
        if self.count == 0:
            self.stream.write(self._header())


WRITERS: dict[str, type[Writer]] = {
    "text": TextWriter,
    "json": JsonWriter,
    "jsonl": JsonlWriter,
    "srt": SrtWriter,
    "vtt": VttWriter,
    "tsv": TsvWriter,
}


def get_writer(fmt: str) -> type[Writer]:
    """The writer class of ``fmt``; an unknown name raises :class:`ConfigError` listing formats."""
    try:
        return WRITERS[fmt]
    except KeyError:
        raise ConfigError(
            f"unknown output format {fmt!r}; choose from {', '.join(WRITERS)}"
        ) from None


def cue_segments(record: Record) -> list[Segment]:
    """The timed pieces a subtitle/tsv writer shows: segments with printable text, in order.

    A record with a text but no segments gives one piece over ``[0, duration]`` when the duration
    is known.
    """
    segments = record.segments
    if not segments and record.text and record.duration is not None:
        segments = [Segment(0.0, record.duration, record.text)]
    return [s for s in segments if printable(s.text).strip()]


def srt_time(seconds: float) -> str:
    """``HH:MM:SS,mmm`` (hours grow past 99 as needed)."""
    return _clock(seconds, ",")


def vtt_time(seconds: float) -> str:
    """``HH:MM:SS.mmm``."""
    return _clock(seconds, ".")


def _clock(seconds: float, mark: str) -> str:
    hours, rest = divmod(_ms(seconds), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{mark}{millis:03d}"


def _ms(seconds: float) -> int:
    return max(0, milliseconds(seconds))


def printable(text: str, *, newlines: bool = True) -> str:
    """``text`` without control characters; a line break (``\\r\\n``, ``\\r``) becomes ``\\n``, or a
    space with ``newlines=False``; tabs stay."""
    text = str(text).replace("\r\n", "\n").replace("\r", "\n")
    if not newlines:
        text = text.replace("\n", " ")
    return _CONTROL_RE.sub("", text)


def _cue_text(text: str) -> str:
    # a blank line would end the cue and "-->" would read as a timing line
    text = printable(text)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines).replace("-->", "->")


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _tsv_field(text: str) -> str:
    return re.sub(r"[\t\n]+", " ", printable(text)).strip()


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())
