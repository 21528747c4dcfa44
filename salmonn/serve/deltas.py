"""Token-by-token answers for ``stream: true``: the ids of a running generation become text deltas.

:class:`TokenFeed` carries the ids of one generation from the model worker's thread (where the
decoding step calls it) to the event loop that writes the request's server-sent events.
:class:`DeltaText` turns the growing ids into deltas whose concatenation is always a prefix of the
final content, so that the remainder sent at the end makes the deltas add up to that content
exactly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

_END = None


class DeltaText:
    """The text deltas of one answer.

    Args:
        decode_stable: the text of ids that more ids cannot change
            (:meth:`salmonn.model.llm.PromptTokenizer.decode_stable`).
        strip: the final content is the generation's text stripped of surrounding whitespace (an
            audio answer: the engine strips chunk answers); ``False``: the text as decoded.
    """

    def __init__(self, decode_stable: Callable[[list[int]], str], *, strip: bool) -> None:
        self.decode_stable = decode_stable
        self.strip = strip
        self.sent = ""
        self.stalled = False  # the text stopped growing from what was sent: wait for the end

    def update(self, ids: list[int]) -> str:
        """The new delta for the ids so far ("" when nothing new is certain yet)."""
        if self.stalled:
            return ""
        text = self.decode_stable(ids).rstrip("\ufffd")  # a character may still be incomplete
        if self.strip:
            text = text.strip()  # leading blanks go; trailing ones may be followed by more text
        if not text.startswith(self.sent):
            logger.warning("streamed text changed before the end; the rest comes as one delta")
            self.stalled = True
            return ""
        delta = text[len(self.sent) :]
        self.sent = text
        return delta

    def rest(self, content: str) -> str | None:
        """What completes the deltas sent into ``content``; ``None`` if they are not its prefix."""
        if not content.startswith(self.sent):
            return None
        return content[len(self.sent) :]


class TokenFeed:
    """One generation's ids, from the model worker's thread to an asyncio consumer.

    Call the feed (from any thread) with the ids so far, each call extending the previous ones;
    :meth:`end` (in the loop) marks the end; ``await next()`` gives, call by call, the ids as each
    call had them (a late consumer still sees every step, so a client gets one delta per token
    whatever the timing), then ``None`` after the end. :meth:`close` makes later calls no-ops (the
    client left).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[list[int] | None] = asyncio.Queue()
        self._pushed = 0  # ids handed to the loop (worker thread only)
        self._ids: list[int] = []  # ids received (loop only)
        self._closed = False
        self._ended = False

    def __call__(self, ids: list[int]) -> None:
        if self._closed:
            return
        new, self._pushed = list(ids[self._pushed :]), len(ids)
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, new)
        except RuntimeError:  # the loop has closed: the server is stopping
            self._closed = True

    def end(self) -> None:
        self._queue.put_nowait(_END)

    def close(self) -> None:
        self._closed = True

    async def next(self) -> list[int] | None:
        if self._ended:
            return None
        new = await self._queue.get()
        if new is _END:
            self._ended = True
            return None
        self._ids.extend(new)
        return list(self._ids)
