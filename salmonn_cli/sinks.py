"""Where records go, one small class per destination: standard output, one FILE, or a folder.

:func:`make_sink` picks the class from ``-o``. Every sink can :meth:`~Sink.check` its location before
the model loads (a path that cannot be written is one usage error, not a traceback after the load),
say what an earlier run left there (:meth:`~Sink.done`, for ``--resume``), and write each record as it
arrives. The file helpers (atomic writes, the done-list) are in :mod:`salmonn_cli.paths`.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from salmonn.errors import ConfigError

from . import paths as outputs
from .settings import OutputSettings


def _usage(message: str) -> click.UsageError:
    return click.UsageError(message, ctx=click.get_current_context(silent=True))


def _not_a_folder(path: Path) -> Path | None:
    """The first ancestor of ``path`` (or ``path`` itself) that exists and is not a folder."""
    for part in reversed([path, *path.parents]):
        if part.exists() and not part.is_dir():
            return part
    return None


def check_folder(folder: Path, flag: str) -> None:
    """Create ``folder`` (with its parents) and make sure a file can be written in it.

    Raises a usage error naming ``flag`` (the ``-o`` value as given) and the cause.
    """
    blocker = _not_a_folder(folder)
    if blocker is not None:
        raise _usage(f"-o {flag}: {blocker} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".salmonn-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise _usage(f"-o {flag}: cannot write in {folder}: {err.strerror or err}") from None


class Sink:
    """A destination: :meth:`check` before the load, then :meth:`open`, :meth:`write` each record,
    :meth:`close`. ``to_stdout`` tells the progress bar whether records land on the terminal."""

    to_stdout = False

    def __init__(self, settings: OutputSettings, writer_class: Any, multi: bool) -> None:
        self.fmt, self.resume = settings.fmt, settings.resume
        self.writer_class = writer_class
        self.multi = multi

    def check(self) -> None:
        """Fail now, with a usage error, when the destination cannot be written."""

    def done(self) -> list[outputs.Done]:
        """What the destination already holds (one :class:`paths.Done` per record)."""
        raise NotImplementedError

    def open(self) -> None:
        """Called once the model is ready, before the first record."""

    def write(self, record: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Called once, after the last record (or on the way out of a failed run)."""


class StdoutSink(Sink):
    """Every record on standard output."""

    to_stdout = True

    def done(self) -> list[outputs.Done]:
        raise _usage("--resume needs -o FILE (jsonl) or -o DIR/")

    def open(self) -> None:
        self._writer = self.writer_class(sys.stdout, multi=self.multi)

    def write(self, record: Any) -> None:
        self._writer.write(record)

    def close(self) -> None:
        if hasattr(self, "_writer"):
            self._writer.close()


class FileSink(Sink):
    """Every record in one file (appended to with ``--resume``)."""

    def __init__(self, target: Path, flag: str, *args: Any) -> None:
        super().__init__(*args)
        self.target, self.flag = target, flag
        self._stream: Any = None
        self._writer: Any = None

    def check(self) -> None:
        check_folder(self.target.parent, self.flag)
        if self.target.exists() and not os.access(self.target, os.W_OK):
            raise _usage(f"-o {self.flag}: {self.target} is not writable")

    def done(self) -> list[outputs.Done]:
        if self.fmt != "jsonl":
            raise _usage(
                f"--resume with -o FILE needs the jsonl format, not {self.fmt} "
                "(a .jsonl file name or --format jsonl), or use -o DIR/"
            )
        try:
            return outputs.done_in_file(self.target)
        except ConfigError as err:
            raise _usage(f"--resume: cannot read {self.target}: {err}") from None

    def open(self) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        append = self.resume and self.target.is_file()
        if append:
            outputs.repair_jsonl_tail(self.target)
        # kept open across write() calls; close() closes it
        self._stream = open(self.target, "a" if append else "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._writer = self.writer_class(self._stream, multi=self.multi)

    def write(self, record: Any) -> None:
        self._writer.write(record)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._stream is not None:
            self._stream.close()


class FolderSink(Sink):
    """One file per input under a folder, mirroring the input tree; with a non-JSON format, the
    done-list (:data:`paths.MANIFEST`) names each finished input, for ``--resume``."""

    def __init__(self, folder: Path, flag: str, names: dict[str, str], *args: Any) -> None:
        super().__init__(*args)
        self.folder, self.flag, self.names = folder, flag, names

    def check(self) -> None:
        check_folder(self.folder, self.flag)

    def done(self) -> list[outputs.Done]:
        try:
            return outputs.done_in_dir(self.folder, list(self.names.values()), self.fmt)
        except ConfigError as err:
            raise _usage(f"--resume: cannot read {self.folder}: {err}") from None

    def write(self, record: Any) -> None:
        name = self.names[record.path]
        buffer = io.StringIO()
        writer = self.writer_class(buffer)
        writer.write(record)
        writer.close()
        if writer.count:
            outputs.write_atomic(self.folder / name, buffer.getvalue())
        if self.fmt not in outputs.JSON_FORMATS:
            outputs.add_to_manifest(self.folder, record, name if writer.count else None)


def make_sink(settings: OutputSettings, items: list[Any]) -> Sink:
    """The sink ``-o`` names (stdout, a file or a folder) for the records of ``items``."""
    from salmonn.jobs.writers import get_writer

    writer_class = get_writer(settings.fmt)
    common = (settings, writer_class, len(items) > 1)
    plan = outputs.plan_output(settings.target)
    if plan.mode == "stdout":
        return StdoutSink(*common)
    assert plan.target is not None and settings.target is not None
    if plan.mode == "file":
        return FileSink(plan.target, settings.target, *common)
    names = dict(
        zip(
            (str(i.path) for i in items),
            outputs.output_names(items, writer_class.extension),
            strict=True,
        )
    )
    return FolderSink(plan.target, settings.target, names, *common)
