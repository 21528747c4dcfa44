"""Cut a decoded stream into model windows of at most 30 s, with timestamps, losing nothing.

The planner holds at most ``max + min_seconds`` of audio plus one decode block, so memory does not
depend on the input's length. Cut points: ``"quiet"`` takes the quietest 100 ms of the last
``search_seconds`` before the limit (latest among equals, so chunks stay long); ``"fixed"`` cuts at
the limit. Consecutive chunks share ``overlap_seconds``. A final piece shorter than ``min_seconds``
is avoided by moving the last quiet cut earlier (``short_tail="merge"``) or, when it cannot be
avoided, zero-padded as the original does (see docs/original-model.md, "Audio front end").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import ChunkingOptions
from ..constants import SAMPLE_RATE
from .decode import stream_audio

logger = logging.getLogger(__name__)

FRAME_SAMPLES = SAMPLE_RATE // 100  # 10 ms energy frames
SMOOTH_FRAMES = 10  # the quietest 100 ms is what counts, not one quiet 10 ms frame
QUIET_TOLERANCE = 1.1  # within 10 % (0.4 dB) of the quietest energy counts as equally quiet


@dataclass
class Chunk:
    """One model window of an input.

    Attributes:
        index: position in the input, from 0.
        start, end: seconds in the source; ``end`` is where the real audio stops (padding excluded).
        samples: float32 16 kHz mono, shape ``(n,)``, contiguous; ``n`` is ``(end - start) * 16000``
            or, when ``padded``, ``min_seconds * 16000`` (zeros after the audio).
        source: the input's path (``"-"`` for standard input).
        padded: the audio was shorter than ``min_seconds`` and zeros were appended.
        last: this is the final chunk of the input.
    """

    index: int
    start: float
    end: float
    samples: np.ndarray
    source: str
    padded: bool = False
    last: bool = False

    @property
    def duration(self) -> float:
        """Seconds of real audio (``end - start``)."""
        return self.end - self.start


def iter_chunks(
    source: str | os.PathLike[str], options: ChunkingOptions | None = None, **overrides: Any
) -> Generator[Chunk, None, None]:
    """Decode ``source`` (a path or ``"-"`` for standard input) and yield its chunks in order.

    ``overrides`` replace fields of ``options`` (see :class:`ChunkingOptions`), e.g.
    ``iter_chunks("talk.mp3", max_seconds=20, strategy="fixed")``. The chunks cover the whole input:
    the first starts at 0, each next one starts where the previous ended (minus the overlap), the
    last ends at the input's end. Raises :class:`~salmonn.errors.AudioError` (possibly after some
    chunks: corrupt data mid-file) and :class:`~salmonn.errors.ConfigError` for bad options.
    """
    opts = (options or ChunkingOptions()).with_overrides(**overrides)
    name = os.fspath(source)
    blocks = stream_audio(name, channel=opts.channel, strict=opts.strict_decode)
    yield from chunk_stream(blocks, opts, name)


def chunk_stream(
    blocks: Iterable[np.ndarray], options: ChunkingOptions, source: str
) -> Iterator[Chunk]:
    """Cut a stream of float32 16 kHz mono blocks (any sizes) into :class:`Chunk` objects."""
    planner = _Planner(options, source)
    blocks_iter = iter(blocks)
    buf = _Buffer()
    cur, index = 0, 0  # cur: absolute sample where the next chunk starts
    need = planner.max_n + planner.min_n  # look-ahead that decides whether the next cut is the last
    while True:
        while not buf.eof and buf.end < cur + need:
            buf.push(next(blocks_iter, None))
        if buf.eof and buf.end - cur <= planner.max_n:
            yield planner.final_chunk(buf.slice(cur, buf.end), cur, index)
            return
        cut = planner.choose_cut(buf, cur, buf.end if buf.eof else None)
        yield Chunk(index, cur / SAMPLE_RATE, cut / SAMPLE_RATE, buf.slice(cur, cut), source)
        index += 1
        cur = cut - planner.overlap_n
        buf.drop_before(cur)


class _Buffer:
    """Growable float32 window over the stream: ``data[:n]`` holds samples ``[start, start+n)``."""

    def __init__(self) -> None:
        self.data = np.zeros(0, np.float32)
        self.start = 0
        self.n = 0
        self.eof = False

    @property
    def end(self) -> int:
        return self.start + self.n

    def push(self, block: np.ndarray | None) -> None:
        if block is None:
            self.eof = True
            return
        if self.n + len(block) > len(self.data):
            grown = np.zeros(max(2 * len(self.data), self.n + len(block)), np.float32)
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n : self.n + len(block)] = block
        self.n += len(block)

    def slice(self, a: int, b: int) -> np.ndarray:
        """A contiguous copy of absolute samples ``[a, b)``."""
        return self.data[a - self.start : b - self.start].copy()

    def drop_before(self, a: int) -> None:
        keep = self.end - a
        self.data[:keep] = self.data[a - self.start : self.n]
        self.start, self.n = a, keep


class _Planner:
    """Cut-point rules, in samples."""

    def __init__(self, options: ChunkingOptions, source: str) -> None:
        self.opts = options
        self.source = source
        self.max_n = max(1, round(options.max_seconds * SAMPLE_RATE))
        self.min_n = round(options.min_seconds * SAMPLE_RATE)
        self.search_n = round(options.search_seconds * SAMPLE_RATE)
        self.overlap_n = round(options.overlap_seconds * SAMPLE_RATE)

    def choose_cut(self, buf: _Buffer, cur: int, end: int | None) -> int:
        """Sample where the chunk starting at ``cur`` ends; ``end``: the stream's end if known."""
        hi = cur + self.max_n
        lo = min(hi, max(hi - self.search_n, cur + self.overlap_n + 1))  # always move forward
        if self.opts.strategy == "fixed" or lo >= hi:
            return hi
        if end is not None and self.opts.short_tail == "merge":
            # The last piece will be [cut - overlap, end): keep it >= min_seconds if we can.
            tail_safe = end + self.overlap_n - self.min_n
            if lo <= tail_safe < hi:
                logger.info(
                    "%s: cut at %.2f s instead of later so the final piece is at least %.2f s",
                    self.source, tail_safe / SAMPLE_RATE, self.opts.min_seconds,
                )  # fmt: skip
                hi = tail_safe
        return lo + quietest_offset(buf.data[lo - buf.start : hi - buf.start])

    def final_chunk(self, samples: np.ndarray, cur: int, index: int) -> Chunk:
        end = (cur + len(samples)) / SAMPLE_RATE
        padded = len(samples) < self.min_n
        if padded:
            logger.info(
                "%s: final piece %.2f-%.2f s is shorter than %.2f s; zero-padded",
                self.source, cur / SAMPLE_RATE, end, self.opts.min_seconds,
            )  # fmt: skip
            samples = np.concatenate([samples, np.zeros(self.min_n - len(samples), np.float32)])
        return Chunk(index, cur / SAMPLE_RATE, end, samples, self.source, padded=padded, last=True)


def quietest_offset(region: np.ndarray) -> int:
    """Offset in ``region`` (float32 samples, shape ``(n,)``) of the middle of its quietest 100 ms.

    Energy is measured on 10 ms frames, summed over 100 ms; among places within ``QUIET_TOLERANCE``
    of the quietest (or near digital silence) the latest wins.
    A region shorter than one frame, or whose last 100 ms are among the quietest, gives
    ``len(region)``.
    """
    n_frames = len(region) // FRAME_SAMPLES
    if n_frames == 0:
        return len(region)
    frames = region[: n_frames * FRAME_SAMPLES].reshape(n_frames, FRAME_SAMPLES)  # (F, 160)
    energy = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / FRAME_SAMPLES  # (F,)
    width = min(SMOOTH_FRAMES, n_frames)
    summed = np.convolve(energy, np.ones(width), mode="valid")  # (F - width + 1,)
    quiet = summed <= summed.min() * QUIET_TOLERANCE + 1e-9  # near-equal places count as equal
    best = len(summed) - 1 - int(np.argmax(quiet[::-1]))  # the latest of them
    if best == len(summed) - 1:
        return len(region)  # the region ends quiet: cutting at the limit is cutting in the quiet
    return (best + width // 2) * FRAME_SAMPLES
