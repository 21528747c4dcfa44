"""Batching engine: inputs -> chunks -> batches across files -> model -> one :class:`Record` per input.

:func:`process` wires three units, each in its own module, and ``_Run`` feeds them the chunk stream:

* :class:`~salmonn.jobs.batcher.Batcher` takes the chunks of many files (decoded ahead by
  :class:`~salmonn.audio.prefetch.Prefetcher`) into batches of up to ``batch_size`` chunks and answers each
  batch with one ``model.generate`` call; a failing batch is retried chunk by chunk, so only the bad
  file gets the error. With a model that offers ``open_stream`` (a
  :class:`~salmonn.jobs.batcher.StreamingModel`, as ``SalmonnModel`` is) it is
  :class:`~salmonn.jobs.batcher.StreamBatcher` instead: continuous batching, where chunks join the running
  decode as soon as others finish.
* :class:`~salmonn.jobs.summary.SummaryPass`: with ``join="summary"`` (caption, ask, story, reason), a file of
  more than one chunk gets a final text-only pass of the same LLM over the timestamped chunk answers
  (``TaskSpec.summary_prompt``), unless ``per_chunk`` asks for the chunk answers alone.
* :class:`~salmonn.jobs.assembly.Assembler` assembles one record per input and releases it as soon as that
  file is complete and every earlier input has been released (input order). With ``join="concat"`` (transcribe, translate)
  the record's text is the chunk answers joined in order, and its segments carry the chunk times.

A file that cannot be decoded, or whose chunks make the model fail, gets an error record (one line). The
library never prints: progress goes to the ``on_progress`` callback. Resuming is the caller's filter,
:func:`pending_items`, applied before :func:`process`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence
from typing import Any

from ..config import (
    AUTO_BATCH_SIZE,
    DEFAULT_BATCH_SIZE,
    ChunkingOptions,
    GenerationOptions,
    check_batch_size,
    prefetch_depth,
)
from ..errors import ConfigError, error_line
from ..model.capacity import HeapTrimmer
from .assembly import Assembler
from .batcher import Answer, Batcher, StreamBatcher, make_batcher
from .records import Record, resume_key
from .spec import AutoBatchModel, EngineModel, ProgressEvent, ProgressReporter, TaskSpec
from .summary import SummaryPass

_STALL_S = 0.25
"""Seconds without a new chunk after which a continuous batcher decodes the chunks it holds
instead of waiting for a full batch: longer than the gaps of a fast input (which would otherwise
decode in smaller batches, each step costing about as much as a full one), short next to a person's
or a job's patience."""


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


def planned_resume_key(
    item: Any,
    spec: TaskSpec,
    *,
    chunking: ChunkingOptions | None = None,
    generation: GenerationOptions | None = None,
) -> str:
    """The resume key the record of ``item`` gets in a run with these settings (no model needed)."""
    options = record_options(generation or GenerationOptions(), chunking or ChunkingOptions(), spec)
    return resume_key(str(item.path), spec.task, spec.prompt, options)


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
        if planned_resume_key(i, spec, chunking=chunking, generation=generation) not in keys
    ]


def process(
    model: EngineModel,
    items: Sequence[Any],
    spec: TaskSpec,
    *,
    chunking: ChunkingOptions | None = None,
    generation: GenerationOptions | None = None,
    batch_size: int | str = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    chunks: Iterable[Any] | None = None,
) -> Generator[Record, None, None]:
    """Run ``spec`` over ``items`` and yield one :class:`Record` per input, in input order.

    Args:
        model: a loaded model (see :class:`EngineModel`).
        items: inputs (``InputItem`` or anything with a ``path``), in the order records should come out.
            To skip inputs already done, filter them first with :func:`pending_items`.
        spec: the task (prompt, how chunk answers are joined).
        chunking, generation: options (defaults: the dataclass defaults).
        batch_size: chunks decoding together, taken across files; ``"auto"``: the model's
            ``auto_batch_size(generation)`` (the largest that fits a CUDA device's memory).
        on_progress: called with a :class:`ProgressEvent` at the start, after each batch and each record.
        chunks: the ``FileChunk`` stream of exactly ``items`` (``file_index`` = position in
            ``items``), e.g. a :class:`~salmonn.audio.prefetch.Prefetcher` started early so that decoding
            overlaps the model load; default: a Prefetcher over ``items``, started here. A source
            with the Prefetcher's ``get(timeout)`` (``None`` when no chunk is ready in time) lets a
            continuous batcher decode while the input is slow; any other iterable is read as is.

    Closing the generator early (``--fail-fast``) closes ``chunks`` (the decoding threads stop).
    """
    batch_size = check_batch_size(batch_size)
    chunking = chunking or ChunkingOptions()
    generation = generation or GenerationOptions()
    if batch_size == AUTO_BATCH_SIZE:
        if isinstance(model, AutoBatchModel):
            batch_size = model.auto_batch_size(generation)
        else:
            batch_size = DEFAULT_BATCH_SIZE
    assert isinstance(batch_size, int)  # check_batch_size: an int unless "auto", resolved above
    progress = ProgressReporter(len(items), on_progress)
    progress.report("start")
    if not items:
        return
    if chunks is None:
        from ..audio.prefetch import Prefetcher

        paths = [str(i.path) for i in items]
        chunks = Prefetcher(paths, chunking, max_chunks=prefetch_depth(batch_size))
    records = Assembler(
        items, spec, record_options(generation, chunking, spec), dict(model.identity)
    )
    answer = _audio_answerer(model, spec.prompt, generation)
    batcher = make_batcher(model, spec.prompt, generation, batch_size, answer)
    summary = None
    if spec.summary_prompt is not None:
        summary = SummaryPass(model, spec.summary_prompt, generation)
    try:
        yield from _Run(records, batcher, summary, progress, batch_size).drive(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


class _Run:
    """One run's coordination: chunks go to the batcher, answers to their files, complete files
    through the summary pass, and records out in input order."""

    def __init__(
        self,
        records: Assembler,
        batcher: Batcher | StreamBatcher,
        summary: SummaryPass | None,
        progress: ProgressReporter,
        batch_size: int,
    ) -> None:
        self.records, self.batcher, self.summary = records, batcher, summary
        self.progress, self.batch_size = progress, batch_size
        self.trimmer = HeapTrimmer(batch_size)  # resident memory flat in the length of a run

    def drive(self, chunks: Iterable[Any]) -> Iterator[Record]:
        """Feed ``chunks`` to the batcher and yield the records as they are due.

        Chunks are taken until a batch is full, then decoded. With a continuous batcher and a
        chunk source that can wait a bounded time (a :class:`~salmonn.audio.prefetch.Prefetcher`'s
        ``get(timeout)``), the held chunks are also decoded, a step at a time, once no chunk
        came for ``_STALL_S`` and until one comes: while the input is slow (stdin, a network
        drive, a long ffmpeg start), a finished file's record comes out, and is written, without
        waiting for the chunks of the next files."""
        get = getattr(chunks, "get", None) if isinstance(self.batcher, StreamBatcher) else None
        if get is None:  # a plain iterable (the server's generator): blocking reads only
            for fc in chunks:
                yield from self._took(fc)
        else:
            batcher: StreamBatcher = self.batcher  # type: ignore[assignment]
            stalled = False
            while True:
                try:  # a short gap (a fast input) is waited out, so batches still fill
                    fc = get((0 if stalled else _STALL_S) if batcher.busy else None)
                except StopIteration:
                    break
                stalled = fc is None
                if stalled:  # the input is slow: decode what is held meanwhile
                    self.answered(batcher.step())
                    yield from self.finish()
                else:
                    yield from self._took(fc)
        self.flush()
        yield from self.finish()

    def _took(self, fc: Any) -> Iterator[Record]:
        """Take one chunk; decode when a batch is full, and yield the records then due."""
        self.take(fc)
        if self.batcher.full:
            self.flush(final=False)
            yield from self.finish()
        elif fc.last:
            yield from self.finish()

    def take(self, fc: Any) -> None:
        """Register one ``FileChunk``: its chunk goes to the batcher, an error fails its file."""
        records, index = self.records, fc.file_index
        if fc.error is not None:
            records.fail(index, getattr(fc.error, "reason", None) or error_line(fc.error))
            self.batcher.discard(index)
        elif fc.chunk is not None and not records.failed(index):
            key = records.add_chunk(index, float(fc.chunk.start), float(fc.chunk.end))
            self.batcher.add(index, key, fc.chunk.samples)
        if fc.last:
            records.last_chunk(index)

    def flush(self, final: bool = True) -> None:
        """Answer the queued chunks (``final``: all of them; else at least until more can be
        taken) and hand each answer to its file."""
        self.answered(self.batcher.flush(final=final))

    def answered(self, answers: list[Any]) -> None:
        """Hand each answer (a :class:`~salmonn.jobs.batcher.ChunkAnswer`) to its file."""
        if not answers:
            return
        self.trimmer.answered(len(answers))
        for answer in answers:
            seconds = self.records.answered(answer)
            self.progress.chunks_answered(1, seconds)
        self.progress.report("batch")

    def finish(self) -> Iterator[Record]:
        """Run the summary pass over the files that need it, then yield every record now due."""
        waiting = self.records.needing_summary()
        for i in range(0, len(waiting), self.batch_size):
            group = waiting[i : i + self.batch_size]
            assert self.summary is not None  # needing_summary() is empty without a summary_prompt
            answers = self.summary.run([f.segments() for f in group])
            for f, answer in zip(group, answers, strict=True):
                f.summarized(answer.text, answer.seconds, answer.error)
        for record in self.records.due():
            self.progress.record_done(record)
            yield record


def _audio_answerer(model: EngineModel, prompt: str, options: GenerationOptions) -> Answer:
    """The batcher's model call: the same prompt for every wave."""

    def answer(waves: Sequence[Any]) -> list[str]:
        return [r.text for r in model.generate(waves, [prompt] * len(waves), options)]

    return answer
