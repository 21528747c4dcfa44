"""Result records: one :class:`Record` per input file, with a stable JSON form (schema version 1).

The JSON form is what ``--format jsonl`` writes, one object per line::

    {"path": ..., "task": ..., "prompt": ..., "text": ..., "segments": [{"start", "end", "text"}],
     "duration": ..., "error": ..., "model": {...}, "options": {...}, "timings": {...},
     "schema_version": 1}

Top-level keys always appear, in that order. Keys inside ``model``, ``options`` and ``timings``
are sorted. Times (segment bounds, ``duration``, every ``timings`` value) are seconds rounded to the
millisecond by :func:`milliseconds`, the rule every output format shares (JSON ``6.624`` is SRT
``00:00:06,624``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from ..errors import ConfigError

SCHEMA_VERSION = 1


@dataclass
class Segment:
    """One timed piece of an answer: ``start``/``end`` in seconds of the source."""

    start: float
    end: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": _round_time(self.start), "end": _round_time(self.end), "text": self.text}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Segment:
        try:
            return cls(float(d["start"]), float(d["end"]), str(d["text"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"bad segment {d!r}: needs numeric start, end and a text") from err


@dataclass
class Record:
    """The result for one input file.

    Attributes:
        path: the input as given (relative or absolute, as the CLI expanded it).
        task: the task or template name (``transcribe``, ``ask``, ``eval.keywords``, ...).
        prompt: the rendered instruction given to the model (long audio: the per-chunk instruction).
        text: the answer for the whole file; ``None`` when the file failed.
        segments: per-chunk answers with their times, in order (empty when the file failed).
        duration: seconds of audio, ``None`` when unknown.
        error: ``None``, or a one-line message saying why the file failed.
        model: model identity (preset, component paths, dtype, device).
        options: decoding (and chunking) options used.
        timings: seconds spent: ``model_s`` and ``summary_s`` are this file's shares of the model
            time (a batch's time split by audio seconds; they add up over files), ``total_s`` the
            wall time from its first chunk to its record (it overlaps other files of a batch).
        schema_version: version of this layout; 1.
    """

    path: str
    task: str
    prompt: str
    text: str | None = None
    segments: list[Segment] = field(default_factory=list)
    duration: float | None = None
    error: str | None = None
    model: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        """True when the file did not fail."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: fixed top-level key order, sorted nested keys, times rounded to ms."""
        return {
            "path": str(self.path),
            "task": self.task,
            "prompt": self.prompt,
            "text": self.text,
            "segments": [s.to_dict() for s in self.segments],
            "duration": None if self.duration is None else _round_time(self.duration),
            "error": None if self.error is None else join_lines(self.error),
            "model": _jsonable(self.model),
            "options": _jsonable(self.options),
            "timings": {k: _round_timing(v) for k, v in sorted(_jsonable(self.timings).items())},
            "schema_version": self.schema_version,
        }

    def to_json(self) -> str:
        """One line of JSON (no newline at the end), non-ASCII text kept as is."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        """Build a record from its JSON form. Unknown keys are ignored (later v1 additions)."""
        version = d.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"unsupported record schema_version {version!r} (this salmonn reads 1)"
            )
        missing = [k for k in ("path", "task", "prompt") if k not in d]
        if missing:
            raise ConfigError(f"record lacks {', '.join(missing)}")
        return cls(
            path=str(d["path"]),
            task=str(d["task"]),
            prompt=str(d["prompt"]),
            text=d.get("text"),
            segments=[Segment.from_dict(s) for s in d.get("segments") or []],
            duration=d.get("duration"),
            error=d.get("error"),
            model=dict(d.get("model") or {}),
            options=dict(d.get("options") or {}),
            timings=dict(d.get("timings") or {}),
            schema_version=version,
        )

    @classmethod
    def from_json(cls, line: str) -> Record:
        return cls.from_dict(json.loads(line))

    def resume_key(self) -> str:
        """Stable hash of (path, task, prompt, options); ``--resume`` skips inputs already done."""
        return resume_key(self.path, self.task, self.prompt, self.options)


def resume_key(path: str | PurePath, task: str, prompt: str, options: dict) -> str:
    """The key :meth:`Record.resume_key` gives, computed before a run (16 hex digits of SHA-256)."""
    payload = json.dumps(
        [str(path), task, prompt, _jsonable(options)],
        ensure_ascii=False,
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def iter_jsonl(lines: Iterable[str]) -> Iterator[Record]:
    """Records of a JSONL stream, for ``--resume``.

    Blank lines are skipped. A line that is not valid JSON is skipped only when it is the last one
    (a run killed mid-write); elsewhere it raises :class:`ConfigError` with its line number.
    """
    pending: tuple[int, str] | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if pending is not None:
            raise ConfigError(f"line {pending[0]}: not a JSON record: {pending[1][:60]!r}")
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            pending = (number, line)
            continue
        if not isinstance(data, dict):
            raise ConfigError(f"line {number}: not a JSON object")
        yield Record.from_dict(data)


def join_lines(message: str) -> str:
    """``message`` on one line: line breaks become ``" | "``, surrounding space is dropped."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    return " | ".join(parts) if parts else str(message).strip()


def milliseconds(seconds: float) -> int:
    """``seconds`` as whole milliseconds, halves rounded up: the one rounding rule of every format."""
    return math.floor(float(seconds) * 1000 + 0.5)


def _round_time(value: float) -> float | None:
    value = float(value)
    return milliseconds(value) / 1000 if math.isfinite(value) else None


def _round_timing(value: Any) -> Any:
    if isinstance(value, float):
        return _round_time(value)
    return value


def _jsonable(value: Any) -> Any:
    """``value`` made ``json.dumps``-safe: dataclasses and paths converted, keys sorted."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_jsonable(v) for v in items]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
