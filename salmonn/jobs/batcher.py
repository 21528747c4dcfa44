"""Batches of audio chunks across files: chunks in, one answer per chunk out.

:class:`Batcher` collects chunks, from any number of files, until a batch is full, then answers them with
one model call. When that call fails, each chunk is answered alone, so that only the chunks that make
the model fail get an error; the other chunks of a file that failed there are not tried again.

:class:`StreamBatcher` is the continuous-batching policy with the same ``add`` / ``full`` /
``discard`` / ``flush``: chunks join a running decode as soon as rows free up, so a batch never waits
for its longest answer. :func:`make_batcher` picks it for a :class:`StreamingModel` (a model that
offers ``open_stream``, as :class:`~salmonn.model.salmonn_model.SalmonnModel` does), else the plain :class:`Batcher`.

The engine (:mod:`salmonn.jobs.engine`) is the only user.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

from ..errors import error_line

logger = logging.getLogger(__name__)

Answer = Callable[[Sequence[Any]], list[str]]
"""Answers a batch of waves: one text per wave, in order (raises when the model fails)."""

_ChunkKey = tuple[Hashable, Hashable]
"""A chunk's key in :class:`StreamBatcher`'s stream: ``(file, key)``."""


class DecodeStream(Protocol):
    """What :class:`StreamBatcher` uses of a stream (:class:`~salmonn.model.stream.GenerationStream`)."""

    @property
    def waiting(self) -> int:
        """Items put and not yet decoding."""

    @property
    def busy(self) -> bool:
        """Whether any item is waiting or decoding."""

    @property
    def running_keys(self) -> set[Hashable]:
        """Keys of the items decoding now."""

    def put(self, item: Any) -> None:
        """Queue one :class:`~salmonn.model.work.WorkItem`."""

    def step(self) -> list[tuple[Hashable, Any]]:
        """Decode one step; the items that finished: ``(key, result with .text, or exception)``."""

    def discard(self, keep: Callable[[Any], bool]) -> None:
        """Drop the waiting items for which ``keep(item)`` is false."""

    def reset(self) -> None:
        """Forget every waiting and running item (after a failure)."""


@runtime_checkable
class StreamingModel(Protocol):
    """An optional capability of an engine model (:class:`salmonn.jobs.engine.EngineModel`): continuous
    batching. A model with ``open_stream`` gets the :class:`StreamBatcher`; one without it (a test
    double, a remote model) gets the static :class:`Batcher` over its ``generate``."""

    def open_stream(self, options: Any = None, *, batch_size: int = 8) -> DecodeStream:
        """A stream decoding up to ``batch_size`` items together with ``options``
        (:class:`~salmonn.config.GenerationOptions`)."""


@dataclass(frozen=True)
class ChunkAnswer:
    """The answer to one chunk.

    Attributes:
        file: the file the chunk belongs to (the key given to :meth:`Batcher.add`).
        key: the chunk's key within its file.
        text: the model's answer, or ``None`` when ``error`` is set.
        error: one line saying why the chunk has no answer, else ``None``.
        model_s: this chunk's share of the model time, so that summing ``model_s`` over files
            never counts a batch twice: :class:`Batcher` splits a batch's wall time over its chunks
            in proportion to their length in samples (audio seconds); :class:`StreamBatcher`
            splits each decoding step evenly over the chunks in it.
    """

    file: Hashable
    key: Hashable
    text: str | None
    error: str | None
    model_s: float


@dataclass(frozen=True)
class _Pending:
    file: Hashable
    key: Hashable
    wave: Any


class Batcher:
    """Collect chunks into batches of up to ``batch_size`` and answer each batch with ``answer``."""

    def __init__(self, answer: Answer, batch_size: int) -> None:
        self.answer, self.batch_size = answer, batch_size
        self._pending: list[_Pending] = []

    @property
    def full(self) -> bool:
        """Whether a batch is ready (``flush`` should run)."""
        return len(self._pending) >= self.batch_size

    def add(self, file: Hashable, key: Hashable, wave: Any) -> None:
        """Queue the chunk ``key`` of ``file`` (its samples in ``wave``)."""
        self._pending.append(_Pending(file, key, wave))

    def discard(self, file: Hashable) -> None:
        """Forget the queued chunks of ``file`` (it failed elsewhere)."""
        self._pending = [p for p in self._pending if p.file != file]

    def flush(self, final: bool = True) -> list[ChunkAnswer]:
        """Answer every queued chunk (one model call; chunk by chunk when that call fails).

        ``final`` is for the interface shared with :class:`StreamBatcher`: a batch is always
        answered whole."""
        del final
        batch, self._pending = self._pending, []
        if not batch:
            return []
        start = time.perf_counter()
        try:
            texts = self.answer([p.wave for p in batch])
            pairs = list(zip(batch, texts, strict=True))  # a wrong count fails the call too
        except Exception as exc:  # noqa: BLE001 - retried one by one below
            logger.warning(
                "batch of %d chunks failed (%s); retrying one by one", len(batch), error_line(exc)
            )
            return self._one_by_one(batch)
        elapsed = time.perf_counter() - start
        lengths = [_length(p.wave) for p, _ in pairs]
        total = sum(lengths)
        return [
            ChunkAnswer(p.file, p.key, text, None, elapsed * n / total)
            for (p, text), n in zip(pairs, lengths, strict=True)
        ]

    def _one_by_one(self, batch: list[_Pending]) -> list[ChunkAnswer]:
        answers: list[ChunkAnswer] = []
        failed: dict[Hashable, str] = {}
        for p in batch:
            if p.file in failed:  # its file already has an error: no second try
                answers.append(ChunkAnswer(p.file, p.key, None, failed[p.file], 0.0))
                continue
            start = time.perf_counter()
            try:
                (text,), error = self.answer([p.wave]), None
            except Exception as exc:  # noqa: BLE001 - becomes this chunk's error
                text, error = None, error_line(exc)
                failed[p.file] = error
            answers.append(ChunkAnswer(p.file, p.key, text, error, time.perf_counter() - start))
        return answers


class StreamBatcher:
    """Continuous batching: up to ``batch_size`` chunks decode together and finished ones are
    replaced at once by waiting chunks (``stream``: a :class:`~salmonn.model.stream.GenerationStream`).

    ``full`` is true when ``batch_size`` chunks wait; ``flush(final=False)`` then decodes until
    some of them could join (returning the answers finished meanwhile), and ``flush()`` at the end
    decodes until every chunk is answered. ``step()`` decodes one step: the engine's work while
    its chunk source has nothing ready (``busy``: whether there is any). Each chunk's answer is what it gets alone. When the
    model fails, the chunks in flight are answered one by one with ``answer``, as in
    :class:`Batcher`.
    """

    def __init__(self, stream: DecodeStream, prompt: str, answer: Answer, batch_size: int) -> None:
        self.stream, self.prompt = stream, prompt
        self.answer, self.batch_size = answer, batch_size
        self._inflight: dict[_ChunkKey, _Pending] = {}
        self._seconds: dict[_ChunkKey, float] = {}

    @property
    def full(self) -> bool:
        """Whether enough chunks wait that decoding should go on before more are added."""
        return self.stream.waiting >= self.batch_size

    def add(self, file: Hashable, key: Hashable, wave: Any) -> None:
        """Queue the chunk ``key`` of ``file``."""
        from ..model.work import WorkItem

        self._inflight[(file, key)] = _Pending(file, key, wave)
        self._seconds[(file, key)] = 0.0
        self.stream.put(WorkItem((file, key), self.prompt, wave))

    def discard(self, file: Hashable) -> None:
        """Forget the waiting chunks of ``file``; its chunks already decoding finish."""
        self.stream.discard(lambda item: item.key[0] != file)
        running = self.stream.running_keys
        for pair in [pair for pair in self._inflight if pair[0] == file]:
            if pair not in running:
                del self._inflight[pair]
                del self._seconds[pair]

    @property
    def busy(self) -> bool:
        """Whether any chunk waits or decodes (:meth:`step` has work)."""
        return self.stream.busy

    def flush(self, final: bool = True) -> list[ChunkAnswer]:
        """Decode; stop when room frees up for new chunks, or (``final``) when all are answered."""
        answers: list[ChunkAnswer] = []
        while self.stream.busy:
            answers += self.step()
            if not final and self.stream.waiting < self.batch_size:
                break
        return answers

    def step(self) -> list[ChunkAnswer]:
        """Decode one step (waiting chunks join first when there is room); the answers finished.

        The engine calls it while no new chunk is ready, so that the chunks it holds are answered
        without waiting for a full batch."""
        if not self.stream.busy:
            return []
        start = time.perf_counter()
        try:
            # the stream hands back the keys that add() gave it: (file, key) pairs
            finished = cast("list[tuple[_ChunkKey, Any]]", self.stream.step())
        except Exception as exc:  # noqa: BLE001 - the chunks in flight are retried alone
            logger.warning(
                "decoding %d chunks failed (%s); retrying one by one",
                len(self._inflight),
                error_line(exc),
            )
            return self._one_by_one()
        elapsed = time.perf_counter() - start
        running = cast("set[_ChunkKey]", self.stream.running_keys)
        sharing = set(running) | {pair for pair, _ in finished}
        for pair in sharing:
            self._seconds[pair] = self._seconds.get(pair, 0.0) + elapsed / len(sharing)
        answers: list[ChunkAnswer] = []
        for pair, result in finished:
            self._inflight.pop(pair, None)
            seconds = self._seconds.pop(pair, 0.0)
            if isinstance(result, Exception):
                answers.append(ChunkAnswer(pair[0], pair[1], None, error_line(result), seconds))
            else:
                answers.append(ChunkAnswer(pair[0], pair[1], result.text, None, seconds))
        return answers

    def _one_by_one(self) -> list[ChunkAnswer]:
        pending = list(self._inflight.values())
        self._inflight.clear()
        self._seconds.clear()
        self.stream.reset()
        return Batcher(self.answer, 1)._one_by_one(pending)


def make_batcher(
    model: Any, prompt: str, options: Any, batch_size: int, answer: Answer
) -> Batcher | StreamBatcher:
    """The continuous :class:`StreamBatcher` for a :class:`StreamingModel`, else a :class:`Batcher`
    calling ``answer``."""
    if isinstance(model, StreamingModel):
        stream = model.open_stream(options, batch_size=batch_size)
        return StreamBatcher(stream, prompt, answer, batch_size)
    return Batcher(answer, batch_size)


def _length(wave: Any) -> int:
    """Samples in ``wave`` (its last axis), 1 for anything without a length (even shares)."""
    shape = getattr(wave, "shape", None)
    if shape:
        return max(1, int(shape[-1]))
    try:
        return max(1, len(wave))
    except TypeError:
        return 1
