"""The types the job layer shares: what a task asks (:class:`TaskSpec`), what the engine needs of a
model (:class:`EngineModel`, :class:`AutoBatchModel`), and its progress reports (:class:`ProgressEvent`,
built by a run's :class:`ProgressReporter` from its :class:`RunCounts`).

They live below the engine, the assembler and the summary pass, so that each of those imports them
downward and none reaches up into another.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..config import GenerationOptions
from ..errors import ConfigError
from .records import Record, Segment

JOIN_MODES = ("concat", "summary")


class EngineModel(Protocol):
    """What the engine needs of a model (``SalmonnModel`` or a test double).

    Two optional capabilities, each a protocol checked at run time: :class:`~salmonn.jobs.batcher.
    StreamingModel` (``open_stream``: continuous batching) and :class:`AutoBatchModel`
    (``auto_batch_size``: what ``batch_size="auto"`` asks).
    """

    identity: dict

    def generate(
        self, waves: Sequence[Any], prompts: Sequence[str], options: GenerationOptions
    ) -> list:
        """Answer one prompt per wave; each result has a ``text`` attribute."""

    def generate_text(self, prompts: Sequence[str], options: GenerationOptions) -> list:
        """Answer text-only prompts; each result has a ``text`` attribute."""

    def count_tokens(self, text: str) -> int:
        """LLM input length of the text-only prompt for ``text`` (the summary pass must fit)."""

    @property
    def context_length(self) -> int:
        """Positions the LLM can attend to (prompt plus answer)."""


@runtime_checkable
class AutoBatchModel(Protocol):
    """An optional capability of an :class:`EngineModel`: the batch size that fits its device.
    ``batch_size="auto"`` uses the default batch size with a model without it."""

    def auto_batch_size(self, options: GenerationOptions | None = None) -> int:
        """The largest batch whose working memory fits the device now."""


@dataclass(frozen=True)
class TaskSpec:
    """What to ask the model about every input.

    Attributes:
        task: task name written into each record (``"transcribe"``, ``"caption"``, ...).
        prompt: the rendered audio instruction (with or without ``<SpeechHere>``).
        join: ``"concat"`` joins the chunk answers in order; ``"summary"`` answers for the whole file with
            a text-only pass over the timestamped chunk answers (files of more than one chunk).
        summary_prompt: maps a file's chunk answers (segments with their times) to the text-only prompt
            of the summary pass (e.g. ``templates.render_summary``); required when ``join="summary"``.
        per_chunk: keep the chunk answers alone (no summary pass); the text lists them with their times.
        joiner: what separates chunk answers in a ``"concat"`` text (``""`` for Chinese or Japanese).
    """

    task: str
    prompt: str
    join: str = "concat"
    summary_prompt: Callable[[list[Segment]], str] | None = None
    per_chunk: bool = False
    joiner: str = " "

    def __post_init__(self) -> None:
        if self.join not in JOIN_MODES:
            raise ConfigError(f"join must be one of {JOIN_MODES}, got {self.join!r}")
        if self.join == "summary" and self.summary_prompt is None and not self.per_chunk:
            raise ConfigError(f"task {self.task!r}: join='summary' needs a summary_prompt")


@dataclass(frozen=True)
class ProgressEvent:
    """A progress report. ``kind``: ``"start"``, ``"batch"`` (a model batch finished), ``"record"``.

    Attributes:
        files_total: inputs to process in this run.
        files_done, files_failed: records yielded so far, and how many of them are errors.
        chunks_done: chunks through the model so far.
        audio_seconds: seconds of audio through the model so far.
        elapsed: wall seconds since the start of the run.
        record: the record just completed (``kind == "record"``), else ``None``.
    """

    kind: str
    files_total: int
    files_done: int = 0
    files_failed: int = 0
    chunks_done: int = 0
    audio_seconds: float = 0.0
    elapsed: float = 0.0
    record: Record | None = None

    @property
    def speed(self) -> float:
        """Audio seconds processed per wall second (0 before the first batch)."""
        return self.audio_seconds / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class RunCounts:
    """What a run has done so far (the counts of every :class:`ProgressEvent`)."""

    files_done: int = 0
    files_failed: int = 0
    chunks_done: int = 0
    audio_seconds: float = 0.0


class ProgressReporter:
    """A run's counts and its ``on_progress`` callback: the engine and the Ray driver count
    through it, and every report carries the counts at that moment."""

    def __init__(self, files_total: int, callback: Callable[[ProgressEvent], None] | None) -> None:
        self.files_total, self.callback = files_total, callback
        self.counts = RunCounts()
        self.t0 = time.perf_counter()

    def chunks_answered(self, chunks: int, audio_seconds: float) -> None:
        """Count chunks through the model (reported with the next event)."""
        self.counts.chunks_done += chunks
        self.counts.audio_seconds += audio_seconds

    def record_done(self, record: Record) -> None:
        """Count a finished record and report it."""
        self.counts.files_done += 1
        self.counts.files_failed += record.error is not None
        self.report("record", record)

    def report(self, kind: str, record: Record | None = None) -> None:
        """Send a :class:`ProgressEvent` of ``kind`` with the counts so far."""
        if self.callback is None:
            return
        self.callback(
            ProgressEvent(
                kind=kind,
                files_total=self.files_total,
                elapsed=time.perf_counter() - self.t0,
                record=record,
                **dataclasses.asdict(self.counts),
            )
        )
