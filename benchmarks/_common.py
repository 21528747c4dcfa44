"""What the CLI benchmarks share: the ``salmonn`` command, generated clips, one timed run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16_000


def salmonn_command() -> list[str]:
    """The console script installed beside this Python, else on PATH, else ``python -m salmonn_cli``."""
    beside = Path(sys.executable).with_name("salmonn")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("salmonn")
    return [found] if found else [sys.executable, "-m", "salmonn_cli"]


def write_clips(folder: Path, count: int, seconds: float) -> float:
    """``count`` clips of ``seconds`` (tones with noise); returns the total audio seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        t = np.arange(int(SR * seconds)) / SR
        wave = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(folder / f"clip{i:03d}.wav", wave.astype(np.float32), SR)
    return count * seconds


def timed_salmonn(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``salmonn ARGS`` in a fresh process; stops the benchmark when it fails."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [*salmonn_command(), *args], capture_output=True, text=True, env=env, check=False
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"salmonn failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return wall
