"""Continuous batching for the server's model worker, over :class:`~salmonn.model.stream.GenerationStream`.

One stream per decoding (equal ``GenerationOptions``); each call's clips or prompts are put into its
stream as work items keyed ``(call id, index)``, and every :meth:`StreamWorker.step` advances every
busy stream by one token, letting waiting items join as rows free up. A call is answered when all
its items are. Only the worker thread touches this object.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from ..constants import SAMPLE_RATE
from .batchinfo import BatchInfo
from .errors import RequestCancelled

logger = logging.getLogger("salmonn.serve")


@dataclass
class _Stream:
    stream: Any
    waiting: deque = field(default_factory=deque)  # (call, index) in the order put
    calls: dict[int, Any] = field(default_factory=dict)  # id(call) -> call with items in flight


class StreamWorker:
    """The streams of one model.

    Args:
        model: has ``open_stream(options, batch_size=...)``.
        batch_size: items decoding together in one stream.
        report: called with a :class:`~salmonn.serve.batchinfo.BatchInfo` per prefill.
        run_alone: answers one call with plain ``generate`` calls (after a stream failed).
    """

    def __init__(
        self,
        model: Any,
        batch_size: int,
        report: Callable[[Any], None],
        run_alone: Callable[[list[Any]], None],
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.report = report
        self.run_alone = run_alone
        self.streams: dict[Hashable, _Stream] = {}

    @property
    def busy(self) -> bool:
        return bool(self.streams)

    def put(self, calls: list[Any]) -> None:
        for call in calls:
            key = call.stream_key()
            holder = self.streams.get(key)
            if holder is None:
                stream = self.model.open_stream(call.options, batch_size=self.batch_size)
                holder = self.streams[key] = _Stream(stream)
            self._put(holder, call)

    def _put(self, holder: _Stream, call: Any) -> None:
        from ..model.work import WorkItem

        call.results = [None] * call.size
        call.remaining = call.size
        holder.calls[id(call)] = call
        for i, prompt in enumerate(call.prompts):
            wave = call.waves[i] if call.waves is not None else None
            on_tokens = call.on_tokens if call.size == 1 else None
            holder.stream.put(WorkItem((id(call), i), prompt, wave, on_tokens))
            holder.waiting.append((call, i))

    def step(self) -> None:
        """One token for every running item of every stream (waiting items join first); the items
        of cancelled calls leave first."""
        for key, holder in list(self.streams.items()):
            self._drop_cancelled(holder)
            if not holder.stream.busy:
                del self.streams[key]
                continue
            self._step(key, holder)

    def _drop_cancelled(self, holder: _Stream) -> None:
        cancelled = [call for call in holder.calls.values() if call.is_cancelled]
        if not cancelled:
            return
        ids = {id(call) for call in cancelled}
        holder.stream.drop({(id(call), i) for call in cancelled for i in range(call.size)})
        holder.waiting = deque((call, i) for call, i in holder.waiting if id(call) not in ids)
        for call in cancelled:
            del holder.calls[id(call)]
            call.finish(RequestCancelled("the request was cancelled"))
        logger.debug("dropped %d cancelled call(s) from a decode", len(cancelled))

    def _step(self, key: Hashable, holder: _Stream) -> None:
        before = holder.stream.waiting
        start = time.perf_counter()
        try:
            finished = holder.stream.step()
        except Exception as exc:  # noqa: BLE001 - its calls are answered alone: a bad one fails alone
            logger.warning("a decoding stream failed (%s); answering its calls one by one", exc)
            del self.streams[key]
            holder.stream.reset()
            for call in holder.calls.values():
                self.run_alone([call])
            return
        seconds = time.perf_counter() - start
        joined = [holder.waiting.popleft() for _ in range(before - holder.stream.waiting)]
        tokens = 0
        for (call_id, index), result in finished:
            call = holder.calls.get(call_id)
            if call is None:  # the call already failed
                continue
            if isinstance(result, Exception):
                del holder.calls[call_id]
                call.finish(result)
                continue
            call.results[index] = result
            tokens += len(result.token_ids)
            call.remaining -= 1
            if call.remaining == 0:
                del holder.calls[call_id]
                call.finish()
        kinds = {call.kind for call, _ in joined}
        self.report(
            BatchInfo(
                kind=kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "step"),
                items=len(joined),
                requests=len({call.request for call, _ in joined}),
                tokens=tokens,
                seconds=seconds,
                audio_seconds=sum(
                    len(call.waves[i]) / SAMPLE_RATE for call, i in joined if call.waves is not None
                ),
                running=holder.stream.running + len(finished),
            )
        )
        if not holder.stream.busy:
            del self.streams[key]
            for call in holder.calls.values():  # should not happen: every item has an answer
                call.finish(RuntimeError("the stream ended without answering this call"))

    def fail_all(self, error: BaseException) -> None:
        for holder in self.streams.values():
            for call in holder.calls.values():
                call.finish(error)
        self.streams.clear()
