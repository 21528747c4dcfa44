"""One model worker for many concurrent requests: their model calls batched together.

Every request runs the ordinary engine (:func:`salmonn.jobs.engine.process`) in its own thread, over a
:class:`RequestModel`: a stand-in for the model whose ``generate`` / ``generate_text`` hand the call
to the :class:`Batcher` and wait. Chunking, the whole-recording pass and record assembly stay in the
engine, so a request answered by the server is built exactly as the CLI builds it.

The batcher's single worker thread runs the calls of all requests:

* with a model that offers ``open_stream`` (``SalmonnModel``): continuous batching. Calls that decode
  alike share one :class:`~salmonn.model.stream.GenerationStream`; their clips and prompts join the running
  decode as rows free up (at most ``max_batch_size`` at once), so a new request never waits for the
  longest answer of the batch before it;
* otherwise: the oldest queued call and the queued calls that decode alike are merged into one
  ``generate`` call of at most ``max_batch_size`` clips.

When the worker is idle, the first call waits up to ``wait_s`` for calls of the other requests in
flight (a lone request never waits).

Why batching changes no answer: the model gives each item of a batch what it gives alone, in
greedy and beam search, and in sampling with a seed too (every item draws from its own generator
seeded with the request's ``seed``). So calls that decode alike share a model call or a stream,
sampled ones included; a sampled request without a seed is random wherever it runs.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import GenerationOptions
from ..constants import AUDIO_TOKENS, SAMPLE_RATE
from ..errors import SalmonnError
from .batchinfo import BatchInfo
from .errors import RequestCancelled

logger = logging.getLogger(__name__)

AUDIO, TEXT = "audio", "text"


class ServerClosing(SalmonnError):
    """The server stopped before this request's model call ran."""


@dataclass
class _Call:
    """One ``generate`` / ``generate_text`` call of one request, waiting for the worker."""

    kind: str
    prompts: list[str]
    options: GenerationOptions
    waves: list[Any] | None = None
    request: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    results: list[Any] | None = None
    error: BaseException | None = None
    remaining: int = 0  # items not answered yet (continuous batching)
    on_tokens: Callable[[list[int]], None] | None = None  # the ids so far (one-item calls)
    cancelled: threading.Event | None = None  # set: drop this call at the next step

    @property
    def is_cancelled(self) -> bool:
        return self.cancelled is not None and self.cancelled.is_set()

    def finish(self, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.error = self.error or error
            self.done.set()

    @property
    def size(self) -> int:
        return len(self.prompts)

    def key(self) -> tuple[str, GenerationOptions]:
        """Calls with equal keys may share a ``generate`` call."""
        return self.kind, self.options

    def stream_key(self) -> Any:
        """Calls with equal keys may share a stream: equal decoding (clips and text alike)."""
        return self.options


class Batcher:
    """The model worker: a queue of calls and one thread that runs them in merged batches.

    Args:
        model: the loaded model (``generate(waves, prompts, options)``,
            ``generate_text(prompts, options)``).
        max_batch_size: most clips (or text prompts) in one model call.
        wait_s: how long the oldest call may wait for calls of other requests in flight.
        on_batch: called with a :class:`BatchInfo` after each model call (from the worker thread).
    """

    def __init__(
        self,
        model: Any,
        *,
        max_batch_size: int = 8,
        wait_s: float = 0.01,
        on_batch: Callable[[BatchInfo], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.max_batch_size = max_batch_size
        self.wait_s = max(0.0, wait_s)
        self.on_batch = on_batch
        self._queue: deque[_Call] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._active: set[int] = set()
        self._ids = itertools.count(1)
        self._streams: Any = None
        if getattr(model, "open_stream", None) is not None:
            from .streams import StreamWorker

            self._streams = StreamWorker(model, max_batch_size, self._report, self._run)
        self._thread = threading.Thread(target=self._loop, name="salmonn-model", daemon=True)
        self._thread.start()

    # -- requests ----------------------------------------------------------------------------------
    def open_request(self) -> int:
        """Register a request in flight (the worker waits for its calls); returns its id."""
        with self._cond:
            if self._closed:
                raise ServerClosing("the server is shutting down")
            request = next(self._ids)
            self._active.add(request)
            return request

    def close_request(self, request: int) -> None:
        with self._cond:
            self._active.discard(request)
            self._cond.notify_all()

    def submit(
        self,
        request: int,
        kind: str,
        prompts: Sequence[str],
        options: GenerationOptions,
        waves: Sequence[Any] | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> list[Any]:
        """Queue one call and block until the worker has run it; returns its results in order.

        ``on_tokens`` (a call of one item): called from the worker with the item's ids so far after
        every decoding step, where the decoding allows it (see :attr:`streams_tokens`).
        ``cancelled``: once set, the call leaves the queue or its decode at the worker's next step
        and raises :class:`RequestCancelled`.
        """
        wave_list = None if waves is None else list(waves)
        call = _Call(kind, list(prompts), options, wave_list, request, on_tokens=on_tokens)
        call.cancelled = cancelled
        if call.is_cancelled:
            raise RequestCancelled("the request was cancelled")
        with self._cond:
            if self._closed:
                raise ServerClosing("the server is shutting down")
            self._queue.append(call)
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        assert call.results is not None
        return call.results

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking calls, fail those still queued, and wait for the call in progress."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for call in pending:
            call.error = ServerClosing("the server is shutting down")
            call.done.set()
        self._thread.join(timeout)

    @property
    def streams_tokens(self) -> bool:
        """Whether ``on_tokens`` can see answers grow (continuous batching outside exact mode):
        it does for calls with one beam, never with beam search (known only at the end)."""
        return self._streams is not None and not getattr(self.model, "exact", False)

    @property
    def queued(self) -> int:
        """Calls waiting for the worker."""
        with self._cond:
            return len(self._queue)

    # -- worker ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        streams = self._streams
        while True:
            with self._cond:
                while not self._queue and not (streams and streams.busy) and not self._closed:
                    self._cond.wait()
                if self._closed:
                    if streams is not None:
                        streams.fail_all(ServerClosing("the server is shutting down"))
                    return
                self._drop_cancelled()
                if not self._queue and not (streams and streams.busy):
                    continue
                if streams is None:
                    self._wait_for_company()
                    batch = self._take()
                else:
                    if not streams.busy:
                        self._wait_for_company()
                    batch = list(self._queue)
                    self._queue.clear()
            if streams is None:
                self._run(batch)
            else:
                streams.put(batch)
                streams.step()

    def _drop_cancelled(self) -> None:
        """Answer the queued calls of cancelled requests with :class:`RequestCancelled` (lock held)."""
        for call in [c for c in self._queue if c.is_cancelled]:
            self._queue.remove(call)
            call.finish(RequestCancelled("the request was cancelled"))

    def _report(self, info: BatchInfo) -> None:
        if self.on_batch is not None:
            self.on_batch(info)

    def _wait_for_company(self) -> None:
        """Wait (lock held) while other requests in flight may still add calls to the first one's batch."""
        first = self._queue[0]
        deadline = time.monotonic() + self.wait_s
        while not self._closed:
            same = [c for c in self._queue if c.key() == first.key()]
            waiting = {c.request for c in self._queue}
            if sum(c.size for c in same) >= self.max_batch_size or waiting >= self._active:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _take(self) -> list[_Call]:
        """The oldest call and the queued calls that decode alike and still fit (lock held)."""
        first = self._queue.popleft()
        batch = [first]
        size = first.size
        for call in list(self._queue):
            if call.key() == first.key():
                if size + call.size > self.max_batch_size:
                    continue
                self._queue.remove(call)
                batch.append(call)
                size += call.size
        return batch

    def _run(self, batch: list[_Call]) -> None:
        try:
            self._run_merged(batch)
        except Exception as exc:  # noqa: BLE001 - retried call by call: a bad request harms none other
            if len(batch) == 1:
                batch[0].error = exc
            else:
                logger.warning("a merged batch failed (%s); running its calls one by one", exc)
                for call in batch:
                    try:
                        self._run_merged([call])
                    except Exception as one:  # noqa: BLE001 - this request's own error
                        call.error = one
        finally:
            for call in batch:
                call.done.set()

    def _run_merged(self, batch: list[_Call]) -> None:
        first = batch[0]
        prompts = [p for call in batch for p in call.prompts]
        t = time.perf_counter()
        if first.kind == AUDIO:
            waves = [w for call in batch for w in call.waves or []]
            results = self.model.generate(waves, prompts, first.options)
            audio_s = sum(len(w) for w in waves) / SAMPLE_RATE
        else:
            results = self.model.generate_text(prompts, first.options)
            audio_s = 0.0
        if len(results) != len(prompts):
            raise RuntimeError(f"model returned {len(results)} results for {len(prompts)} inputs")
        seconds = time.perf_counter() - t
        logger.debug(
            "model call: %s x%d from %d request(s) in %.3f s",
            first.kind,
            len(prompts),
            len(batch),
            seconds,
        )
        start = 0
        for call in batch:
            call.results = list(results[start : start + call.size])
            start += call.size
        if self.on_batch is not None:
            tokens = sum(len(getattr(r, "token_ids", ())) for r in results)
            info = BatchInfo(first.kind, len(prompts), len(batch), tokens, seconds, audio_s)
            self.on_batch(info)


@dataclass
class Usage:
    """Tokens of one request: LLM input positions (88 per audio chunk included) and generated ids."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    last: Any = None  # the last GenerationResult: the final answer's (finish_reason)


class RequestModel:
    """What the engine sees for one request: the model, with every call going through the batcher.

    Counts the request's tokens in :attr:`usage`. Use as a context manager (registers the request
    with the batcher so the worker knows to wait for it).
    """

    def __init__(self, batcher: Batcher, model: Any) -> None:
        self._batcher = batcher
        self._model = model
        self.identity = dict(getattr(model, "identity", {}) or {})
        self.usage = Usage()
        # the last model-call error (the engine's record keeps only its line)
        self.failure: BaseException | None = None
        # given the ids so far of the calls of one item from now on (see Batcher.submit)
        self.on_tokens: Callable[[list[int]], None] | None = None
        # set by the server when the request is cancelled (see Batcher.submit)
        self.cancelled: threading.Event | None = None
        self._request = 0

    def __enter__(self) -> RequestModel:  # noqa: PYI034
        self._request = self._batcher.open_request()
        return self

    def __exit__(self, *exc: object) -> None:
        self._batcher.close_request(self._request)

    @property
    def context_length(self) -> int:
        # only the summary pass reads it, which needs a number: a model without one raises
        # AttributeError here (getattr(model, "context_length", None) still gives None)
        return self._model.context_length

    def count_tokens(self, text: str) -> int:
        return int(self._model.count_tokens(text))

    def generate(
        self, waves: Sequence[Any], prompts: Sequence[str], options: GenerationOptions
    ) -> list[Any]:
        results = self._submit(AUDIO, prompts, options, waves)
        for prompt in prompts:
            before, after = self._model.prompt_ids(prompt)
            self.usage.prompt_tokens += 1 + len(before) + AUDIO_TOKENS + len(after)
        self._count(results)
        return results

    def generate_text(self, prompts: Sequence[str], options: GenerationOptions) -> list[Any]:
        results = self._submit(TEXT, prompts, options, None)
        self.usage.prompt_tokens += sum(self.count_tokens(p) for p in prompts)
        self._count(results)
        return results

    def _submit(self, kind: str, prompts: Any, options: GenerationOptions, waves: Any) -> list[Any]:
        on_tokens = self.on_tokens if len(prompts) == 1 else None
        try:
            return self._batcher.submit(
                self._request, kind, prompts, options, waves, on_tokens, self.cancelled
            )
        except Exception as exc:
            self.failure = exc
            raise

    def _count(self, results: list[Any]) -> None:
        self.usage.completion_tokens += sum(len(r.token_ids) for r in results)
        if results:
            self.usage.last = results[-1]
