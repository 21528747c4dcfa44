"""Turn command-line inputs (files, directories, globs, list files, ``-``) into an ordered list.

Order is deterministic: arguments in the order given; inside a directory or a glob, paths sorted by
their components (a tree order independent of the file system). A file reached twice (the same real
path) is kept once, at its first place. Explicitly named files are taken whatever their extension;
files found inside directories must have an audio/video extension and are skipped when hidden (a
name starting with ``.``).

A path named on the command line that does not exist, is a broken link or is a folder that cannot
be listed is reported through ``on_error``. A broken link or a sub-folder that cannot be listed
(permissions, a path too long, a folder gone mid-walk), found inside a directory or matched by a
glob, is an input like the others: it fails when decoded (an error record naming it and the cause),
so one bad entry never stops a whole folder.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..constants import STDIN
from ..errors import AudioError, ConfigError

logger = logging.getLogger(__name__)


AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .mp3 .mp2 .flac .ogg .oga .opus .m4a .m4b .aac .wma .aif .aiff .aifc .amr .ape "
    ".au .snd .caf .mka .ac3 .eac3 .dts .spx .wv .w64 .tta .ra .gsm .voc .mpc .dff .dsf".split()
)
VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .wmv .flv .3gp .3g2 .mpg .mpeg .ts .mts .m2ts .ogv .vob "
    ".asf".split()
)
DEFAULT_EXTENSIONS = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS

OnError = Callable[[AudioError], None]


@dataclass(frozen=True)
class InputItem:
    """One input to process.

    Attributes:
        path: what to open (as given or joined from the argument; ``"-"`` for standard input).
        root: the argument's base: the directory given, the fixed leading part of a glob, or the
            file's own directory.
        relpath: ``path`` relative to ``root``: mirror it to lay out output files. A plain file
            gives its basename, ``"-"`` stays ``"-"``.
    """

    path: str
    root: str
    relpath: str


def expand_inputs(
    paths: Sequence[str | os.PathLike[str]],
    *,
    recursive: bool = True,
    include_hidden: bool = False,
    extensions: Iterable[str] | None = None,
    list_file: str | os.PathLike[str] | None = None,
    on_error: OnError | None = None,
) -> list[InputItem]:
    """Expand files, directories, glob patterns and a list file into a list of :class:`InputItem`.

    Args:
        paths: files, directories, glob patterns (``*``, ``?``, ``[...]``, ``**``), or ``"-"``
            (audio on standard input).
        recursive: descend into sub-directories (symbolic links followed, loops cut).
        include_hidden: also take hidden files and directories found while walking.
        extensions: accepted suffixes inside directories (``"mp3"`` or ``".mp3"``, any case);
            default :data:`DEFAULT_EXTENSIONS`.
        list_file: a text file with one path (or pattern) per line, ``"-"`` for standard input;
            blank lines and lines starting with ``#`` are ignored; relative paths are relative to
            the working directory. Its entries come after ``paths``; one that does not exist is
            an input that fails when decoded (listed paths are data, as a folder's entries are).
        on_error: called with an :class:`AudioError` (path + one-line cause) for each missing path,
            unmatched pattern, unreadable directory or broken link named as an argument, and
            expansion goes on. Without it the first such problem is raised. (The same problems
            met inside a directory are inputs, see above.)

    Raises:
        AudioError: see ``on_error``. ConfigError: ``"-"`` used both as audio and as the list file.
    """
    exts = _normalise_extensions(extensions)
    args = [os.fspath(p) for p in paths]
    if list_file is not None:
        if os.fspath(list_file) == STDIN and STDIN in args:
            raise ConfigError("standard input cannot hold both audio and the list of paths")
        args += _read_list(os.fspath(list_file), on_error)
    walker = _Walker(recursive, include_hidden, exts, on_error)
    listed = len(paths)  # arguments from here on came from the list file
    for index, arg in enumerate(args):
        walker.add_argument(arg, listed=index >= listed)
    return walker.items


def _normalise_extensions(extensions: Iterable[str] | None) -> frozenset[str]:
    if extensions is None:
        return DEFAULT_EXTENSIONS
    if isinstance(extensions, str):
        extensions = extensions.split(",")
    return frozenset("." + e.strip().lower().lstrip(".") for e in extensions if e.strip())


def _report(on_error: OnError | None, path: str, reason: str) -> None:
    error = AudioError(path, reason)
    if on_error is None:
        raise error
    on_error(error)


def _read_list(list_file: str, on_error: OnError | None) -> list[str]:
    try:
        if list_file == STDIN:
            text = sys.stdin.read()
        else:
            with open(list_file, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        _report(
            on_error,
            list_file,
            f"cannot read the list file: {getattr(exc, 'strerror', None) or exc}",
        )
        return []
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _sort_key(relpath: str) -> tuple[str, ...]:
    return tuple(relpath.split(os.sep))


class _Walker:
    """Collects items in order, skipping files already taken (same real path)."""

    def __init__(
        self, recursive: bool, include_hidden: bool, exts: frozenset[str], on_error: OnError | None
    ) -> None:
        self.recursive = recursive
        self.include_hidden = include_hidden
        self.exts = exts
        self.on_error = on_error
        self.items: list[InputItem] = []
        self._seen: set[str] = set()

    def _take(self, path: str, root: str, relpath: str) -> None:
        real = os.path.realpath(path)
        if real in self._seen:
            logger.debug("%s: already listed (same file as an earlier input); skipped", path)
            return
        self._seen.add(real)
        self.items.append(InputItem(path, root, relpath))

    def add_argument(self, arg: str, *, listed: bool = False) -> None:
        """Add one argument; a ``listed`` one (from a list file) that does not exist is data, as a
        folder's entries are: one input that fails when decoded, not an error of the expansion."""
        if listed and not os.path.exists(arg) and not (_has_magic(arg) and glob.glob(arg)):
            if arg != STDIN:
                self._take(arg, os.path.dirname(arg) or ".", os.path.basename(arg))
                return
        if arg == STDIN:
            self.items.append(InputItem(STDIN, STDIN, STDIN))
        elif os.path.isdir(arg):
            self._add_directory(arg, arg)
        elif os.path.exists(arg):  # a file, or a named pipe such as bash's <(...)
            self._take(arg, os.path.dirname(arg) or ".", os.path.basename(arg))
        elif os.path.lexists(arg):
            _report(self.on_error, arg, "broken symbolic link")
        elif _has_magic(arg):
            self._add_glob(arg)
        else:
            _report(self.on_error, arg, "no such file or directory")

    def _add_glob(self, pattern: str) -> None:
        root = _glob_root(pattern)
        hidden: dict[str, Any] = (
            {"include_hidden": self.include_hidden} if sys.version_info >= (3, 11) else {}
        )
        matches = glob.glob(pattern, recursive=True, **hidden)
        if not matches:
            _report(
                self.on_error, pattern, "no such file or directory (the pattern matched nothing)"
            )
            return
        for match in sorted(matches, key=lambda m: _sort_key(os.path.relpath(m, root))):
            if os.path.isdir(match):
                self._add_directory(match, root)
            else:  # a file, or a broken link: one input that fails when decoded
                self._take(match, root, os.path.relpath(match, root))

    def _add_directory(self, directory: str, root: str) -> None:
        found: list[tuple[str, str]] = []  # (path, relpath)
        visited: set[tuple[int, int]] = set()

        def walk_error(exc: OSError) -> None:
            path = exc.filename or directory
            if os.path.normpath(path) == os.path.normpath(directory):  # the folder named itself
                _report(self.on_error, path, exc.strerror or str(exc))
            else:  # a sub-folder: one input that fails when decoded, saying why
                found.append((path, os.path.relpath(path, root)))

        for dirpath, dirnames, filenames in os.walk(
            directory, onerror=walk_error, followlinks=True
        ):
            stat = os.stat(dirpath)
            if (stat.st_dev, stat.st_ino) in visited:  # a symlink loop or a second link to a folder
                dirnames[:] = []
                continue
            visited.add((stat.st_dev, stat.st_ino))
            dirnames[:] = (
                sorted(d for d in dirnames if self._wanted_name(d)) if self.recursive else []
            )
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if self._wanted_name(name) and os.path.splitext(name)[1].lower() in self.exts:
                    found.append((path, os.path.relpath(path, root)))
        if not found:  # INFO: a caller with nothing at all to do says so itself, once
            logger.info("%s: no audio or video files found", directory)
        for path, relpath in sorted(found, key=lambda item: _sort_key(item[1])):
            # a broken link (or a fifo, a socket, a sub-folder that cannot be listed) found here is
            # one input among others: it fails when decoded, with an error record, and the rest of
            # the folder still runs
            self._take(path, root, relpath)

    def _wanted_name(self, name: str) -> bool:
        return self.include_hidden or not name.startswith(".")


def _has_magic(text: str) -> bool:
    return any(char in text for char in "*?[")


def _glob_root(pattern: str) -> str:
    """The leading directories of ``pattern`` that contain no glob characters (``"."`` if none)."""
    head = pattern
    while _has_magic(head):
        head = os.path.dirname(head)
    return head or "."
