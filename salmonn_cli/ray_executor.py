"""``--ray``: run a task command's job on Ray workers instead of in this process.

The flags are read into :class:`RaySettings`; :func:`ray_executor` returns the executor that
:func:`salmonn_cli.run.run_task` calls in place of the local one, so inputs, ``--shard``, ``--resume``,
``-o`` and the writers stay exactly those of a local run. Nothing here imports ray (or torch) until
the job runs, so ``--help`` and usage errors stay instant.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import click

from salmonn.errors import ConfigError

RAY_KEYS = ("ray", "ray_workers", "ray_gpus_per_worker", "ray_cpus_per_worker")

RAY_OPTIONS = [
    click.option(
        "--ray",
        "ray",
        metavar="ADDRESS",
        help="Run on Ray: 'local' (start Ray here), 'auto' (this node's cluster) or "
        "'ray://HOST:PORT'. Inputs and model files must be on storage every node can read. "
        "[needs salmonn[ray]]",
    ),
    click.option(
        "--ray-workers",
        type=click.IntRange(min=1),
        metavar="N",
        help="Model replicas on Ray. [default: one per GPU of the cluster, 1 without GPUs]",
    ),
    click.option(
        "--ray-gpus-per-worker",
        type=click.FloatRange(min=0),
        metavar="G",
        help="GPUs per replica (0.5: two share a GPU). [default: 1 where the cluster has GPUs, else 0]",
    ),
    click.option(
        "--ray-cpus-per-worker",
        type=click.FloatRange(min=0),
        metavar="C",
        help="CPUs per replica, also its torch threads. [default: 1]",
    ),
]


def _usage(message: str) -> click.UsageError:
    return click.UsageError(message, ctx=click.get_current_context(silent=True))


@dataclass(frozen=True)
class RaySettings:
    """The ``--ray*`` flags, checked (see :class:`salmonn.cluster.runner.RayOptions`)."""

    address: str
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RaySettings | None:
        """``None`` without ``--ray``; a usage error for a bad address or a flag without ``--ray``."""
        from salmonn.cluster.runner import RayOptions

        if params.get("ray") is None:
            given = [f"--{k.replace('_', '-')}" for k in RAY_KEYS[1:] if params.get(k) is not None]
            if given:
                raise _usage(f"{', '.join(given)} needs --ray ADDRESS")
            return None
        settings = cls(
            address=params["ray"],
            workers=params.get("ray_workers"),
            gpus_per_worker=params.get("ray_gpus_per_worker"),
            cpus_per_worker=1.0
            if params.get("ray_cpus_per_worker") is None
            else params["ray_cpus_per_worker"],
        )
        try:
            RayOptions(
                address=settings.address,
                workers=settings.workers,
                gpus_per_worker=settings.gpus_per_worker,
                cpus_per_worker=settings.cpus_per_worker,
            )
        except ConfigError as err:
            raise _usage(f"--ray: {err}") from None
        return settings


def ray_executor(params: dict[str, Any]) -> Any:
    """Take the ``--ray*`` values out of ``params``; the Ray executor, or ``None`` without ``--ray``."""
    settings = RaySettings.from_params(params)
    for key in RAY_KEYS:
        params.pop(key, None)
    if settings is None:
        return None

    def execute(job: Any, reporter: Any) -> Iterator[Any]:
        return _start(settings, job, reporter)

    return execute


def _start(settings: RaySettings, job: Any, reporter: Any) -> Iterator[Any]:
    """Start the workers and wait for the first model replica; return the record iterator."""
    from salmonn.cluster.runner import RayUnavailableError, import_ray, run_task_on_ray

    if any(str(item.path) == "-" for item in job.items):
        raise _usage("--ray cannot read standard input ('-'): save the audio to a file")
    try:
        import_ray()
    except RayUnavailableError as err:
        raise _usage(str(err)) from None
    model = job.model.load_kwargs(quantization=True)
    if settings.address == "local":
        model = _resolved(model, job)
    run = run_task_on_ray(
        job.items,
        job.spec,
        model=model,
        address=settings.address,
        workers=settings.workers,
        gpus_per_worker=settings.gpus_per_worker,
        cpus_per_worker=settings.cpus_per_worker,
        generation=job.generation,
        chunking=job.chunking,
        batch_size=job.batch_size,
        on_progress=reporter,
    )
    bridge = _WarningsTo(reporter)
    reporter.status("starting Ray workers")
    try:
        run.start()
    except ConfigError as err:  # as a local load_model error: a usage error
        bridge.close()
        raise _usage(str(err)) from None
    except BaseException:
        bridge.close()
        raise
    return _Run(run, bridge)


def _resolved(model: dict[str, Any], job: Any) -> dict[str, Any]:
    """The model's component paths found (or downloaded) here, once, before the workers start:
    workers on this machine then share them instead of each fetching the same files."""
    from salmonn.constants import COMPONENTS
    from salmonn.hub.resolve import resolve_components

    from .model_errors import quiet_hub

    if not job.verbose:
        quiet_hub(bars=not job.quiet)
    found = resolve_components(model["preset"], *(model[c] for c in COMPONENTS))
    return {**model, **{c: str(getattr(found, c)) for c in COMPONENTS}}


class _WarningsTo(logging.Handler):
    """Shows the Ray driver's warnings (workers lost, files handed out again) through the reporter;
    its INFO and DEBUG lines (with ``-v``: "Ray worker ready ...") go on to the ``salmonn``
    logger's handlers, as every other module's."""

    LOGGERS = (
        "salmonn.cluster.runner",
        "salmonn.cluster.pool",
    )  # the modules that warn about the cluster

    def __init__(self, reporter: Any) -> None:
        super().__init__(logging.NOTSET)
        self.reporter = reporter
        self.loggers = [logging.getLogger(name) for name in self.LOGGERS]
        self.propagate = [logger.propagate for logger in self.loggers]
        for logger in self.loggers:
            logger.addHandler(self)
            logger.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.reporter.warn(record.getMessage())
            return
        for handler in logging.getLogger("salmonn").handlers:
            if record.levelno >= handler.level:
                handler.handle(record)

    def close(self) -> None:
        for logger, propagate in zip(self.loggers, self.propagate, strict=True):
            logger.removeHandler(self)
            logger.propagate = propagate
        super().close()


class _Run:
    """The records; ``close()`` also stops the workers and the warning bridge."""

    def __init__(self, run: Any, bridge: _WarningsTo) -> None:
        self.run, self.bridge = run, bridge

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self.run)

    def close(self) -> None:
        try:
            self.run.close()
        finally:
            self.bridge.close()
