"""Helpers shared by several test modules (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from salmonn.audio.decode import find_ffmpeg

SR = 16_000


def tone(
    path: Path, seconds: float, freq: float = 440.0, *, wobble_hz: float = 0.0, rate: int = SR
) -> Path:
    """Write a 0.3-amplitude sine of ``freq`` Hz to ``path`` (its folder made); ``wobble_hz``
    modulates its loudness by half at that rate."""
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t)
    if wobble_hz:
        wave = wave * (1 + 0.5 * np.sin(2 * np.pi * wobble_hz * t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), rate)
    return path


def invoke(args, **kw):
    """``salmonn ARGS`` through Click's CliRunner (stdout and stderr apart)."""
    from salmonn_cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args], **kw)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def salmonn_command() -> list[str]:
    """The console script installed beside this Python, else on PATH, else ``python -m salmonn_cli``."""
    beside = Path(sys.executable).with_name("salmonn")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("salmonn")
    return [found] if found else [sys.executable, "-m", "salmonn_cli"]


def cli_env(**extra: str) -> dict[str, str]:
    """This environment for a ``salmonn`` subprocess: no SALMONN_* variable, no user config,
    offline; ``extra`` added."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SALMONN_")}
    return {
        **clean,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "XDG_CONFIG_HOME": "/nonexistent",
        **extra,
    }


_GATE_SCRIPT = """#!{python} -S
# ffmpeg for one test run: a decode of a file whose name ends with {hold!r} waits until {opened!r}
# exists (or this process's parent, the salmonn run, is gone), then the real ffmpeg runs.
import os, sys, time
args = sys.argv[1:]
if "pipe:1" in args and any(a.endswith({hold!r}) for a in args):
    open({held!r}, "w").close()
    parent, deadline = os.getppid(), time.monotonic() + {seconds!r}
    while not os.path.exists({opened!r}):
        if os.getppid() != parent or time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.02)
os.execv({real!r}, [{real!r}, *args])
"""


class FfmpegGate:
    """Holds a salmonn run at a known point: the decoding of one input waits until :meth:`open`.

    Run the CLI with ``env={**env, **gate.env}``: its ffmpeg is a small script that runs the real
    ffmpeg, except that decoding the input named ``hold`` blocks first. While it blocks, the
    records of the inputs before it are written and none after it can be (inputs are decoded and
    answered in order), so a test can interrupt a run mid-way without racing the machine's load.
    The script gives up (exit 1) when its parent dies or after ``seconds``.
    """

    def __init__(self, folder: Path, hold: str, seconds: float = 600.0) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._held, self._opened = folder / "held", folder / "opened"
        script = folder / "ffmpeg"
        script.write_text(
            _GATE_SCRIPT.format(
                python=sys.executable,
                hold=hold,
                held=str(self._held),
                opened=str(self._opened),
                seconds=seconds,
                real=find_ffmpeg(),
            ),
            encoding="utf-8",
        )
        script.chmod(0o755)
        self.env = {"SALMONN_FFMPEG": str(script)}

    def held(self) -> bool:
        """Whether a decode of the held input has started waiting."""
        return self._held.exists()

    def open(self) -> None:
        """Let the held decoding (and every later one) go on."""
        self._opened.touch()

    def close(self) -> None:
        """Hold the next decoding of the held input again."""
        self._opened.unlink(missing_ok=True)
        self._held.unlink(missing_ok=True)


def wait_until(condition, seconds: float, what: str, alive=None) -> None:
    """Poll ``condition()`` until true; fail naming ``what`` after ``seconds`` or when ``alive()``
    turns false first (e.g. the process under test ended)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if alive is not None and not alive():
            raise AssertionError(f"ended before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {seconds:.0f} s")
        time.sleep(0.02)


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def nest_past_path_max(folder: Path) -> str:
    """Nest sub-folders of long names in ``folder`` until a path is longer than the system allows
    (PATH_MAX): listing that deepest folder by its path fails (ENAMETOOLONG), as root too, which
    ``chmod 000`` does not achieve. Returns its path. (Made through directory descriptors, which
    have no such limit; ``shutil.rmtree`` removes the tree the same way.)"""
    limit = os.pathconf("/", "PC_PATH_MAX")
    path, part = str(folder), "d" * 200
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while len(path) < limit:
            os.mkdir(part, dir_fd=fd)
            deeper = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, path = deeper, os.path.join(path, part)
    finally:
        os.close(fd)
    return path
