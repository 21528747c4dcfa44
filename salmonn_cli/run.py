"""One task run: settings -> inputs -> outputs/resume -> a :class:`Job` -> executor -> writers -> exit code.

Everything that can be checked without torch (settings, templates, inputs, outputs) is checked before the
model is imported, so usage errors answer instantly and exit 2.

The seam between planning and running is :data:`Executor`: a callable that takes a :class:`Job` (inputs,
task spec, options, model settings) and a :class:`Reporter` and returns the job's records, in input
order. :func:`local_executor` runs the job in this process; another executor (e.g. one that spreads the
inputs over a cluster) can be passed to :func:`run_task` instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from salmonn.config import ChunkingOptions, GenerationOptions, prefetch_depth
from salmonn.errors import AudioError, ConfigError, PromptError

from . import paths as outputs
from .progress import Reporter, setup_logging
from .settings import InputSettings, ModelSettings, OutputSettings, SettingsError, TaskSettings


def _usage(message: str) -> click.UsageError:
    return click.UsageError(message, ctx=click.get_current_context(silent=True))


@dataclass(frozen=True)
class Job:
    """What to run: the inputs still to do, the task, the options and the model to load.

    Attributes:
        items: the inputs (``InputItem``), in the order their records must come out.
        spec: the task (:meth:`salmonn.Task.spec`).
        model: which model to load, and how.
        generation, chunking: decoding and chunking options.
        batch_size: chunks per model call, taken across files.
        verbose, quiet: how much the model load may say on stderr.
    """

    items: list[Any]
    spec: Any
    model: ModelSettings
    generation: GenerationOptions
    chunking: ChunkingOptions
    batch_size: int | str
    verbose: int = 0
    quiet: bool = False


Executor = Callable[[Job, Reporter], Iterator[Any]]
"""Runs a :class:`Job`: returns an iterator of its records (one per item, in order) once the model is
ready (so a failed load leaves the output untouched); closing the iterator stops the work."""


def collect_inputs(settings: InputSettings) -> list[Any]:
    """Expanded inputs; a missing path or an empty selection is a usage error."""
    from salmonn.inputs import expand_inputs

    problems: list[AudioError] = []
    try:
        items = expand_inputs(
            settings.paths,
            recursive=settings.recursive,
            include_hidden=settings.include_hidden,
            extensions=settings.extensions or None,
            list_file=settings.list_file,
            on_error=problems.append,
        )
    except (ConfigError, AudioError) as err:
        raise _usage(str(err)) from None
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise _usage(f"{problems[0]}{more}")
    if not items:
        raise _usage(
            f"no audio or video files found in {', '.join(settings.paths) or '--files-from'}"
        )
    return items


class Sink:
    """Writes each record where ``-o`` says, flushed as soon as it arrives."""

    def __init__(self, settings: OutputSettings, items: list[Any]) -> None:
        from salmonn.writers import get_writer

        self.plan = outputs.plan_output(settings.target)
        self.fmt, self.resume = settings.fmt, settings.resume
        self.writer_class = get_writer(self.fmt)
        self.names = dict(
            zip(
                (str(i.path) for i in items),
                outputs.output_names(items, self.writer_class.extension),
                strict=True,
            )
        )
        self.multi = len(items) > 1
        self._stream: Any = None
        self._writer: Any = None

    def done_keys(self) -> set[str]:
        """Resume keys already present in the output."""
        if self.plan.mode == "stdout":
            raise _usage("--resume needs -o FILE (jsonl) or -o DIR/")
        try:
            if self.plan.mode == "file":
                if self.fmt != "jsonl":
                    raise _usage("--resume with -o FILE needs --format jsonl (or use -o DIR/)")
                return outputs.done_keys_file(self.plan.target)  # type: ignore[arg-type]
            return outputs.done_keys_dir(self.plan.target, list(self.names.values()), self.fmt)  # type: ignore[arg-type]
        except ConfigError as err:
            raise _usage(f"--resume: cannot read {self.plan.target}: {err}") from None

    def open(self) -> None:
        if self.plan.mode == "stdout":
            self._writer = self.writer_class(sys.stdout, multi=self.multi)
        elif self.plan.mode == "file":
            target: Path = self.plan.target  # type: ignore[assignment]
            target.parent.mkdir(parents=True, exist_ok=True)
            append = self.resume and target.is_file()
            if append:
                outputs.repair_jsonl_tail(target)
            mode = "a" if append else "w"
            # kept open across write() calls; close() closes it
            self._stream = open(target, mode, encoding="utf-8", newline="")  # noqa: SIM115
            self._writer = self.writer_class(self._stream, multi=self.multi)

    def write(self, record: Any) -> None:
        if self._writer is not None:
            self._writer.write(record)
            return
        import io

        folder: Path = self.plan.target  # type: ignore[assignment]
        name = self.names[record.path]
        buffer = io.StringIO()
        writer = self.writer_class(buffer)
        writer.write(record)
        writer.close()
        if writer.count:
            outputs.write_atomic(folder / name, buffer.getvalue())
        if self.fmt not in outputs.JSON_FORMATS:
            outputs.add_to_manifest(folder, record.resume_key(), name if writer.count else None)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._stream is not None:
            self._stream.close()


@contextmanager
def _errors_as_usage() -> Iterator[None]:
    try:
        yield
    except (PromptError, SettingsError) as err:
        raise _usage(str(err)) from None


def run_task(params: dict[str, Any], task: Any, executor: Executor | None = None) -> None:
    """Run one task command; exits 0 (all good), 1 (a file failed) or 2 (usage).

    ``params`` are the command's Click values, ``task`` a :class:`salmonn.Task`; ``executor`` runs the
    planned job (default: :func:`local_executor`).
    """
    setup_logging(params["verbose"])
    reporter = Reporter(quiet=params["quiet"])
    with _errors_as_usage():
        spec = task.spec()
        settings = TaskSettings.from_params(params, warn=reporter.warn)
    items = collect_inputs(settings.inputs)
    sink = Sink(settings.output, items)
    if settings.inputs.shard is not None:
        from salmonn.engine import select_shard

        items = select_shard(items, *settings.inputs.shard)
    todo = _pending(items, spec, settings, sink, reporter)
    if not todo:
        return
    job = Job(
        items=todo,
        spec=spec,
        model=settings.model,
        generation=settings.generation,
        chunking=settings.chunking,
        batch_size=settings.batch_size,
        verbose=settings.output.verbose,
        quiet=settings.output.quiet,
    )
    failed = _write(job, executor or local_executor, sink, reporter, settings.output.fail_fast)
    if failed:
        reporter.info(f"{failed} of {len(todo)} inputs failed")
        sys.exit(1)


def _pending(
    items: list[Any], spec: Any, settings: TaskSettings, sink: Sink, reporter: Reporter
) -> list[Any]:
    """The inputs still to do: with ``--resume``, those whose record is not in the output yet."""
    if not settings.output.resume:
        return items
    from salmonn.engine import pending_items

    done = sink.done_keys()
    todo = pending_items(
        items, spec, done, chunking=settings.chunking, generation=settings.generation
    )
    if len(todo) < len(items):
        reporter.info(f"resume: {len(items) - len(todo)} of {len(items)} inputs already done")
    return todo


def _write(job: Job, executor: Executor, sink: Sink, reporter: Reporter, fail_fast: bool) -> int:
    """Run the job and write each record as it comes; one stderr line per failed input.

    Returns the number of failed inputs.
    """
    with reporter:
        reporter.expect([str(i.path) for i in job.items])  # probed while the model loads
        records = executor(job, reporter)
        try:
            reporter.status("running")
            sink.open()
            failed = 0
            for record in records:
                with reporter.data_output(to_stdout=sink.plan.mode == "stdout"):
                    sink.write(record)
                if record.error is not None:
                    failed += 1
                    reporter.error(f"{record.path}: {record.error}")
                    if fail_fast:
                        reporter.info("stopping at the first failure (--fail-fast)")
                        break
            return failed
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()
            sink.close()


def local_executor(job: Job, reporter: Reporter) -> Iterator[Any]:
    """Run ``job`` in this process: decoding starts at once and overlaps the model load."""
    from salmonn.engine import process
    from salmonn.prefetch import Prefetcher

    paths = [str(i.path) for i in job.items]
    chunks = Prefetcher(paths, job.chunking, max_chunks=prefetch_depth(job.batch_size))
    try:
        model = load_model(job.model, verbose=job.verbose, quiet=job.quiet)
    except BaseException:
        chunks.close()
        raise
    records = process(
        model,
        job.items,
        job.spec,
        chunking=job.chunking,
        generation=job.generation,
        batch_size=job.batch_size,
        on_progress=reporter,
        chunks=chunks,
    )
    return _Closing(records, chunks.close)


class _Closing:
    """An iterator whose ``close()`` also runs ``on_close`` (even when iteration never started)."""

    def __init__(self, records: Iterator[Any], on_close: Callable[[], None]) -> None:
        self._records, self._on_close = records, on_close

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self._records)

    def close(self) -> None:
        try:
            self._records.close()  # type: ignore[attr-defined]
        finally:
            self._on_close()


def load_model(settings: ModelSettings, *, verbose: int = 0, quiet: bool = False) -> Any:
    """Load the model of ``settings``; a library configuration error becomes a usage error."""
    from salmonn.constants import COMPONENTS
    from salmonn.hub import resolve_components

    from .model_errors import quiet_hub

    kwargs = settings.load_kwargs(quantization=True)
    if not verbose:
        quiet_hub(bars=not quiet)
    # Find (or download) the weights before torch is imported: a missing one fails fast.
    found = resolve_components(kwargs["preset"], *(kwargs[c] for c in COMPONENTS))
    kwargs.update({c: getattr(found, c) for c in COMPONENTS})
    from salmonn.checkpoint import load_model as load

    if not verbose:
        _quiet_transformers(keep_downloads=not quiet)
    try:
        return load(**kwargs)
    except ConfigError as err:
        raise _usage(str(err)) from None


def _quiet_transformers(keep_downloads: bool) -> None:
    """No per-tensor "Loading weights" bar from transformers; download bars stay unless --quiet."""
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if keep_downloads:
        enable_progress_bars()
