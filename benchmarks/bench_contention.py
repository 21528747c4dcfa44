"""Decoding when the CPU is shared: torch's default threads vs the ones ``salmonn`` sets.

Each configuration runs in a child process (OpenMP reads its settings once, when torch loads):

* ``torch default``: nothing set, torch's own thread count and OpenMP's default (spinning) wait;
* ``salmonn``: what the ``salmonn`` command sets before torch loads
  (:func:`salmonn.model.threads.configure_threads`: the CPUs this process may use, passive wait).

In each child, ``generate`` on 4 clips (4 beams, 16 new tokens, the decode-heavy random model of
``_models.py``) is timed idle, beside 1 and 3 busy neighbour processes, and beside ffmpeg decoding a
file in a loop. Printed per row: the time, the slowdown against the same configuration idle, and
the slowdown a fair share of the CPU gives (CFS: ``n`` busy neighbours and ``T`` threads on ``c``
cores leave each thread ``c / (n + T)`` of a core when ``n + T > c``).

    python benchmarks/bench_contention.py            # about 4 minutes on 2 cores

Run it on an otherwise idle machine: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIOS = [("idle", 0, False), ("1 busy neighbour", 1, False), ("3 busy neighbours", 3, False),
             ("ffmpeg decoding alongside", 0, True)]  # fmt: skip
BUSY = "while True: pass"


def _child(repeats: int) -> None:
    """In the child: build the model, then time ``generate`` for each scenario the parent starts."""
    sys.path.insert(0, str(HERE))
    import numpy as np
    import torch
    from _models import decode_heavy_model, suppress_eos

    from salmonn.config import GenerationOptions

    model = decode_heavy_model()
    suppress_eos(model)
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(16000 * s)).astype(np.float32) for s in (3, 5, 7, 9)]
    options = GenerationOptions(num_beams=4, max_new_tokens=16)
    model.generate(clips[:1], "Describe the audio.", options)  # warm-up
    print(json.dumps({"threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:  # the parent says when its neighbours run
        if line.strip() != "go":
            break
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(clips, "Describe the audio.", options)
            best = min(best, time.perf_counter() - start)
        print(json.dumps({"seconds": best}), flush=True)


def _neighbours(count: int, ffmpeg_file: Path | None) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(count)]
    if ffmpeg_file is not None:
        from salmonn.audio.decode import find_ffmpeg

        loop = (
            "import subprocess, sys\n"
            "while True:\n"
            "    subprocess.run([sys.argv[1], '-nostdin', '-v', 'quiet', '-i', sys.argv[2], '-ar',"
            " '16000', '-ac', '1', '-f', 'f32le', '-y', '/dev/null'])\n"
        )
        procs.append(
            subprocess.Popen([sys.executable, "-c", loop, find_ffmpeg(), str(ffmpeg_file)])
        )
    time.sleep(0.5)
    return procs


def _run(config: str, repeats: int, ffmpeg_file: Path) -> tuple[int, list[float]]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if config == "salmonn":
        from salmonn.model.threads import configure_threads

        configure_threads(env)
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", "--repeats", str(repeats)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    threads = json.loads(child.stdout.readline())["threads"]
    times = []
    for _, busy, with_ffmpeg in SCENARIOS:
        procs = _neighbours(busy, ffmpeg_file if with_ffmpeg else None)
        try:
            child.stdin.write("go\n")
            child.stdin.flush()
            times.append(json.loads(child.stdout.readline())["seconds"])
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    child.stdin.write("stop\n")
    child.stdin.close()
    child.wait()
    return threads, times


def _fair(neighbours: int, threads: int, cores: int) -> float:
    """The slowdown a fair (CFS) share gives ``threads`` beside ``neighbours`` busy processes."""
    return max(1.0, (neighbours + threads) / cores) / max(1.0, threads / cores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="best of N per scenario")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.repeats)
        return
    from salmonn.audio.decode import find_ffmpeg

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "noise.wav"
        subprocess.run(
            [find_ffmpeg(), "-nostdin", "-v", "quiet", "-f", "lavfi", "-i",
             "anoisesrc=d=600:c=pink:r=44100", "-ac", "2", str(wav)],
            check=True,
        )  # fmt: skip
        print(f"load average before: {os.getloadavg()[0]:.2f}; {cores} cores")
        results = {c: _run(c, args.repeats, wav) for c in ("torch default", "salmonn")}
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(
        f"{'scenario':<28}" + "".join(f"{c + f' ({t} thr)':>26}" for c, (t, _) in results.items())
    )
    for i, (name, busy, _) in enumerate(SCENARIOS):
        cells = []
        for threads, times in results.values():
            fair = _fair(busy + (name.startswith("ffmpeg")), threads, cores)  # ffmpeg: one more
            cells.append(f"{times[i]:6.2f} s  x{times[i] / times[0]:4.2f} (fair x{fair:4.2f})")
        print(f"{name:<28}" + "".join(f"{c:>26}" for c in cells))
    base, ours = results["torch default"][1], results["salmonn"][1]
    print("salmonn vs torch default, per scenario: "
          + ", ".join(f"{b / o:.2f}x" for b, o in zip(base, ours, strict=True)))  # fmt: skip


if __name__ == "__main__":
    main()
