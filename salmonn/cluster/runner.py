"""Run a task on a Ray cluster: model replicas on the workers, records streamed back to one driver.

::

    import salmonn

    for record in salmonn.run_task_on_ray(
        ["/nfs/audio"], "transcribe", model={"preset": "salmonn-13b"}, address="auto"
    ):
        print(record.path, record.text)

Each worker is a Ray actor holding one model replica (loaded once). It runs the ordinary engine
(:func:`salmonn.jobs.engine.process`: decoding, chunking, batching across its files, the whole-recording
pass) over the files the driver hands it, and streams back one record per file. The driver expands
and orders the inputs as a local run does, hands them out in that order, and yields the records as
files finish (completion order, not input order), so a caller that writes them at once loses
nothing when it is killed.

Why Ray actors with a driver-side queue rather than Ray Data's ``map_batches`` over an actor pool:

* per-file streaming: an actor method that is a generator returns each record as soon as the engine
  yields it; Ray Data hands results back per block, after the whole batch of files is done;
* exact retries: the driver knows which files of a call it has received, so when a worker dies only
  the others are handed out again. Ray's own retry of a call (or of a Ray Data block) replays the
  whole call and would give some records twice;
* one writer: records travel to the driver, which is the only process that writes output;
* a file that keeps killing its worker (out of memory, a crash in a codec) is retried alone and
  given up after ``max_attempts`` with an error record, instead of taking its batch-mates with it.

Through Ray Client (``ray://``), which has no streaming calls, a call's records come back together
when the call ends; everything else is the same. So the extra is ``ray[client]``; Ray Data is not
needed.

Inputs and model files must be paths that every node can read (shared storage): workers open them
by absolute path. A file a node cannot see gets an error record that says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import DEFAULT_BATCH_SIZE, ChunkingOptions, GenerationOptions, check_batch_size
from ..constants import COMPONENTS
from ..errors import ConfigError, SalmonnError, error_line
from ..jobs.records import Record
from .pool import Dispatcher, PendingInput, SalmonnWorker

logger = logging.getLogger(__name__)

RAY_EXTRA = "salmonn[ray]"
ADDRESS_FORMS = "'local', 'auto' or 'ray://HOST:PORT'"
DEFAULT_MAX_ATTEMPTS = 3  # hand-outs of a file whose worker died before giving it up
DEFAULT_MAX_RESTARTS = 3  # times Ray restarts a dead worker (model reloaded)
# files per call with batch_size "auto" (sized on the worker's GPU): enough to keep a large batch
# full, few enough that a lost worker costs little
AUTO_FILES_PER_CALL = 32
LOOPBACK = "127.0.0.1"  # where a Ray started by --ray local listens


class RayUnavailableError(ConfigError):
    """``ray`` is not installed (the ``salmonn[ray]`` extra)."""


def import_ray() -> Any:
    """The ``ray`` module; raises :class:`RayUnavailableError` (naming the extra) without it."""
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            f"running on Ray needs the ray package: pip install '{RAY_EXTRA}'"
        ) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how many model replicas run.

    Attributes:
        address: ``"local"`` (start Ray on this machine), ``"auto"`` (the cluster this node belongs
            to, e.g. after ``ray start``) or ``"ray://HOST:PORT"`` (Ray Client).
        workers: model replicas; ``None``: one per GPU of the cluster (per ``gpus_per_worker``), or 1
            when the cluster has none.
        gpus_per_worker: GPUs reserved per replica (fractions share a GPU); ``None``: 1 when the
            cluster has GPUs, else 0.
        cpus_per_worker: CPUs reserved per replica; Ray also sets the worker's thread count to it.
        files_per_call: files handed to a worker at a time (the engine batches chunks across
            them); ``None``: the batch size, or :data:`AUTO_FILES_PER_CALL` with ``"auto"``.
        max_attempts: hand-outs of a file whose worker dies before it gets an error record.
        max_restarts: times Ray restarts a dead worker (reloading the model).
    """

    address: str = "local"
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0
    files_per_call: int | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_restarts: int = DEFAULT_MAX_RESTARTS

    def __post_init__(self) -> None:
        address = self.address
        if address not in ("local", "auto") and not (
            address.startswith("ray://") and len(address) > len("ray://")
        ):
            raise ConfigError(f"Ray address must be {ADDRESS_FORMS}, got {address!r}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"Ray workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ConfigError(f"GPUs per worker must be >= 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker < 0:
            raise ConfigError(f"CPUs per worker must be >= 0, got {self.cpus_per_worker}")
        if self.files_per_call is not None and self.files_per_call < 1:
            raise ConfigError(f"files per call must be >= 1, got {self.files_per_call}")
        if self.max_attempts < 1 or self.max_restarts < 0:
            raise ConfigError("max_attempts must be >= 1 and max_restarts >= 0")

    def placement(self, cluster: Mapping[str, float]) -> tuple[int, float]:
        """``(workers, gpus_per_worker)`` for a cluster with these total resources."""
        gpus = float(cluster.get("GPU", 0.0))
        per = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        if self.workers is not None:
            return self.workers, per
        if gpus and per > 0:
            return max(1, math.floor(gpus / per + 1e-9)), per
        return 1, per


# -- public call --------------------------------------------------------------------------------

# settings read from the environment that the workers should share with the driver
_FORWARDED_ENV = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "SALMONN_FFMPEG",
)


def _worker_threads(cpus: float) -> dict[str, str]:
    """A worker's OpenMP settings: as many threads as its CPU share (not the node's cores, nor the
    driver's count, which a local cluster would inherit), waiting passively."""
    return {"OMP_NUM_THREADS": str(max(1, math.ceil(cpus))), "OMP_WAIT_POLICY": "PASSIVE"}


def run_task_on_ray(
    inputs: Sequence[Any],
    task: Any = "transcribe",
    *,
    model: Mapping[str, Any] | None = None,
    address: str = "local",
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float = 1.0,
    generation: GenerationOptions | None = None,
    chunking: ChunkingOptions | None = None,
    batch_size: int | str | None = None,
    on_progress: Callable[[Any], None] | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    **task_args: Any,
) -> RayTaskRun:
    """Run a task over ``inputs`` on Ray workers; yield one record per input as each finishes.

    The records are those :func:`salmonn.run_task` gives for the same inputs and options (only
    ``timings`` differ) but they come in the order files finish, not in input order.

    Args:
        inputs: paths (files, folders, glob patterns) or :class:`~salmonn.audio.inputs.InputItem` objects,
            expanded and ordered as :func:`salmonn.run_task` does. They must be on storage that
            every node can read; standard input cannot be used.
        task: a task name of :data:`salmonn.TASKS` (arguments in ``task_args``), a
            :class:`~salmonn.jobs.tasks.Task`, or its rendered :class:`~salmonn.jobs.engine.TaskSpec`.
        model: keyword arguments of :func:`salmonn.load_model` for each worker (``preset``,
            component paths, ``device``, ``dtype`` ...); local component paths are made absolute.
        address, workers, gpus_per_worker, cpus_per_worker: see :class:`RayOptions`. When this
            process is already connected to Ray (``ray.init`` was called), that connection is used
            and ``address`` is ignored.
        generation, chunking, batch_size: as for :func:`salmonn.run_task`.
        on_progress: called with :class:`~salmonn.jobs.engine.ProgressEvent` reports (``"start"`` once
            the job is set up, then ``"record"`` for each record).
        max_attempts: hand-outs of a file whose worker died before it gets an error record.

    Raises:
        RayUnavailableError: the ``ray`` package is missing (``pip install 'salmonn[ray]'``).
        ConfigError: bad options or inputs; CheckpointError and others: as ``load_model`` raises
            them when the workers cannot load the model.
        SalmonnError: every worker is gone while inputs remain.

    Returns:
        A :class:`RayTaskRun`: iterate it for the records; nothing starts before the first
        ``next()`` (or :meth:`RayTaskRun.start`). Closing it early (or Ctrl-C while iterating) stops
        the workers and, when this call started Ray, Ray itself.
    """
    from ..jobs.spec import TaskSpec
    from ..jobs.tasks import Task, _as_items, make_task

    if isinstance(task, Task | TaskSpec) and task_args:
        raise ConfigError(f"pass task arguments to make_task, not with a Task: {sorted(task_args)}")
    chosen = task if isinstance(task, Task | TaskSpec) else make_task(task, **task_args)
    if isinstance(chosen, Task) and chosen.note:
        logger.warning(chosen.note)
    # rendered here, so user templates need not exist on the workers
    spec = chosen if isinstance(chosen, TaskSpec) else chosen.spec()
    items = _as_items(inputs)
    if any(str(item.path) == "-" for item in items):
        raise ConfigError("standard input cannot be sent to Ray workers; save the audio to a file")
    options = RayOptions(
        address=address,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        max_attempts=max_attempts,
    )
    size = check_batch_size(DEFAULT_BATCH_SIZE if batch_size is None else batch_size)
    job = {
        "spec": spec,
        "chunking": chunking or ChunkingOptions(),
        "generation": generation or GenerationOptions(),
        "batch_size": size,
        "files_per_call": options.files_per_call
        or (size if isinstance(size, int) else AUTO_FILES_PER_CALL),
        # "auto" sizes batches on each worker: hand out even shares, never all to the first one
        "share": size == "auto" and options.files_per_call is None,
        "max_attempts": options.max_attempts,
        "on_progress": on_progress,
    }
    todo = [
        PendingInput(i, item, dataclasses.replace(item, path=os.path.abspath(item.path)))
        for i, item in enumerate(items)
    ]
    return RayTaskRun(import_ray(), options, _model_args(model), todo, job)


def _model_args(model: Mapping[str, Any] | None) -> dict[str, Any]:
    args = dict(model or {})
    for key in COMPONENTS:
        value = args.get(key)
        if value is not None and os.path.exists(value):
            args[key] = os.path.abspath(value)
    return args


class RayTaskRun:
    """The records of :func:`run_task_on_ray`: an iterator that owns the Ray job.

    :meth:`start` connects to Ray, starts the workers and waits until one has loaded the model
    (raising the load error if none could); iterating starts it when needed. :meth:`close` (also on
    ``with`` exit or when iteration ends) kills the workers and, when this run started Ray, stops it.
    """

    def __init__(
        self,
        ray: Any,
        options: RayOptions,
        model_args: dict[str, Any],
        todo: list[PendingInput],
        job: dict,
    ) -> None:
        self._ray, self._options, self._model_args = ray, options, model_args
        self._todo, self._job = todo, job
        self._actors: list[Any] = []
        self._records: Iterator[Record] | None = None
        self._owns_ray = False
        self._closed = False

    def start(self) -> RayTaskRun:
        """Connect, start the workers and wait for the first model replica. Idempotent."""
        if self._records is not None or self._closed:
            return self
        ray, options = self._ray, self._options
        if not self._todo:
            self._records = iter(())
            return self
        try:
            if not ray.is_initialized():
                _connect(ray, options.address)
                self._owns_ray = True
            resources = ray.cluster_resources()
            count, gpus = options.placement(resources)
            _check_resources(resources, count, gpus, options.cpus_per_worker)
            env = {k: os.environ[k] for k in _FORWARDED_ENV if os.environ.get(k)}
            env.update(_worker_threads(options.cpus_per_worker))
            worker = ray.remote(SalmonnWorker).options(
                num_cpus=options.cpus_per_worker,
                num_gpus=gpus,
                max_restarts=options.max_restarts,
                max_task_retries=0,  # the driver retries unfinished files itself, not whole calls
                runtime_env={"env_vars": env} if env else None,
            )
            self._actors = [worker.remote(self._model_args) for _ in range(count)]
            self._job["spec_ref"] = ray.put(self._job["spec"])
            self._job["streaming"] = not _client_mode(ray)
            driver = Dispatcher(ray, self._actors, self._todo, self._job)
            driver.wait_for_a_worker()
            self._records = driver.run()
        except BaseException:
            self.close()
            raise
        return self

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        if self._closed:
            raise StopIteration
        self.start()
        assert self._records is not None
        try:
            return next(self._records)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the job: kill the workers, and stop Ray if this run started it."""
        if self._closed:
            return
        self._closed = True
        if self._records is not None:
            self._records.close()  # type: ignore[attr-defined]
        for actor in self._actors:
            with contextlib.suppress(Exception):  # already gone
                self._ray.kill(actor, no_restart=True)
        if self._owns_ray:
            self._ray.shutdown()

    def __enter__(self) -> RayTaskRun:  # noqa: PYI034 (typing.Self needs 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _client_mode(ray: Any) -> bool:
    """Whether this process talks to Ray through Ray Client (``ray://``)."""
    from ray.util.client import ray as client

    return bool(client.is_connected())


def start_local_ray(ray: Any, **init_args: Any) -> None:
    """Start Ray on this machine with every listener on loopback (127.0.0.1), no port open to the
    network, and keep its token authentication (Ray's default) without its notice about it.

    Ray turns a ``127.0.0.1`` node address into the machine's network address unless it believes
    it runs a single-machine cluster (its flag for Windows and macOS, set here for the call); with
    the node address on loopback, its GCS, raylet and workers listen there only.
    """
    from ray._private import ray_constants

    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    quiet = _DropEnabledNotice()
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    notice.addFilter(quiet)
    try:
        ray.init(
            address="local",
            _node_ip_address=LOOPBACK,
            include_dashboard=False,
            logging_level=logging.WARNING,
            **init_args,
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        notice.removeFilter(quiet)


class _DropEnabledNotice(logging.Filter):
    """Drops Ray's notice that token authentication is on (it is, as it should be); a notice that
    it is off still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return os.environ.get("RAY_AUTH_MODE", "").lower() != "token"


def _connect(ray: Any, address: str) -> None:
    try:
        if address == "local":
            start_local_ray(ray)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except Exception as exc:  # ConnectionError, RuntimeError, ...: one line for the user
        raise SalmonnError(f"cannot connect to Ray at {address!r}: {error_line(exc)}") from exc


def _check_resources(cluster: Mapping[str, float], count: int, gpus: float, cpus: float) -> None:
    short = []
    if count * gpus > float(cluster.get("GPU", 0.0)) + 1e-9:
        short.append(f"{count * gpus:g} GPUs (the cluster has {cluster.get('GPU', 0):g})")
    if count * cpus > float(cluster.get("CPU", 0.0)) + 1e-9:
        short.append(f"{count * cpus:g} CPUs (the cluster has {cluster.get('CPU', 0):g})")
    if short:
        logger.warning(
            "%d workers need %s; the others wait until the cluster grows",
            count,
            " and ".join(short),
        )
