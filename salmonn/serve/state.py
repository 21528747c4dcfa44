"""The state one app shares between its routes: the service once loaded, admissions, metrics, shutdown.

The model loads in a background thread after the server starts listening (``/health`` answers 503
until then). A request is admitted (:meth:`ServerState.admit` gives its
:class:`~salmonn.serve.admission.Ticket`) only once its body is in, and its work runs in a thread of
its own (at most ``max_queue`` at once) while the event loop waits for the answer, for the client
to leave, or for the shutdown's grace to run out (:meth:`ServerState.run`); whichever comes first
decides the answer. On SIGTERM/SIGINT (:meth:`ServerState.begin_shutdown`) new requests get 503
``shutting_down``, and the requests still running ``graceful_shutdown_s`` later are cancelled and
answered 503 ``shutting_down`` too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .admission import DISCONNECTED, SHUTTING_DOWN, Admissions, Ticket
from .config import ServeConfig
from .errors import unavailable
from .metrics import Metrics
from .service import Answer, Service

logger = logging.getLogger(__name__)


class ServerState:
    """The app's shared state (``app.state.salmonn``)."""

    def __init__(
        self,
        config: ServeConfig,
        load_model: Callable[[], Any],
        on_ready: Callable[[], None] | None,
        on_error: Callable[[BaseException], None] | None,
    ) -> None:
        self.config = config
        self.load_model = load_model
        self.on_ready = on_ready
        self.on_error = on_error
        self.metrics = Metrics()
        self.admissions = Admissions(config.max_queue, on_change=self.metrics.in_flight.set)
        self.service: Service | None = None
        self.created = int(time.time())
        self.executor = ThreadPoolExecutor(config.max_queue, thread_name_prefix="salmonn-request")
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._grace: asyncio.Task[None] | None = None

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> None:
        """At startup, in the event loop: load the model in a thread."""
        self.loop = asyncio.get_running_loop()
        threading.Thread(target=self.load, name="salmonn-load", daemon=True).start()

    def load(self) -> None:
        try:
            model = self.load_model()
            self.service = Service(model, self.config, on_batch=self.metrics.observe_batch)
        except BaseException as exc:  # noqa: BLE001 - reported to the runner, which stops the server
            if self.on_error is not None:
                self.on_error(exc)  # the runner reports it (once)
            else:
                logger.error("the model could not be loaded: %s", exc)
            return
        if self.on_ready is not None:
            self.on_ready()

    def begin_shutdown(self) -> None:
        """The server was asked to stop (any thread): refuse new requests, and cancel those still
        running after ``graceful_shutdown_s``."""
        self.closing = True
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._start_grace)

    def _start_grace(self) -> None:
        if self._grace is None:
            self._grace = asyncio.ensure_future(self._cancel_after_grace())

    async def _cancel_after_grace(self) -> None:
        await asyncio.sleep(self.config.graceful_shutdown_s)
        tickets = self.admissions.tickets()
        if tickets:
            logger.warning(
                "%d request(s) still running after the %g s grace: answering 503 shutting_down",
                len(tickets),
                self.config.graceful_shutdown_s,
            )
        for ticket in tickets:
            self.cancel(ticket, SHUTTING_DOWN)

    def shutdown(self) -> None:
        """At the end (a thread): cancel what still runs, close the model worker, join the threads."""
        logger.debug("shutting down: closing the model worker")
        self.closing = True
        for ticket in self.admissions.tickets():
            self.cancel(ticket, SHUTTING_DOWN)
        if self.service is not None:
            self.service.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
        logger.debug("shut down")

    # -- requests --------------------------------------------------------------------------------
    def ready(self) -> Service:
        """The service; 503 while the model loads or the server stops."""
        if self.closing:
            raise unavailable("the server is shutting down", code="shutting_down")
        if self.service is None:
            raise unavailable("the model is still loading", code="model_loading")
        return self.service

    def admit(self) -> Ticket:
        """A queue slot for a request whose body is in (503 ``queue_full`` when none is free)."""
        return self.admissions.admit()

    def cancel(self, ticket: Ticket, reason: str) -> None:
        """Cancel a request's work (counted once in ``/metrics``)."""
        if ticket.reason is None and not ticket.released:
            ticket.cancel(reason)
            self.metrics.cancelled.labels(reason).inc()

    async def run(self, ticket: Ticket, work: Callable[[], Answer], receive: Any = None) -> Answer:
        """``work()`` in a request thread (it must release the ticket); the answer, or the
        ticket's error as soon as it is cancelled (by the client leaving: ``receive`` gives
        ``http.disconnect``, or by the shutdown)."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, work)
        future.add_done_callback(retrieve)
        waits: set[asyncio.Future[Any]] = {future, asyncio.ensure_future(ticket.wait_cancelled())}
        if receive is not None:
            waits.add(asyncio.ensure_future(self.watch_disconnect(ticket, receive)))
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits - {future}:
                task.cancel()
        error = ticket.error()
        if future in done and (error is None or future.exception() is None):
            return future.result()
        # cancelled: the ticket's reason decides the answer, even when the work, stopped by that
        # cancellation, finished first with its own error
        assert error is not None
        raise error

    async def watch_disconnect(self, ticket: Ticket, receive: Any) -> None:
        """Cancel the ticket when the client goes away (after the body was read)."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.cancel(ticket, DISCONNECTED)
                return


def retrieve(future: Any) -> None:
    """Mark a work future's outcome as seen (its error was answered otherwise: a cancelled request)."""
    if not future.cancelled():
        future.exception()
