"""Peak memory of ``salmonn transcribe`` on one file, 10 min vs 3 h: it should not grow with length.

Each run is a fresh process running the real CLI in-process (tiny model, greedy, batch 8 unless
changed) on a file made with ffmpeg's lavfi (a tone with noise, mp3 16 kHz mono); it reports its
own peak RSS (``ru_maxrss``; ffmpeg's separate process is not counted), the peak of RSS sampled
every 0.25 s over the second half of the run (growth with length shows there, apart from the
first batch's transient, which varies by tens of MB from run to run), and wall time.

    python benchmarks/bench_memory.py                        # 10 min and 3 h, tiny model
    python benchmarks/bench_memory.py --minutes 10 60        # other lengths
    python benchmarks/bench_memory.py --fake-model           # the pipeline alone (no model)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def make_file(folder: Path, minutes: float) -> Path:
    from salmonn.audio.decode import find_ffmpeg

    path = folder / f"tone_{minutes:g}min.mp3"
    if path.is_file():
        return path
    seconds = minutes * 60
    cmd = [
        find_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"sine=frequency=330:sample_rate=16000:duration={seconds}",
        "-f", "lavfi", "-i", f"anoisesrc=color=pink:amplitude=0.05:sample_rate=16000:duration={seconds}",
        "-filter_complex", "amix=inputs=2:duration=shortest",
        "-ac", "1", "-b:a", "32k", str(path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return path


def child(path: str, tiny_dir: str, fake: bool, batch: int) -> None:
    """Transcribe ``path`` in this process; print peak RSS and time as JSON."""
    import threading

    began = time.perf_counter()
    samples: list[tuple[float, float]] = []

    def sample() -> None:
        while True:
            with open("/proc/self/statm") as statm:
                pages = int(statm.read().split()[1])
            samples.append(
                (time.perf_counter() - began, pages * os.sysconf("SC_PAGE_SIZE") / 2**20)
            )
            time.sleep(0.25)

    if os.path.exists("/proc/self/statm"):
        threading.Thread(target=sample, daemon=True).start()
    if fake:
        from types import SimpleNamespace

        from salmonn.audio.inputs import expand_inputs
        from salmonn.jobs.engine import process
        from salmonn.jobs.spec import TaskSpec

        class Fake:
            identity: dict = {}  # noqa: RUF012 - never changed

            def generate(self, waves, prompts, options):
                return [SimpleNamespace(text=f"{len(w)}") for w in waves]

            def generate_text(self, prompts, options):
                return [SimpleNamespace(text="") for _ in prompts]

        for _ in process(Fake(), expand_inputs([path]), TaskSpec("t", "p"), batch_size=batch):
            pass
    else:
        from salmonn_cli.main import cli

        paths = json.loads((Path(tiny_dir) / "paths.json").read_text())
        args = ["transcribe", path, "--num-beams", "1", "--max-new-tokens", "8", "-q"]
        args += ["--batch-size", str(batch), "-o", os.devnull]
        for key in ("whisper", "beats", "llm", "checkpoint"):
            args += [f"--{key}", paths[key]]
        cli.main(args, standalone_mode=False)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = time.perf_counter() - began
    late = [mib for t, mib in samples if t >= seconds / 2]
    result = {
        "peak_mib": round(peak_kib / 1024, 1),
        "second_half_peak_mib": round(max(late), 1) if late else None,
        "seconds": round(seconds, 1),
    }
    print(json.dumps(result))


def measure(path: Path, tiny_dir: Path, fake: bool, batch: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(path),
        "--tiny-dir",
        str(tiny_dir),
        "--batch-size",
        str(batch),
    ]
    if fake:
        cmd.append("--fake-model")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 180])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--fake-model", action="store_true", help="no model: decoding + engine only"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the files here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tiny-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.tiny_dir, args.fake_model, args.batch_size)
        return 0
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="salmonn-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    tiny_dir = work / "tiny"
    if not (tiny_dir / "paths.json").is_file():
        from dataclasses import asdict

        from salmonn.model.tiny import write_tiny_model

        paths = write_tiny_model(tiny_dir, seed=0)
        (tiny_dir / "paths.json").write_text(json.dumps(asdict(paths)))
    rows = []
    for minutes in args.minutes:
        path = make_file(work, minutes)
        result = measure(path, tiny_dir, args.fake_model, args.batch_size)
        rows.append((minutes, result))
        late = result["second_half_peak_mib"]
        late_text = "-" if late is None else f"{late:.1f}"
        print(
            f"{minutes:>7g} min: peak RSS {result['peak_mib']:8.1f} MiB, "
            f"second-half peak {late_text} MiB, {result['seconds']:7.1f} s",
            flush=True,
        )
    if len(rows) > 1:
        for key, label in (("peak_mib", "peak"), ("second_half_peak_mib", "second-half peak")):
            first, last = rows[0][1][key], rows[-1][1][key]
            if first and last:
                print(f"longest vs shortest: {100 * (last / first - 1):+.1f} % {label} RSS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
