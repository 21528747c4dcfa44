"""Batches of audio chunks across files: chunks in, one answer per chunk out.

:class:`Batcher` collects chunks, from any number of files, until a batch is full, then answers them with
one model call. When that call fails, each chunk is answered alone, so that only the chunks that make
the model fail get an error; the other chunks of a file that failed there are not tried again.

The engine (:mod:`salmonn.engine`) is the only user; another batching policy (e.g. continuous batching)
can replace this class by offering the same ``add`` / ``full`` / ``discard`` / ``flush``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import error_line

logger = logging.getLogger(__name__)

Answer = Callable[[Sequence[Any]], list[str]]
"""Answers a batch of waves: one text per wave, in order (raises when the model fails)."""


@dataclass(frozen=True)
class ChunkAnswer:
    """The answer to one chunk.

    Attributes:
        file: the file the chunk belongs to (the key given to :meth:`Batcher.add`).
        key: the chunk's key within its file.
        text: the model's answer, or ``None`` when ``error`` is set.
        error: one line saying why the chunk has no answer, else ``None``.
        model_s: wall seconds of model time spent on this chunk (a batch's time is shared evenly).
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

    def flush(self) -> list[ChunkAnswer]:
        """Answer every queued chunk (one model call; chunk by chunk when that call fails)."""
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
        share = (time.perf_counter() - start) / len(batch)
        return [ChunkAnswer(p.file, p.key, text, None, share) for p, text in pairs]

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
