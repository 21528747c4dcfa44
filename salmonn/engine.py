"""Batching engine: inputs -> chunks -> batches across files -> model -> one :class:`Record` per input.

The engine feeds the chunks of many files (decoded ahead by :class:`~salmonn.prefetch.Prefetcher`) into
batches of up to ``batch_size`` chunks, calls ``model.generate`` once per batch and assembles one record per
input file, yielded as soon as that file is complete and every earlier input has been yielded (input order).

* ``join="concat"`` (transcribe, translate): the record's text is the chunk answers joined in order, and
  its segments carry the chunk times.
* ``join="summary"`` (caption, ask, story, reason): a file of more than one chunk gets a final text-only
  pass of the same LLM over the timestamped chunk answers (``TaskSpec.summary_prompt``), unless
  ``per_chunk`` asks for the chunk answers alone.

A file that cannot be decoded, or whose chunks make the model fail, gets an error record (one line); a
failing batch is retried item by item, so only the bad file gets the error. The library never prints:
progress goes to the ``on_progress`` callback.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import (
    DEFAULT_BATCH_SIZE,
    ChunkingOptions,
    GenerationOptions,
    check_batch_size,
    prefetch_depth,
)
from .errors import ConfigError
from .records import Record, Segment
from .records import resume_key as records_resume_key
from .templates import format_segments

logger = logging.getLogger("salmonn.engine")

JOIN_MODES = ("concat", "summary")
SUMMARY_MARGIN_TOKENS = 8  # room between the summary prompt plus answer and the LLM's context


class EngineModel(Protocol):
    """What the engine needs of a model (``SalmonnModel`` or a test double)."""

    identity: dict

    def generate(
        self, waves: Sequence[Any], prompts: Sequence[str], options: GenerationOptions
    ) -> list:
        """Answer one prompt per wave; each result has a ``text`` attribute."""

    def generate_text(self, prompts: Sequence[str], options: GenerationOptions) -> list:
        """Answer text-only prompts; each result has a ``text`` attribute."""


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
        files_total: inputs to process in this run (skipped inputs excluded).
        files_skipped: inputs skipped because their record was already present (resume).
        files_done, files_failed: records yielded so far, and how many of them are errors.
        chunks_done: chunks through the model so far.
        audio_seconds: seconds of audio through the model so far.
        elapsed: wall seconds since the start of the run.
        record: the record just completed (``kind == "record"``), else ``None``.
    """

    kind: str
    files_total: int
    files_skipped: int = 0
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


def select_shard(items: Sequence[Any], shard: int, count: int) -> list[Any]:
    """The ``shard``-th of ``count`` deterministic slices (1-based): items whose index % count == shard-1.

    ``items`` must already be in a deterministic order (``expand_inputs`` sorts them).
    """
    if count < 1 or not 1 <= shard <= count:
        raise ConfigError(f"shard must be K/N with 1 <= K <= N, got {shard}/{count}")
    return [item for i, item in enumerate(items) if i % count == shard - 1]


def record_options(
    generation: GenerationOptions, chunking: ChunkingOptions, spec: TaskSpec
) -> dict[str, Any]:
    """The settings written into each record (and part of its resume key)."""
    return {
        "generation": dataclasses.asdict(generation),
        "chunking": dataclasses.asdict(chunking),
        "join": spec.join,
        "per_chunk": spec.per_chunk,
    }


def one_line(exc: BaseException) -> str:
    """A one-line message for ``exc``: its last non-empty line, prefixed by the type when not ours."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    from .errors import SalmonnError

    if isinstance(exc, SalmonnError):
        return message or type(exc).__name__
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@dataclass
class _FileState:
    """What the engine knows about one input while its chunks are in flight."""

    index: int
    item: Any
    started: float
    spans: dict[int, tuple[float, float]] = field(default_factory=dict)
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

    def segments(self) -> list[Segment]:
        return [Segment(*self.spans[i], self.texts[i]) for i in sorted(self.texts)]


class _Run:
    """State of one engine run; :func:`process` drives it."""

    def __init__(self, model, items, spec, chunking, generation, batch_size, on_progress) -> None:
        self.model, self.items, self.spec = model, list(items), spec
        self.chunking, self.generation, self.batch_size = chunking, generation, batch_size
        self.on_progress = on_progress
        self.options = record_options(generation, chunking, spec)
        self.identity = dict(getattr(model, "identity", {}) or {})
        self.states: list[_FileState] = []
        self.pending: list[tuple[_FileState, Any]] = []
        self.next_emit = 0
        self.t0 = time.perf_counter()
        self.counts = {"files_done": 0, "files_failed": 0, "chunks_done": 0, "audio_seconds": 0.0}
        self.skipped = 0

    # -- progress --------------------------------------------------------------------------------
    def report(self, kind: str, record: Record | None = None) -> None:
        if self.on_progress is None:
            return
        self.on_progress(
            ProgressEvent(
                kind=kind,
                files_total=len(self.items),
                files_skipped=self.skipped,
                elapsed=time.perf_counter() - self.t0,
                record=record,
                **self.counts,
            )
        )

    # -- intake ----------------------------------------------------------------------------------
    def state_for(self, file_index: int) -> _FileState:
        while len(self.states) <= file_index:
            i = len(self.states)
            self.states.append(_FileState(i, self.items[i], time.perf_counter()))
        return self.states[file_index]

    def take(self, fc: Any) -> bool:
        """Register one FileChunk; return True when the pending batch is full."""
        state = self.state_for(fc.file_index)
        if fc.error is not None:
            state.error = getattr(fc.error, "reason", None) or one_line(fc.error)
            self.pending = [(s, c) for s, c in self.pending if s is not state]
            return False
        if fc.chunk is not None and state.error is None:
            pos = len(state.spans)
            state.spans[pos] = (float(fc.chunk.start), float(fc.chunk.end))
            self.pending.append((state, (pos, fc.chunk)))
        if fc.last:
            state.n_chunks = len(state.spans)
        return len(self.pending) >= self.batch_size

    # -- model -----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Run the pending chunks through the model (one batch; item by item if the batch fails)."""
        batch = [(s, pc) for s, pc in self.pending if s.error is None]
        self.pending = []
        if not batch:
            return
        waves = [chunk.samples for _, (_, chunk) in batch]
        t = time.perf_counter()
        try:
            texts = self._generate(waves)
            share = (time.perf_counter() - t) / len(batch)
            for (state, (pos, _)), text in zip(batch, texts):
                state.texts[pos] = text
                state.model_s += share
        except Exception as exc:  # noqa: BLE001 - retried one by one below
            logger.warning(
                "batch of %d chunks failed (%s); retrying one by one", len(batch), one_line(exc)
            )
            for state, (pos, chunk) in batch:
                self._retry_one(state, pos, chunk)
        self.counts["chunks_done"] += len(batch)
        self.counts["audio_seconds"] += sum(c.end - c.start for _, (_, c) in batch)
        self.report("batch")

    def _generate(self, waves: list[Any]) -> list[str]:
        results = self.model.generate(waves, [self.spec.prompt] * len(waves), self.generation)
        if len(results) != len(waves):
            raise RuntimeError(f"model returned {len(results)} results for {len(waves)} inputs")
        return [r.text for r in results]

    def _retry_one(self, state: _FileState, pos: int, chunk: Any) -> None:
        if state.error is not None:
            return
        t = time.perf_counter()
        try:
            state.texts[pos] = self._generate([chunk.samples])[0]
        except Exception as exc:  # noqa: BLE001 - becomes this file's error record
            state.error = one_line(exc)
        state.model_s += time.perf_counter() - t

    def needs_summary(self, state: _FileState) -> bool:
        return (
            self.spec.join == "summary"
            and not self.spec.per_chunk
            and state.error is None
            and len(state.texts) > 1
        )

    def summarize(self, states: list[_FileState]) -> None:
        """The text-only pass over the timestamped chunk answers, batched over ``states``."""
        if not states:
            return
        assert self.spec.summary_prompt is not None
        prompts = []
        for state in states:
            try:
                prompts.append(self.spec.summary_prompt(self.fit_context(state.segments())))
            except Exception as exc:  # noqa: BLE001 - becomes this file's error record
                state.error = f"summary pass: {one_line(exc)}"
                prompts.append(None)
        states = [s for s, p in zip(states, prompts) if p is not None]
        prompts = [p for p in prompts if p is not None]
        if not states:
            return
        t = time.perf_counter()
        try:
            results = self.model.generate_text(prompts, self.generation)
            if len(results) != len(prompts):
                raise RuntimeError(
                    f"model returned {len(results)} results for {len(prompts)} prompts"
                )
            share = (time.perf_counter() - t) / len(states)
            for state, result in zip(states, results):
                state.summary, state.summary_s = result.text, share
        except Exception:  # noqa: BLE001 - retried one by one
            for state, prompt in zip(states, prompts):
                t = time.perf_counter()
                try:
                    state.summary = self.model.generate_text([prompt], self.generation)[0].text
                except Exception as exc:  # noqa: BLE001 - becomes this file's error record
                    state.error = f"summary pass: {one_line(exc)}"
                state.summary_s = time.perf_counter() - t

    def fit_context(self, segments: list[Segment]) -> list[Segment]:
        """Shrink ``segments`` until the summary prompt fits the LLM's context.

        A long recording gives more chunk answers than one prompt holds (about 50 tokens per 30 s
        chunk; Vicuna v1.1 has 2048 positions). While the prompt is too long, consecutive segments
        are grouped into prompts that fit, each group is summarised by the same text-only pass, and
        the group answers (spanning the group's times) replace the group.
        """
        count = getattr(self.model, "count_tokens", None)
        limit = getattr(self.model, "context_length", None)
        if count is None or limit is None:
            return segments
        budget = int(limit) - self.generation.max_new_tokens - SUMMARY_MARGIN_TOKENS
        assert self.spec.summary_prompt is not None
        render = self.spec.summary_prompt
        while len(segments) > 1 and count(render(segments)) > budget:
            groups: list[list[Segment]] = [[]]
            for segment in segments:
                if groups[-1] and count(render([*groups[-1], segment])) > budget:
                    groups.append([])
                groups[-1].append(segment)
            if len(groups) == len(segments):
                groups = [segments[i : i + 2] for i in range(0, len(segments), 2)]
            results = self.model.generate_text([render(g) for g in groups], self.generation)
            segments = [
                Segment(group[0].start, group[-1].end, result.text)
                for group, result in zip(groups, results)
            ]
        return segments

    # -- output ----------------------------------------------------------------------------------
    def ready(self) -> Iterator[Record]:
        """Finish the complete files (summary pass) and yield, in input order, every record now due."""
        todo = [s for s in self.states if s.complete and not s.finalized and self.needs_summary(s)]
        for i in range(0, len(todo), self.batch_size):
            self.summarize(todo[i : i + self.batch_size])
        for state in self.states:
            if state.complete:
                state.finalized = True
        while self.next_emit < len(self.states) and self.states[self.next_emit].finalized:
            record = self.build(self.states[self.next_emit])
            self.next_emit += 1
            self.counts["files_done"] += 1
            self.counts["files_failed"] += record.error is not None
            self.report("record", record)
            yield record

    def build(self, state: _FileState) -> Record:
        segments = [] if state.error else state.segments()
        text = None
        if state.error is None:
            if state.summary is not None:
                text = state.summary
            elif self.spec.join == "summary" and len(segments) > 1:
                text = format_segments(segments)
            else:
                text = self.spec.joiner.join(s.text.strip() for s in segments if s.text.strip())
        duration = max((end for _, end in state.spans.values()), default=None)
        timings = {
            "model_s": round(state.model_s, 4),
            "summary_s": round(state.summary_s, 4),
            "total_s": round(time.perf_counter() - state.started, 4),
        }
        return Record(
            path=str(state.item.path),
            task=self.spec.task,
            prompt=self.spec.prompt,
            text=text,
            segments=segments,
            duration=None if state.error else duration,
            error=state.error,
            model=self.identity,
            options=self.options,
            timings=timings,
        )


def resume_key(
    item: Any,
    spec: TaskSpec,
    *,
    chunking: ChunkingOptions | None = None,
    generation: GenerationOptions | None = None,
) -> str:
    """The resume key the record of ``item`` gets in a run with these settings (no model needed)."""
    options = record_options(generation or GenerationOptions(), chunking or ChunkingOptions(), spec)
    return records_resume_key(str(item.path), spec.task, spec.prompt, options)


def pending_items(
    items: Sequence[Any],
    spec: TaskSpec,
    resume_keys: Collection[str],
    *,
    chunking: ChunkingOptions | None = None,
    generation: GenerationOptions | None = None,
) -> list[Any]:
    """``items`` without those whose resume key is in ``resume_keys`` (order kept)."""
    keys = set(resume_keys)
    if not keys:
        return list(items)
    return [
        i
        for i in items
        if resume_key(i, spec, chunking=chunking, generation=generation) not in keys
    ]


def process(
    model: EngineModel,
    items: Sequence[Any],
    spec: TaskSpec,
    *,
    chunking: ChunkingOptions | None = None,
    generation: GenerationOptions | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    resume_keys: Collection[str] = (),
    on_progress: Callable[[ProgressEvent], None] | None = None,
    chunks: Iterable[Any] | None = None,
    chunk_source: Callable[[list[str], ChunkingOptions, int], Iterable[Any]] | None = None,
) -> Iterator[Record]:
    """Run ``spec`` over ``items`` and yield one :class:`Record` per processed input, in input order.

    Args:
        model: a loaded model (``model.generate``, ``model.generate_text``, ``model.identity``).
        items: inputs (``InputItem`` or anything with a ``path``), in the order records should come out.
        spec: the task (prompt, how chunk answers are joined).
        chunking, generation: options (defaults: the dataclass defaults).
        batch_size: chunks per model call, taken across files.
        resume_keys: resume keys of records already written; inputs whose key is in it are skipped.
        on_progress: called with a :class:`ProgressEvent` at the start, after each batch and each record.
        chunks: the FileChunks of exactly the inputs to process, already started (a ``Prefetcher``
            built over ``pending_items(...)`` so decoding overlaps model loading); ``resume_keys`` must
            then be empty.
        chunk_source: ``(paths, chunking, max_chunks) -> FileChunk iterator`` replacing the Prefetcher
            (tests).

    Closing the generator early (``--fail-fast``) stops the decoding threads.
    """
    batch_size = check_batch_size(batch_size)
    chunking = chunking or ChunkingOptions()
    generation = generation or GenerationOptions()
    if chunks is not None and resume_keys:
        raise ConfigError("pass either prepared chunks or resume_keys, not both")
    todo = pending_items(items, spec, resume_keys, chunking=chunking, generation=generation)
    run = _Run(model, todo, spec, chunking, generation, batch_size, on_progress)
    run.skipped = len(items) - len(todo)
    run.report("start")
    if not todo:
        return
    source = chunks
    if source is None:
        source = (chunk_source or _prefetch)(
            [str(i.path) for i in todo], chunking, prefetch_depth(batch_size)
        )
    try:
        for fc in source:
            if run.take(fc):
                run.flush()
                yield from run.ready()
            elif fc.last:
                yield from run.ready()
        run.flush()
        yield from run.ready()
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def _prefetch(paths: list[str], chunking: ChunkingOptions, max_chunks: int) -> Iterable[Any]:
    from .prefetch import Prefetcher

    return Prefetcher(paths, chunking, max_chunks=max_chunks)
