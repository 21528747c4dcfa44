"""One task run: options -> inputs -> outputs/resume -> model -> engine -> writers -> exit code.

Everything that can be checked without torch (options, templates, inputs, outputs) is checked before the
model is imported, so usage errors answer instantly and exit 2.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from salmonn.config import ChunkingOptions, GenerationOptions
from salmonn.errors import AudioError, ConfigError, PromptError

from . import paths as outputs
from .options import GENERATION_KEYS
from .progress import Reporter, setup_logging
from .settings import SettingsError, model_kwargs, resolve


def _usage(message: str) -> click.UsageError:
    return click.UsageError(message, ctx=click.get_current_context(silent=True))


def _check_preset(settings: dict[str, Any]) -> None:
    from salmonn.hub import PRESETS

    preset = model_kwargs(settings)["preset"]
    if preset is not None and preset not in PRESETS:
        origin = settings["model"].origin
        raise _usage(f"unknown model {preset!r} ({origin}); choose from {', '.join(PRESETS)}")


def build_options(
    params: dict[str, Any], reporter: Reporter
) -> tuple[GenerationOptions, ChunkingOptions]:
    """Decoding and chunking options from the flags (only those given override the defaults)."""
    given = {k: params.get(k) for k in GENERATION_KEYS}
    try:
        generation = GenerationOptions().with_overrides(**given)
        chunking = ChunkingOptions().with_overrides(
            max_seconds=params.get("chunk_seconds"),
            strategy=params.get("chunk_strategy"),
            overlap_seconds=params.get("overlap_seconds"),
            channel=params.get("channel"),
        )
    except ConfigError as err:
        raise _usage(str(err)) from None
    sampling = [k for k in ("temperature", "top_k", "top_p") if given.get(k) is not None]
    if sampling and not generation.do_sample:
        names = ", ".join("--" + k.replace("_", "-") for k in sampling)
        reporter.warn(f"{names} only matter with --do-sample")
    return generation, chunking


def collect_inputs(params: dict[str, Any]) -> list[Any]:
    """Expanded inputs; a missing path or an empty selection is a usage error."""
    from salmonn.inputs import expand_inputs

    problems: list[AudioError] = []
    try:
        items = expand_inputs(
            params["paths"],
            recursive=params["recursive"],
            include_hidden=params["include_hidden"],
            extensions=params["extensions"] or None,
            list_file=params["list_file"],
            on_error=problems.append,
        )
    except (ConfigError, AudioError) as err:
        raise _usage(str(err)) from None
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise _usage(f"{problems[0]}{more}")
    if not items:
        raise _usage(
            f"no audio or video files found in {', '.join(params['paths']) or '--files-from'}"
        )
    return items


class Sink:
    """Writes each record where ``-o`` says, flushed as soon as it arrives."""

    def __init__(self, plan: outputs.OutputPlan, fmt: str, items: list[Any], resume: bool) -> None:
        from salmonn.writers import get_writer

        self.plan, self.fmt, self.resume = plan, fmt, resume
        self.writer_class = get_writer(fmt)
        self.names = dict(
            zip(
                (str(i.path) for i in items),
                outputs.output_names(items, self.writer_class.extension),
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


def run_task(params: dict[str, Any], task: Any) -> None:
    """Run one task command; exits 0 (all good), 1 (a file failed) or 2 (usage)."""
    setup_logging(params["verbose"])
    reporter = Reporter(quiet=params["quiet"])
    with _errors_as_usage():
        spec = task.spec()
        settings = resolve(
            {
                k: params.get(k)
                for k in (
                    "whisper",
                    "beats",
                    "llm",
                    "checkpoint",
                    "model",
                    "device",
                    "dtype",
                    "batch_size",
                )
            },
            warn=reporter.warn,
        )
    _check_preset(settings)
    generation, chunking = build_options(params, reporter)
    if params["load_in_8bit"] and params["load_in_4bit"]:
        raise _usage("choose one of --load-in-8bit and --load-in-4bit")
    items = collect_inputs(params)
    sink = Sink(outputs.plan_output(params["output"]), params["fmt"], items, params["resume"])
    if params["shard"] is not None:
        from salmonn.engine import select_shard

        items = select_shard(items, *params["shard"])
    from salmonn.engine import pending_items

    done = sink.done_keys() if params["resume"] else set()
    todo = pending_items(items, spec, done, chunking=chunking, generation=generation)
    if len(todo) < len(items):
        reporter.info(f"resume: {len(items) - len(todo)} of {len(items)} inputs already done")
    if not todo:
        return
    failed = _process(params, settings, spec, todo, sink, reporter, generation, chunking)
    if failed:
        reporter.info(f"{failed} of {len(todo)} inputs failed")
        sys.exit(1)


def _process(params, settings, spec, todo, sink, reporter, generation, chunking) -> int:
    """Load the model, run the engine and write the records; return the number of failed inputs."""
    from salmonn.engine import process
    from salmonn.prefetch import Prefetcher

    batch_size = settings["batch_size"].value
    paths = [str(i.path) for i in todo]
    # decoding starts at once and overlaps the model load
    with Prefetcher(paths, chunking, max_chunks=max(16, 2 * batch_size)) as chunks, reporter:
        model = _load_model(params, settings, reporter)
        reporter.status("running")
        sink.open()
        records = process(
            model,
            todo,
            spec,
            chunking=chunking,
            generation=generation,
            batch_size=batch_size,
            on_progress=reporter,
            chunks=chunks,
        )
        try:
            return _drain(records, sink, reporter, params["fail_fast"])
        finally:
            records.close()
            sink.close()


def _drain(records: Iterator[Any], sink: Sink, reporter: Reporter, fail_fast: bool) -> int:
    """Write each record as it comes; one stderr line per failed input. Returns the failures."""
    failed = 0
    for record in records:
        sink.write(record)
        if record.error is not None:
            failed += 1
            reporter.error(f"{record.path}: {record.error}")
            if fail_fast:
                reporter.info("stopping at the first failure (--fail-fast)")
                break
    return failed


def _load_model(params: dict[str, Any], settings: dict[str, Any], reporter: Reporter) -> Any:
    from salmonn.checkpoint import load_model

    kwargs = model_kwargs(settings)
    if not params["verbose"]:
        _quiet_transformers(keep_downloads=not params["quiet"])
    try:
        return load_model(
            **kwargs,
            lora_scaling=params["lora_scaling"],
            load_in_8bit=params["load_in_8bit"],
            load_in_4bit=params["load_in_4bit"],
        )
    except ConfigError as err:
        raise _usage(str(err)) from None


def _quiet_transformers(keep_downloads: bool) -> None:
    """No per-tensor "Loading weights" bar from transformers; download bars stay unless --quiet."""
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if keep_downloads:
        enable_progress_bars()
