"""One task run: settings -> inputs -> outputs/resume -> a :class:`Job` -> executor -> writers -> exit code.

Everything that can be checked without torch (settings, templates, inputs, outputs) is checked before the
model is imported, so usage errors answer instantly and exit 2.

The seam between planning and running is :data:`Executor`: a callable that takes a :class:`Job` (inputs,
task spec, options, model settings) and a :class:`Reporter` and returns the job's records, in input
order. :func:`local_executor` runs the job in this process; another executor (e.g. one that spreads the
inputs over a cluster) can be passed to :func:`run_task` instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click

from salmonn.config import ChunkingOptions, GenerationOptions, prefetch_depth
from salmonn.errors import AudioError, ConfigError, DeviceUnavailableError, PromptError

from .progress import Reporter, setup_logging
from .settings import InputSettings, ModelSettings, SettingsError, TaskSettings
from .sinks import Sink, make_sink


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


def collect_inputs(settings: InputSettings, note: Callable[[str], None] | None = None) -> list[Any]:
    """Expanded inputs; no input, a missing path or an empty selection is a usage error.

    ``note`` is told about each folder named on the command line that holds no audio when other
    inputs do (an empty selection is one usage error, not a note and an error).
    """
    from salmonn.audio.inputs import expand_inputs

    if not settings.paths and settings.list_file is None:
        raise _usage(
            "no inputs: give PATH... (files, folders, globs, - for standard input) "
            "or --files-from FILE"
        )
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
    if note is not None:
        roots = {i.root for i in items}
        for path in settings.paths:
            if os.path.isdir(path) and path not in roots:
                note(f"{path}: no audio or video files found")
    return items


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
        try:
            spec = task.spec()
        except PromptError as err:
            raise PromptError(str(err) + _var_hint(task)) from None
        settings = TaskSettings.from_params(params, warn=reporter.warn)
    items = collect_inputs(settings.inputs, note=reporter.info)
    sink = make_sink(settings.output, items)
    sink.check()  # a location that cannot be written fails now, not after the model load
    if settings.inputs.shard is not None:
        from salmonn.jobs.engine import select_shard

        items = select_shard(items, *settings.inputs.shard)
    todo, earlier_failed = _pending(items, spec, settings, sink, reporter)
    if not todo:
        _exit_for_failures(0, 0, earlier_failed, reporter)
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
    failed, tried = _write(
        job, executor or local_executor, sink, reporter, settings.output.fail_fast
    )
    _exit_for_failures(failed, tried, earlier_failed, reporter, left=len(todo) - tried)


def _exit_for_failures(
    failed: int, ran: int, earlier_failed: int, reporter: Reporter, left: int = 0
) -> None:
    """Exit 1 while any input of the run has an error record: from this run or an earlier one.

    ``ran`` counts the inputs tried, ``left`` those that --fail-fast left untried.
    """
    if failed and not reporter.told_failures:  # the bar's done line already counted them
        reporter.info(f"{failed} of {ran} inputs failed")
    if left:
        reporter.info(f"{left} input{'s' if left > 1 else ''} not run (--fail-fast)")
    if earlier_failed:
        s = "s" if earlier_failed > 1 else ""
        them = "them" if s else "it"
        reporter.warn(
            f"{earlier_failed} input{s} failed in an earlier run; the output still holds "
            f"{'their error records' if s else 'its error record'} (delete {them} and --resume "
            f"to run {them} again)"
        )
    if failed or earlier_failed:
        sys.exit(1)


def _var_hint(task: Any) -> str:
    """``; give it with --var question=VALUE`` when a template's variables were not all given."""
    from salmonn.jobs.templates import get_template

    name, given = getattr(task, "template", None), getattr(task, "variables", None) or {}
    try:
        template = get_template(name) if name else None
    except PromptError:
        return ""
    if template is None or template.kind != "audio":  # a summary template: not for --var
        return ""
    variables = template.variables
    missing = [v for v in variables if v not in given]
    if not missing:
        return ""
    flags = " ".join(f"--var {v}=VALUE" for v in missing)
    return f"; give {'it' if len(missing) == 1 else 'them'} with {flags}"


def _pending(
    items: list[Any], spec: Any, settings: TaskSettings, sink: Sink, reporter: Reporter
) -> tuple[list[Any], int]:
    """The inputs still to do and how many of the others failed in an earlier run.

    With ``--resume``, an input is done when the output holds its record (same path, task, prompt,
    options) made by the same model (:meth:`ModelSettings.made`); a failed record counts as done
    (delete it to retry) but keeps the exit code at 1.
    """
    if not settings.output.resume:
        return items, 0
    from salmonn.jobs.engine import planned_resume_key

    done = sink.done()
    same = [d for d in done if settings.model.made(d.weights)]
    ok = {d.key for d in same if not d.failed}
    failed = {d.key for d in same if d.failed} - ok
    other_model = {d.key for d in done} - ok - failed
    keys = [
        planned_resume_key(i, spec, chunking=settings.chunking, generation=settings.generation)
        for i in items
    ]
    todo = [i for i, key in zip(items, keys, strict=True) if key not in ok and key not in failed]
    earlier_failed = sum(key in failed for key in keys)
    if len(todo) < len(items):
        message = f"resume: {len(items) - len(todo)} of {len(items)} inputs already done"
        if earlier_failed:
            message += f" ({earlier_failed} of them failed; delete their records to run them again)"
        reporter.info(message)
    again = sum(key in other_model for key in keys)
    if again:
        reporter.info(f"resume: {again} inputs done with another model are run again")
    return todo, earlier_failed


def _write(
    job: Job, executor: Executor, sink: Sink, reporter: Reporter, fail_fast: bool
) -> tuple[int, int]:
    """Run the job and write each record as it comes; one stderr line per failed input.

    Returns the numbers of failed and of tried inputs.
    """
    with reporter:
        reporter.expect([str(i.path) for i in job.items])  # probed while the model loads
        records = executor(job, reporter)
        try:
            reporter.status("running")
            sink.open()
            failed = tried = 0
            for record in records:
                tried += 1
                with reporter.data_output(to_stdout=sink.to_stdout):
                    sink.write(record)
                if record.error is not None:
                    failed += 1
                    reporter.error(f"{record.path}: {record.error}")
                    if fail_fast:
                        reporter.info("stopping at the first failure (--fail-fast)")
                        break
            return failed, tried
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()
            sink.close()


class LocalExecutor:
    """Runs jobs in this process; decoding of a job's inputs starts at once and overlaps the model
    load. The model is loaded by the first job and kept for the next ones (``salmonn eval run``
    runs one job per prompt group over one model)."""

    def __init__(self) -> None:
        self.model: Any = None

    def __call__(self, job: Job, reporter: Reporter) -> Iterator[Any]:
        from salmonn.audio.prefetch import Prefetcher
        from salmonn.jobs.engine import process

        paths = [str(i.path) for i in job.items]
        chunks = Prefetcher(paths, job.chunking, max_chunks=prefetch_depth(job.batch_size))
        try:
            if self.model is None:
                self.model = load_model(job.model, verbose=job.verbose, quiet=job.quiet)
        except BaseException:
            chunks.close()
            raise
        records = process(
            self.model,
            job.items,
            job.spec,
            chunking=job.chunking,
            generation=job.generation,
            batch_size=job.batch_size,
            on_progress=reporter,
            chunks=chunks,
        )
        return _Closing(records, chunks.close)


def local_executor(job: Job, reporter: Reporter) -> Iterator[Any]:
    """Run ``job`` in this process (a :class:`LocalExecutor` of its own)."""
    return LocalExecutor()(job, reporter)


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
    from salmonn.hub.resolve import resolve_components

    from .model_errors import quiet_hub

    kwargs = settings.load_kwargs(quantization=True)
    if not verbose:
        quiet_hub(bars=not quiet)
    # Find (or download) the weights before torch is imported: a missing one fails fast.
    found = resolve_components(kwargs["preset"], *(kwargs[c] for c in COMPONENTS))
    kwargs.update({c: getattr(found, c) for c in COMPONENTS})
    from salmonn.hub.load import load_model as load

    if not verbose:
        _quiet_transformers(keep_downloads=not quiet)
    try:
        return load(**kwargs)
    except DeviceUnavailableError as err:  # the library's words, in the flag's
        raise _usage(f"--device {err.device}: {err.reason} (use --device cpu)") from None
    except ConfigError as err:
        raise _usage(str(err)) from None


def _quiet_transformers(keep_downloads: bool) -> None:
    """No per-tensor "Loading weights" bar from transformers; download bars stay unless --quiet."""
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if keep_downloads:
        enable_progress_bars()
