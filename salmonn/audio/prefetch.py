"""Decode the next inputs in a background thread, ahead of the model, through a bounded queue.

The queue holds at most ``max_chunks`` chunks (each at most 30 s = 1.9 MB of float32), so memory
stays bounded whatever the inputs. ffmpeg runs in its own process, so the decoding thread leaves the
GIL to the model while it waits on the pipe.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..config import ChunkingOptions
from ..errors import AudioError, ConfigError
from .chunking import Chunk, iter_chunks
from .inputs import InputItem

_POLL_S = 0.1
_CLOSE_TIMEOUT_S = 10.0


@dataclass
class FileChunk:
    """One item from :class:`Prefetcher`.

    Attributes:
        file_index: position of the input in ``sources``.
        source: the input's path, as given.
        chunk: the decoded chunk, ``None`` when ``error`` is set.
        error: why the input failed; sent once, with ``last=True``, possibly after some chunks of
            the same input (the consumer should drop that input's partial results).
        last: no more items for this input follow.
    """

    file_index: int
    source: str
    chunk: Chunk | None
    error: AudioError | None
    last: bool


class _End:
    pass


@dataclass
class _Fatal:
    exc: BaseException


class Prefetcher:
    """Iterate over the chunks of several inputs, decoded in a background thread.

    ``Prefetcher(["a.mp3", "b.wav"], options, max_chunks=16)`` yields :class:`FileChunk` items in
    input order: each input's chunks in order (``last=True`` on its final one) or, when it fails,
    one item with ``error`` set and ``last=True``. A bad input never stops the others; a missing
    ffmpeg (or an unexpected bug) is raised from the iteration. Decoding starts at construction, so
    it can overlap model loading. Use as a context manager, or call :meth:`close`, to stop the
    thread and ffmpeg early.

    ``waited_s`` counts the seconds the consumer spent waiting for decoded audio.
    """

    def __init__(
        self,
        sources: Sequence[str | os.PathLike[str] | InputItem],
        options: ChunkingOptions | None = None,
        *,
        max_chunks: int = 16,
        **overrides: Any,
    ) -> None:
        if max_chunks < 1:
            raise ConfigError(f"max_chunks must be >= 1, got {max_chunks}")
        self.sources = [s.path if isinstance(s, InputItem) else os.fspath(s) for s in sources]
        self.options = (options or ChunkingOptions()).with_overrides(**overrides)
        self.waited_s = 0.0
        self._queue: queue.Queue[FileChunk | _End | _Fatal] = queue.Queue(maxsize=max_chunks)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, name="salmonn-prefetch", daemon=True)
        self._thread.start()

    # -- producer (background thread) ------------------------------------------------------------
    def _put(self, item: FileChunk | _End | _Fatal) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for index, source in enumerate(self.sources):
                if self._stop.is_set() or not self._decode(index, source):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(_Fatal(exc))
        finally:
            self._put(_End())

    def _decode(self, index: int, source: str) -> bool:
        """Queue one input's chunks; False when stopped."""
        chunks = iter_chunks(source, self.options)
        try:
            for chunk in chunks:
                if not self._put(FileChunk(index, source, chunk, None, chunk.last)):
                    return False
        except AudioError as error:
            return self._put(FileChunk(index, source, None, error, True))
        finally:
            chunks.close()  # stops ffmpeg when we leave early
        return True

    # -- consumer --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[FileChunk]:
        return self

    def __next__(self) -> FileChunk:
        item = self.get()
        assert item is not None  # a get() without a timeout waits for the next item
        return item

    def get(self, timeout: float | None = None) -> FileChunk | None:
        """The next chunk, waiting at most ``timeout`` seconds for it (``0``: only one already
        decoded; ``None``: as long as it takes, as ``next()`` does); ``None`` when none came in
        time. Raises ``StopIteration`` after the last chunk, as ``next()`` does.

        Lets the consumer do other work (decode the chunks it holds) while the input is slow."""
        if self._finished:
            raise StopIteration
        began = time.perf_counter()
        try:
            if timeout is not None and timeout <= 0:
                item = self._queue.get_nowait()
            else:
                item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        finally:
            self.waited_s += time.perf_counter() - began
        if isinstance(item, FileChunk):
            return item
        self._finished = True
        self._thread.join(timeout=5)
        if isinstance(item, _Fatal):
            raise item.exc
        raise StopIteration

    def close(self) -> None:
        """Stop decoding (ffmpeg included) and wait for the thread; safe to call twice."""
        self._finished = True
        self._stop.set()
        # a read blocked on a silent stdin never ends: give up after a while (a daemon thread)
        deadline = time.monotonic() + _CLOSE_TIMEOUT_S
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=_POLL_S)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
