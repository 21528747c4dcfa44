"""Record assembly: what the engine knows about each input while its chunks are in flight, and the
records built from it, released in input order.

A file is complete when every chunk has an answer, or when it has failed (decoding, the model, the
summary pass: the first error is kept). Its record is released once it is complete and every earlier
input has been released, so records come out in input order while later files are still running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .records import Record, Segment
from .templates import format_segments

if TYPE_CHECKING:  # pragma: no cover
    from .spec import TaskSpec


@dataclass
class FileState:
    """What the engine knows about one input while its chunks are in flight."""

    item: Any
    started: float
    spans: list[tuple[float, float]] = field(default_factory=list)
    texts: dict[int, str] = field(default_factory=dict)
    n_chunks: int | None = None
    error: str | None = None
    model_s: float = 0.0
    summary_s: float = 0.0
    summary: str | None = None
    finalized: bool = False

    @property
    def complete(self) -> bool:
        return self.error is not None or (
            self.n_chunks is not None and len(self.texts) == self.n_chunks
        )

    def fail(self, error: str) -> None:
        """Keep the first error of the file."""
        if self.error is None:
            self.error = error

    def summarized(self, text: str | None, seconds: float, error: str | None) -> None:
        """The whole-recording answer of the summary pass (or its error)."""
        self.summary, self.summary_s = text, seconds
        if error is not None:
            self.fail(error)

    def segments(self) -> list[Segment]:
        return [Segment(*self.spans[i], self.texts[i]) for i in sorted(self.texts)]


class Assembler:
    """Record assembly: the files of a run, their records built and released in input order.

    The owner of every :class:`FileState`: the engine tells it what happened (a chunk taken, an
    answer, a failure, the last chunk) and it keeps the completeness rules."""

    def __init__(self, items: Sequence[Any], spec: TaskSpec, options: dict, identity: dict) -> None:
        self.items, self.spec, self.options, self.identity = list(items), spec, options, identity
        self.files: list[FileState] = []
        self.next_emit = 0

    def file(self, index: int) -> FileState:
        """The state of input ``index`` (created, with every earlier one, when first seen)."""
        while len(self.files) <= index:
            self.files.append(FileState(self.items[len(self.files)], time.perf_counter()))
        return self.files[index]

    def add_chunk(self, index: int, start: float, end: float) -> int:
        """A chunk of input ``index`` spanning ``start``..``end`` s; returns its key (position)."""
        f = self.file(index)
        f.spans.append((start, end))
        return len(f.spans) - 1

    def last_chunk(self, index: int) -> None:
        """Input ``index`` has no more chunks: it is complete once each has an answer."""
        f = self.file(index)
        f.n_chunks = len(f.spans)

    def fail(self, index: int, error: str) -> None:
        """Input ``index`` failed (its first error is kept)."""
        self.file(index).fail(error)

    def failed(self, index: int) -> bool:
        """Whether input ``index`` has failed."""
        return self.file(index).error is not None

    def answered(self, answer: Any) -> float:
        """A chunk's answer (``file``, ``key``, ``text`` or ``error``, ``model_s``) to its input;
        returns the chunk's seconds of audio."""
        f = self.file(answer.file)
        f.model_s += answer.model_s
        if answer.error is not None:
            f.fail(answer.error)
        else:
            f.texts[answer.key] = answer.text
        start, end = f.spans[answer.key]
        return end - start

    def needing_summary(self) -> list[FileState]:
        """Complete files, not yet released, whose whole-recording answer is still to come."""
        if self.spec.join != "summary" or self.spec.per_chunk:
            return []
        return [
            f
            for f in self.files
            if f.complete and not f.finalized and f.error is None and len(f.texts) > 1
        ]

    def due(self) -> Iterator[Record]:
        """The records of complete files that every earlier input has preceded."""
        for f in self.files:
            if f.complete:
                f.finalized = True
        while self.next_emit < len(self.files) and self.files[self.next_emit].finalized:
            yield self.build(self.files[self.next_emit])
            self.next_emit += 1

    def build(self, f: FileState) -> Record:
        segments = [] if f.error else f.segments()
        text = None
        if f.error is None:
            if f.summary is not None:
                text = f.summary
            elif self.spec.join == "summary" and len(segments) > 1:
                text = format_segments(segments)
            else:
                text = self.spec.joiner.join(s.text.strip() for s in segments if s.text.strip())
        duration = max((end for _, end in f.spans), default=None)
        timings = {
            "model_s": round(f.model_s, 4),
            "summary_s": round(f.summary_s, 4),
            "total_s": round(time.perf_counter() - f.started, 4),
        }
        return Record(
            path=str(f.item.path),
            task=self.spec.task,
            prompt=self.spec.prompt,
            text=text,
            segments=segments,
            duration=None if f.error else duration,
            error=f.error,
            model=self.identity,
            options=self.options,
            timings=timings,
        )
