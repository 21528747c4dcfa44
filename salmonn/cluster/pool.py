"""The pool behind :func:`salmonn.run_task_on_ray`: model-replica actors and the driver's hand-out queue.

:class:`SalmonnWorker` is the Ray actor: it loads the model once and runs the engine
(:func:`salmonn.jobs.engine.process`) over the files it is handed, streaming back one record per file.
:class:`Dispatcher` runs on the driver: it hands out files in input order, a few per call, yields
records as they arrive, and hands the unfinished files of a dead worker to another one (why it works
this way rather than with Ray Data or Ray's own retries: see :mod:`salmonn.cluster.runner`).

This module never imports ray: the driver passes the ``ray`` module in.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from ..config import ChunkingOptions, GenerationOptions
from ..errors import SalmonnError, error_line
from ..jobs.records import Record
from ..jobs.spec import ProgressReporter

logger = logging.getLogger(__name__)

_WAIT_S = 1.0  # ray.wait timeout: how often the driver loop wakes up with nothing ready
_RESTART_POLL_S = 0.5  # how often a restarting worker is asked whether it is back


# -- worker -------------------------------------------------------------------------------------


class SalmonnWorker:
    """One model replica (a Ray actor): loads the model once, runs the engine over given files."""

    def __init__(self, model_args: Mapping[str, Any]) -> None:
        self.model: Any = None
        self.load_error: tuple[str, str] | None = None
        try:
            _quiet_progress_bars()
            from ..hub.load import load_model

            self.model = load_model(**model_args)
        except Exception as exc:  # noqa: BLE001 - reported by ready(), the driver raises it
            self.load_error = (type(exc).__name__, errors.error_line(exc))

    def ready(self) -> dict[str, Any]:
        """Where this replica runs and the model's identity (or why the model did not load)."""
        return {
            "node": socket.gethostname(),
            "pid": os.getpid(),
            "identity": None if self.model is None else dict(self.model.identity),
            "load_error": self.load_error,
        }

    def run(
        self,
        batch: Sequence[tuple[int, Any]],
        spec: Any,
        chunking: ChunkingOptions,
        generation: GenerationOptions,
        batch_size: int | str,
    ) -> Iterator[tuple[int, Record]]:
        """Yield ``(index, record)`` for each ``(index, InputItem)`` of ``batch``, in its order."""
        from ..jobs.engine import process

        items = [item for _, item in batch]
        records = process(
            self.model, items, spec, chunking=chunking, generation=generation, batch_size=batch_size
        )
        for (index, item), record in zip(batch, records, strict=True):  # one record per input
            if record.error is not None and not os.path.exists(item.path):
                record.error = (
                    f"{record.error} (on Ray node {socket.gethostname()}: inputs must be on "
                    "storage that every node can read)"
                )
            yield index, record

    def run_all(self, *args: Any) -> list[tuple[int, Record]]:
        """:meth:`run` as one list (for Ray Client, which has no streaming calls)."""
        return list(self.run(*args))


def _quiet_progress_bars() -> None:
    """No download or weight-loading bars from a worker: Ray forwards its output line by line."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()


# -- driver -------------------------------------------------------------------------------------


@dataclass
class PendingInput:
    index: int
    item: Any  # the InputItem as the caller gave it (its path goes into the record)
    remote: Any  # the same item with an absolute path, for the worker
    attempts: int = 0


@dataclass
class _Call:
    actor: Any
    inputs: list[PendingInput]
    received: set[int] = field(default_factory=set)


class Dispatcher:
    """Hands files to the workers in input order and yields their records as they arrive."""

    def __init__(
        self, ray: Any, actors: list[Any], inputs: list[PendingInput], job: dict[str, Any]
    ):
        self.ray, self.job = ray, job
        self.pending: collections.deque[PendingInput] = collections.deque(inputs)
        self.total = len(inputs)
        self.running: dict[Any, _Call] = {}  # streaming generator -> its call
        self.starting: dict[Any, Any] = {actor.ready.remote(): actor for actor in actors}
        self.idle: list[Any] = []
        self.restarting: list[tuple[float, Any]] = []  # (when to ask again, actor)
        self.done: set[int] = set()
        self.identity: dict[str, Any] = {}
        self.progress = ProgressReporter(self.total, job["on_progress"])

    def wait_for_a_worker(self) -> None:
        """Block until one worker has loaded the model (raises the load error if it failed)."""
        while not self.idle:
            self.poll_restarting()
            if not self.starting and not self.restarting:
                raise SalmonnError("no Ray worker could start")
            if not self.starting:
                time.sleep(_RESTART_POLL_S)
                continue
            ready, _ = self.ray.wait(list(self.starting), num_returns=1, timeout=_WAIT_S)
            for ref in ready:
                self.started(ref)

    def run(self) -> Iterator[Record]:
        self.progress.report("start")
        while len(self.done) < self.total:
            self.dispatch()
            self.poll_restarting()
            if not self.running and not self.starting and not self.restarting:
                left = self.total - len(self.done)
                raise SalmonnError(f"every Ray worker is gone; {left} inputs were not processed")
            waiting = [*self.running, *self.starting]
            if not waiting:
                time.sleep(_RESTART_POLL_S)
                continue
            ready, _ = self.ray.wait(waiting, num_returns=1, timeout=_WAIT_S)
            for ref in ready:
                if ref in self.starting:
                    self.started(ref)
                else:
                    yield from self.receive(ref)

    def piece(self) -> int:
        """Most files for the next call: ``files_per_call``; with ``share`` (batch size "auto"),
        at most an even share of the files left among the workers, so that a small job keeps
        every worker busy instead of filling the first one that is ready."""
        limit = int(self.job["files_per_call"])
        if self.job.get("share"):
            workers = len(self.idle) + len(self.running) + len(self.starting) + len(self.restarting)
            limit = min(limit, -(-len(self.pending) // max(1, workers)))
        return max(1, limit)

    def dispatch(self) -> None:
        while self.idle and self.pending:
            limit = self.piece()
            actor = self.idle.pop(0)
            first = self.pending.popleft()
            batch = [first]
            if first.attempts == 0:  # a file whose worker died before goes alone
                while len(batch) < limit and self.pending and self.pending[0].attempts == 0:
                    batch.append(self.pending.popleft())
            args = (
                [(i.index, i.remote) for i in batch],
                self.job["spec_ref"],
                self.job["chunking"],
                self.job["generation"],
                self.job["batch_size"],
            )
            if self.job["streaming"]:
                call = actor.run.options(num_returns="streaming").remote(*args)
            else:  # Ray Client has no streaming calls: the call's records come back together
                call = actor.run_all.remote(*args)
            self.running[call] = _Call(actor, batch)

    def started(self, ref: Any) -> None:
        actor = self.starting.pop(ref)
        try:
            info = self.ray.get(ref)
        except self.ray.exceptions.ActorUnavailableError:  # Ray is restarting it: ask again
            self.restarting.append((time.monotonic() + _RESTART_POLL_S, actor))
            return
        except self.ray.exceptions.RayActorError as exc:
            logger.warning("a Ray worker is gone for good: %s", error_line(exc, lead=1))
            return
        if info["load_error"] is not None:
            if not self.identity:  # no worker ever loaded the model: a setup error, as locally
                raise _load_error(*info["load_error"])
            logger.warning(
                "a restarted Ray worker could not load the model: %s", info["load_error"][1]
            )
            return
        self.identity = self.identity or info["identity"]
        logger.info("Ray worker ready on %s (pid %s)", info["node"], info["pid"])
        self.idle.append(actor)

    def poll_restarting(self) -> None:
        now = time.monotonic()
        due = [actor for when, actor in self.restarting if when <= now]
        self.restarting = [(when, actor) for when, actor in self.restarting if when > now]
        for actor in due:
            self.starting[actor.ready.remote()] = actor

    def receive(self, generator: Any) -> Iterator[Record]:
        call = self.running[generator]
        try:
            if self.job["streaming"]:
                results = [self.ray.get(next(generator))]
            else:
                results = self.ray.get(generator)
                del self.running[generator]
                self.idle.append(call.actor)
        except StopIteration:
            del self.running[generator]
            self.idle.append(call.actor)
            yield from self.lost(call, "the Ray worker returned too few records")
            return
        except self.ray.exceptions.RayActorError as exc:
            del self.running[generator]
            # back into service once Ray has restarted it (ready() fails if it cannot)
            self.starting[call.actor.ready.remote()] = call.actor
            yield from self.lost(call, f"the Ray worker died ({type(exc).__name__})")
            return
        except self.ray.exceptions.RayTaskError as exc:  # a bug, as a local run would raise it
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from exc
            raise
        for index, record in results:
            call.received.add(index)
            if index in self.done:  # never expected; the driver must not write a record twice
                logger.warning("dropped a second record for input %d", index)
                continue
            original = next(i for i in call.inputs if i.index == index)
            yield self.emit(index, dataclasses.replace(record, path=str(original.item.path)))
        if not self.job["streaming"]:
            yield from self.lost(call, "the Ray worker returned too few records")

    def lost(self, call: _Call, why: str) -> Iterator[Record]:
        """Hand the call's unfinished files out again, or give up on those tried too often."""
        unfinished = [i for i in call.inputs if i.index not in call.received]
        if not unfinished:
            return
        retry = []
        for item in unfinished:
            item.attempts += 1
            if item.attempts >= self.job["max_attempts"]:
                yield self.emit(item.index, self.gave_up(item, why))
            else:
                retry.append(item)
        if retry:
            logger.warning("%d inputs unfinished: %s; handing them out again", len(retry), why)
            self.pending.extendleft(reversed(retry))

    def gave_up(self, item: PendingInput, why: str) -> Record:
        from ..jobs.engine import record_options

        spec = self.job["spec"]
        return Record(
            path=str(item.item.path),
            task=spec.task,
            prompt=spec.prompt,
            error=f"not processed after {item.attempts} attempts: {why}",
            model=self.identity,
            options=record_options(self.job["generation"], self.job["chunking"], spec),
        )

    def emit(self, index: int, record: Record) -> Record:
        self.done.add(index)
        self.progress.chunks_answered(len(record.segments), record.duration or 0.0)
        self.progress.record_done(record)
        return record


def _load_error(name: str, message: str) -> SalmonnError:
    """The worker's model-load failure as the same salmonn error a local load raises."""
    cls = getattr(errors, name, None)
    if (
        isinstance(cls, type)
        and issubclass(cls, SalmonnError)
        and not issubclass(cls, errors.AudioError)
    ):
        return cls(f"Ray worker: {message}")
    return SalmonnError(f"Ray worker could not load the model: {message}")
