"""Everything the CLI says on stderr: a rich progress bar (terminal only), notes, warnings, errors, logs.

Standard output belongs to the data. The bar lives on stderr and never redirects or wraps stdout; when
stdout is a terminal too, the bar steps aside while a record is written (:meth:`Reporter.data_output`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import click

_ACTIVE: list[
    Reporter
] = []  # the reporters inside their ``with`` block (logs print through the last)


class _ConsoleHandler(logging.Handler):
    """Log records on stderr, through the running progress bar's console when there is one."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)
            return
        if _ACTIVE:
            _ACTIVE[-1].echo(message)
        else:
            click.echo(message, err=True)


def setup_logging(verbose: int) -> None:
    """``-v``: INFO logs of the ``salmonn`` logger on stderr; ``-vv``: DEBUG."""
    if verbose <= 0:
        return
    logger = logging.getLogger("salmonn")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


def clock(seconds: float) -> str:
    """``M:SS``, or ``H:MM:SS`` from one hour (seconds truncated)."""
    value = int(seconds)
    hours, rest = divmod(value, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class _Durations:
    """Probes the inputs' durations in a background thread, so the bar can count audio seconds.

    ``total()`` is the sum once every input is probed; before that, the mean of the probed ones times
    the number of inputs (``None`` while nothing is known, or when an input, such as standard input,
    cannot be probed).
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self.known: dict[str, float] = {}
        self.unknown = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="salmonn-durations", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from salmonn.audio.decode import probe
        from salmonn.errors import SalmonnError

        for path in self.paths:
            if self._stop.is_set():
                return
            try:
                duration = None if path == "-" else probe(path).duration
            except (SalmonnError, OSError):
                duration = 0.0  # it will fail: no audio to count, and the others' total holds
            if duration is None:
                self.unknown += 1
            else:
                self.known[path] = duration

    def total(self) -> float | None:
        if self.unknown or not self.known:
            return None
        return sum(self.known.values()) * len(self.paths) / len(self.known)

    def stop(self) -> None:
        self._stop.set()


class Reporter:
    """Progress bar and messages on stderr.

    The bar is shown only when stderr is a terminal and not ``quiet``; while it runs, messages and
    ``-v`` logs go through its console so the bar stays intact. It counts audio seconds (durations are
    probed in the background) and ends with one ``done`` line. Notes (``info``) are dropped with
    ``quiet``; warnings and errors always appear, one line each.
    """

    def __init__(self, quiet: bool = False, console: Any = None) -> None:
        self.quiet = quiet
        self.console = console  # a rich Console (tests); default: one on stderr
        self.enabled = not quiet and (console is not None or sys.stderr.isatty())
        self._progress: Any = None
        self._task: Any = None
        self._durations: _Durations | None = None
        self._failed_audio = 0.0  # probed seconds of failed inputs (the engine counts none of them)
        self._last: Any = None  # the latest ProgressEvent
        self.told_failures = False  # the done line counted the failed inputs

    # -- messages ----------------------------------------------------------------------------------
    def echo(self, message: str) -> None:
        """One line on stderr, above the bar when it runs; control characters (from file names or
        model text) are dropped so they cannot drive the terminal."""
        from salmonn.jobs.writers import printable

        message = printable(message)
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(message, err=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.echo(message)

    def warn(self, message: str) -> None:
        self.echo(f"warning: {message}")

    def error(self, message: str) -> None:
        self.echo(f"error: {message}")

    # -- progress bar ------------------------------------------------------------------------------
    def __enter__(self) -> Reporter:  # noqa: PYI034 (typing.Self needs 3.11)
        _ACTIVE.append(self)
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[audio]} audio  {task.fields[files]} files"),
                TextColumn("{task.fields[speed]}  ETA {task.fields[eta]}"),
                console=self.console or Console(stderr=True),
                transient=True,  # erased at the end; the done line replaces it
                redirect_stdout=False,  # stdout is the data's
                redirect_stderr=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "loading model", total=None, audio="0:00", files="0/?", speed="", eta="-:--"
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if self._durations is not None:
            self._durations.stop()
        if self._progress is not None:
            self._progress.stop()
            console = self._progress.console
            self._progress = None
            if exc_type is None and self._last is not None:
                console.print(self.done_line(), markup=False, highlight=False, soft_wrap=True)
                self.told_failures = bool(self._last.files_failed)

    def expect(self, paths: Sequence[str]) -> None:
        """The inputs about to run: their durations are probed for the bar's audio total and ETA."""
        if self._progress is not None and paths:
            self._durations = _Durations(paths)

    def status(self, description: str) -> None:
        """Change the text in front of the bar (e.g. "loading model", "running")."""
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    @contextmanager
    def data_output(self, to_stdout: bool = True) -> Iterator[None]:
        """Around each record written: when stdout is a terminal, the bar steps aside meanwhile."""
        progress = self._progress
        if progress is None or not to_stdout or not _isatty(sys.stdout):
            yield
            return
        progress.stop()  # transient: erases the bar
        try:
            yield
            sys.stdout.flush()
        finally:
            progress.start()

    def __call__(self, event: Any) -> None:
        """The engine's ``on_progress`` callback (a :class:`salmonn.jobs.engine.ProgressEvent`)."""
        self._last = event
        if self._progress is None:
            return
        record = getattr(event, "record", None)
        if record is not None and record.error is not None and self._durations is not None:
            self._failed_audio += self._durations.known.get(record.path, 0.0)
        done = event.audio_seconds + self._failed_audio
        total = self._durations.total() if self._durations is not None else None
        if total is not None:
            total = max(total, done)
        eta = "-:--"
        if total is not None and event.speed > 0:
            eta = clock((total - done) / event.speed)
        if event.files_done == event.files_total:
            eta = "0:00"
        self._progress.update(
            self._task,
            total=total,
            completed=done,
            audio=clock(done) + ("" if total is None else f"/{clock(total)}"),
            files=f"{event.files_done}/{event.files_total}",
            speed=f"{event.speed:.1f}x" if event.speed > 0 else "",
            eta=eta,
        )

    def done_line(self) -> str:
        """``done: 3 files (1 failed), 1:10 of audio in 0:05 (14.0x real time)``."""
        event = self._last
        files = f"{event.files_done} file{'s' if event.files_done != 1 else ''}"
        if event.files_failed:
            files += f" ({event.files_failed} failed)"
        line = f"done: {files}, {clock(event.audio_seconds)} of audio in {clock(event.elapsed)}"
        if event.speed > 0:
            line += f" ({event.speed:.1f}x real time)"
        return line


def _isatty(stream: Any) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
