"""Continuous batching, push-style: :class:`GenerationStream` over one model.

The stream holds the waiting items and one running :class:`~salmonn.model.generation.Decoder`; it
uses the model's public preparation step (:meth:`SalmonnModel.prepare`: encode the clips, embed the
prompts, left-pad) to let items join, and :meth:`SalmonnModel.answer` for the exact mode's one item
at a time. It never touches the model's modules itself.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Collection, Hashable
from typing import Any

import torch

from ..config import GenerationOptions
from ..errors import ConfigError
from .work import GenerationResult, TokenCallback, WorkItem

logger = logging.getLogger(__name__)


class GenerationStream:
    """Push-style continuous batching over one model: :meth:`put` work, :meth:`step` for answers.

    Up to ``batch_size`` items decode together; each :meth:`step` first lets waiting items join
    the running batch (encode, prefill) while there is room, then advances every running item by
    one token, and returns the items that finished: ``(key, GenerationResult)``, or
    ``(key, exception)`` for an item that could not be prepared. In exact mode a step answers one
    waiting item alone, from start to end (the original's loop).

    ``model.generate_stream`` wraps this for an iterable of work items.
    """

    def __init__(
        self,
        model: Any,
        options: GenerationOptions | None = None,
        *,
        batch_size: int = 8,
        exact: bool | None = None,
        **overrides: Any,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.options = (options or GenerationOptions()).with_overrides(**overrides)
        self.batch_size = batch_size
        self.exact = model.exact if exact is None else exact
        self._waiting: deque[WorkItem] = deque()
        self._decoder: Any = None
        self._callbacks: dict[Hashable, TokenCallback] = {}  # running items with on_tokens

    @property
    def waiting(self) -> int:
        """Items put and not yet decoding."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Items decoding now."""
        return self._decoder.running if self._decoder is not None else 0

    @property
    def running_keys(self) -> set[Hashable]:
        """Keys of the items decoding now."""
        return {item.key for item in self._decoder.items} if self._decoder is not None else set()

    @property
    def room(self) -> int:
        """Items that could join now (``batch_size`` minus the running ones)."""
        return self.batch_size - self.running

    @property
    def busy(self) -> bool:
        """Whether any item is waiting or running."""
        return bool(self._waiting) or self.running > 0

    def put(self, item: WorkItem) -> None:
        """Queue one item; it joins at a later :meth:`step`."""
        self._waiting.append(item)

    def reset(self) -> None:
        """Forget every waiting and running item (after a failure)."""
        self._waiting.clear()
        self._decoder = None
        self._callbacks.clear()

    def discard(self, keep: Callable[[WorkItem], bool]) -> None:
        """Drop the waiting items for which ``keep`` is false (running ones finish)."""
        self._waiting = deque(item for item in self._waiting if keep(item))

    def drop(self, keys: Collection[Hashable]) -> None:
        """Forget the items with these keys, waiting or running (a cancelled request): a running
        one leaves the batch now, unanswered."""
        self._waiting = deque(item for item in self._waiting if item.key not in keys)
        for key in keys:
            self._callbacks.pop(key, None)
        if self._decoder is not None:
            self._decoder.drop(keys)

    def step(self) -> list[tuple[Hashable, GenerationResult | Exception]]:
        """Join waiting items while there is room, then decode one token for every running item."""
        model = self.model
        if self.exact:
            if not self._waiting:
                return []
            item = self._waiting.popleft()
            return [(item.key, model.answer(item, self.options, exact=True))]
        finished: list[tuple[Hashable, GenerationResult | Exception]] = []
        decoder = self._decoder
        if decoder is None or (not decoder.running and not decoder.can_join):
            decoder = self._decoder = self._new_decoder()
        if self._waiting and decoder.can_join and self.room > 0:
            joining = [self._waiting.popleft() for _ in range(min(self.room, len(self._waiting)))]
            if self.options.num_beams == 1:
                self._callbacks.update(
                    (item.key, item.on_tokens) for item in joining if item.on_tokens is not None
                )
            prepared = model.prepare(joining)
            if prepared.keys:
                decoder.add(prepared.keys, prepared.inputs_embeds, prepared.attention_mask)
            failed = prepared.failed
            for key, _ in failed:
                self._callbacks.pop(key, None)
            finished += failed
        if decoder.running:
            with torch.inference_mode(), model.precision():
                done = decoder.step()
            if self._callbacks:
                self._report(done, decoder.partial_ids())
            finished += [(key, model.result(ids)) for key, ids in done]
        return finished

    def _report(
        self, done: list[tuple[Hashable, list[int]]], running: list[tuple[Hashable, list[int]]]
    ) -> None:
        """Hand every item with an ``on_tokens`` callback its ids after this step."""
        for key, ids in running:
            callback = self._callbacks.get(key)
            if callback is not None:
                self._call(key, callback, ids)
        for key, ids in done:
            callback = self._callbacks.pop(key, None)
            if callback is not None:
                self._call(key, callback, [int(i) for i in ids])

    def _call(self, key: Hashable, callback: TokenCallback, ids: list[int]) -> None:
        try:
            callback(ids)
        except Exception:  # noqa: BLE001 - a caller's callback must not stop the decode of others
            logger.warning(
                "on_tokens of item %r failed; it is no longer called", key, exc_info=True
            )
            self._callbacks.pop(key, None)

    def _new_decoder(self) -> Any:
        return self.model.new_decoder(self.options)
