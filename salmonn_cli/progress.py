"""Everything the CLI says on stderr: a rich progress bar (terminal only), notes, warnings and errors."""

from __future__ import annotations

import logging
import sys
from types import TracebackType
from typing import Any

import click


def setup_logging(verbose: int) -> None:
    """``-v``: INFO logs of the ``salmonn`` logger on stderr; ``-vv``: DEBUG."""
    if verbose <= 0:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    logger = logging.getLogger("salmonn")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


def _seconds(value: float) -> str:
    value = int(value)
    hours, rest = divmod(value, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Reporter:
    """Progress bar and messages on stderr.

    The bar is shown only when stderr is a terminal and not ``quiet``; while it runs, messages go through
    its console so the bar stays intact. Notes (``info``) are dropped with ``quiet``; warnings and errors
    always appear, one line each.
    """

    def __init__(self, quiet: bool = False, console: Any = None) -> None:
        self.quiet = quiet
        self.console = console  # a rich Console (tests); default: one on stderr
        self.enabled = not quiet and (console is not None or sys.stderr.isatty())
        self._progress: Any = None
        self._task: Any = None

    # -- messages ----------------------------------------------------------------------------------
    def _echo(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(message, err=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self._echo(message)

    def warn(self, message: str) -> None:
        self._echo(f"warning: {message}")

    def error(self, message: str) -> None:
        self._echo(f"error: {message}")

    # -- progress bar ------------------------------------------------------------------------------
    def __enter__(self) -> Reporter:  # noqa: PYI034 (typing.Self needs 3.11)
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("files  {task.fields[chunks]} chunks  {task.fields[audio]} audio"),
                TextColumn("{task.fields[speed]}  ETA"),
                TimeRemainingColumn(),
                console=self.console or Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "loading model", total=None, chunks=0, audio="0:00", speed="RTF -"
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def status(self, description: str) -> None:
        """Change the text in front of the bar (e.g. "loading model", "running")."""
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    def __call__(self, event: Any) -> None:
        """The engine's ``on_progress`` callback (a :class:`salmonn.engine.ProgressEvent`)."""
        if self._progress is None:
            return
        speed = f"RTF {1 / event.speed:.3f} ({event.speed:.1f}x)" if event.speed > 0 else "RTF -"
        self._progress.update(
            self._task,
            total=event.files_total,
            completed=event.files_done,
            chunks=event.chunks_done,
            audio=_seconds(event.audio_seconds),
            speed=speed,
        )
