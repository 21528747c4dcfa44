"""Audio front end benchmark: decode + chunk speed, peak memory for a short and a very long file.

    python benchmarks/bench_audio.py            # 10 min mp3/m4a speed; RSS for 10 min vs 3 h
    python benchmarks/bench_audio.py --hours 1  # a shorter long file

Files are generated with ffmpeg's lavfi sources (44.1 kHz stereo sine + pink noise); the long file
is the 10-minute mp3 repeated by stream copy (no re-encode, so it takes seconds). Everything is
deleted at the end. Peak RSS is measured in a fresh Python process per file (``ru_maxrss`` of that
process; ffmpeg's own peak is reported separately), so the two figures are comparable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from salmonn.audio.chunking import iter_chunks
from salmonn.audio.decode import decode_command, find_ffmpeg

TEN_MINUTES = 600

_RSS_CHILD = r"""
import json, os, resource, sys, time
from salmonn.audio.chunking import iter_chunks

def rss_kb():  # resident set now (Linux); ru_maxrss elsewhere
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

base = rss_kb()
began = time.perf_counter()
n = seconds = 0
high = base
for chunk in iter_chunks(sys.argv[1]):
    n += 1
    seconds = chunk.end
    high = max(high, rss_kb())
elapsed = time.perf_counter() - began
print(json.dumps({"chunks": n, "seconds": seconds, "elapsed": elapsed, "base_kb": base,
                  "high_kb": high, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "ffmpeg_peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def ffmpeg(*args: str) -> None:
    cmd = [find_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    subprocess.run(cmd, check=True)


def make_inputs(folder: Path, hours: float) -> dict[str, Path]:
    source = [
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={TEN_MINUTES}",
        "-f", "lavfi", "-i",
        f"anoisesrc=color=pink:amplitude=0.1:sample_rate=44100:duration={TEN_MINUTES}",
        "-filter_complex", "[0][1]amix=inputs=2,aformat=channel_layouts=stereo",
    ]  # fmt: skip
    paths = {"mp3": folder / "ten.mp3", "m4a": folder / "ten.m4a"}
    ffmpeg(*source, "-c:a", "libmp3lame", "-b:a", "128k", str(paths["mp3"]))
    ffmpeg(*source, "-c:a", "aac", "-b:a", "128k", str(paths["m4a"]))
    repeats = max(1, round(hours * 3600 / TEN_MINUTES))
    paths["long"] = folder / "long.mp3"
    ffmpeg(
        "-stream_loop", str(repeats - 1), "-i", str(paths["mp3"]), "-c", "copy", str(paths["long"])
    )
    return paths


def speed(path: Path, repeats: int) -> tuple[float, int, float]:
    """(best seconds, chunks, audio seconds) for decoding + chunking ``path``."""
    best, chunks, audio_s = float("inf"), 0, 0.0
    for _ in range(repeats):
        began = time.perf_counter()
        chunks, audio_s = 0, 0.0
        for chunk in iter_chunks(path):
            chunks, audio_s = chunks + 1, chunk.end
        best = min(best, time.perf_counter() - began)
    return best, chunks, audio_s


def ffmpeg_alone(path: Path, repeats: int) -> float:
    """Best seconds of the same ffmpeg decode, output thrown away: the floor for ``speed``."""
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run(decode_command(str(path)), stdout=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - began)
    return best


def peak_rss(path: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=3.0, help="length of the long file")
    parser.add_argument("--repeats", type=int, default=2, help="speed runs per file (best is kept)")
    parser.add_argument("--tmpdir", default=None, help="where to write the generated files")
    args = parser.parse_args()
    print(f"ffmpeg: {find_ffmpeg()}")
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as folder:
        began = time.perf_counter()
        paths = make_inputs(Path(folder), args.hours)
        sizes = {k: p.stat().st_size / 1e6 for k, p in paths.items()}
        print(f"generated inputs in {time.perf_counter() - began:.1f} s: "
              + ", ".join(f"{k} {v:.0f} MB" for k, v in sizes.items()))  # fmt: skip
        print("\ndecode + chunk (16 kHz mono float32, quiet cuts, <= 30 s chunks)")
        for kind in ("mp3", "m4a"):
            floor = ffmpeg_alone(paths[kind], args.repeats)
            seconds, chunks, audio_s = speed(paths[kind], args.repeats)
            print(f"  10 min {kind}: {seconds:.2f} s for {audio_s:.0f} s of audio, {chunks} chunks"
                  f" = {audio_s / seconds:.0f}x real time"
                  f" (ffmpeg alone: {floor:.2f} s = {audio_s / floor:.0f}x)")  # fmt: skip
        print("\nmemory of the Python process (a fresh process per file; imports included)")
        for label, key in (("10 min", "mp3"), (f"{args.hours:g} h", "long")):
            r = peak_rss(paths[key])
            grown = (r["high_kb"] - r["base_kb"]) / 1024
            print(f"  {label:>6} mp3: peak RSS {r['peak_kb'] / 1024:.1f} MiB; while decoding"
                  f" {r['high_kb'] / 1024:.1f} MiB at most ({r['base_kb'] / 1024:.1f} MiB before,"
                  f" +{grown:.1f} MiB),"
                  f" ffmpeg peak {r['ffmpeg_peak_kb'] / 1024:.1f} MiB;"
                  f" {r['chunks']} chunks, {r['seconds']:.0f} s of audio in {r['elapsed']:.1f} s"
                  f" = {r['seconds'] / r['elapsed']:.0f}x real time")  # fmt: skip


if __name__ == "__main__":
    main()
