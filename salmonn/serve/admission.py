"""What one admitted request holds: a queue slot, its temporary upload, and whether to stop its work.

:class:`Admissions` counts the slots (``--max-queue``); :meth:`Admissions.admit` gives a
:class:`Ticket`, the one object that owns a request's resources from admission to its answer. Its
:meth:`Ticket.release` frees the slot and deletes the upload, once, whoever calls it first (the
request's thread when its work ends, the route when the request fails before the work starts, the
stream when its client leaves); later calls do nothing. :meth:`Ticket.cancel` asks the model worker
to drop the request's work at its next decoding step (a client that left, a shutdown past its
grace), and the route to answer at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from .errors import APIError, queue_full
from .media import AudioFile

DISCONNECTED = "disconnected"
SHUTTING_DOWN = "shutting_down"


class Admissions:
    """The queue slots of one server: at most ``limit`` requests admitted at once."""

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self.on_change = on_change
        self._lock = threading.Lock()
        self._count = 0
        self._tickets: set[Ticket] = set()

    @property
    def count(self) -> int:
        """Requests admitted now."""
        return self._count

    @property
    def full(self) -> bool:
        return self._count >= self.limit

    def admit(self) -> Ticket:
        """A ticket holding one slot; 503 ``queue_full`` when every slot is taken."""
        with self._lock:
            if self._count >= self.limit:
                raise queue_full()
            self._count += 1
            ticket = Ticket(self)
            self._tickets.add(ticket)
            count = self._count
        if self.on_change is not None:
            self.on_change(count)
        return ticket

    def tickets(self) -> list[Ticket]:
        """The tickets not released yet."""
        with self._lock:
            return list(self._tickets)

    def _free(self, ticket: Ticket) -> None:
        with self._lock:
            self._tickets.discard(ticket)
            self._count -= 1
            count = self._count
        if self.on_change is not None:
            self.on_change(count)


class Ticket:
    """One admitted request: its queue slot, its upload (``None`` until it has one), its cancellation.

    ``cancelled`` (a :class:`threading.Event`) is what the model worker checks between decoding
    steps; :attr:`reason` says why (``"disconnected"``, ``"shutting_down"``).
    """

    def __init__(self, admissions: Admissions) -> None:
        self._admissions = admissions
        self._lock = threading.Lock()
        self._released = False
        self.upload: AudioFile | None = None
        self.cancelled = threading.Event()
        self.reason: str | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def released(self) -> bool:
        return self._released

    def hold(self, upload: AudioFile | None) -> None:
        """Make ``upload`` this request's: deleted on :meth:`release` (at once if already released)."""
        with self._lock:
            self.upload = upload
            released = self._released
        if released and upload is not None:
            upload.cleanup()

    def release(self) -> None:
        """Free the slot and delete the upload; only the first call does anything."""
        with self._lock:
            if self._released:
                return
            self._released = True
            upload, self.upload = self.upload, None
        try:
            if upload is not None:
                upload.cleanup()
        finally:
            self._admissions._free(self)

    def cancel(self, reason: str) -> None:
        """Stop this request's work at the model worker's next step (any thread); the first
        reason given is kept."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
            waiters = list(self._waiters)
        self.cancelled.set()
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop has closed
                pass

    async def wait_cancelled(self) -> str:
        """Wait in the event loop until :meth:`cancel`; returns the reason."""
        event = asyncio.Event()
        with self._lock:
            self._waiters.append((asyncio.get_running_loop(), event))
        if not self.cancelled.is_set():
            await event.wait()
        return self.reason or SHUTTING_DOWN

    def error(self) -> APIError | None:
        """The answer for a cancelled request (``None`` while it is not cancelled)."""
        from .errors import unavailable

        if self.reason == SHUTTING_DOWN:
            return unavailable("the server is shutting down", code="shutting_down")
        if self.reason is not None:
            return APIError(499, "the client closed the connection", code="client_closed")
        return None
