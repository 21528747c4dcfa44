"""End-to-end throughput of the ``salmonn`` CLI on the tiny model, and its start-up time.

    python benchmarks/bench_cli.py [--clips 16] [--seconds 8] [--batch-sizes 1 8] [--device cpu]

Writes the tiny model and a folder of generated clips to a temporary folder, runs
``salmonn transcribe FOLDER -o out.jsonl`` once per batch size in a fresh process (start-up and model
load included), and prints audio seconds per wall second. Also times ``salmonn --help`` (best of 5).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

from _common import salmonn_command, timed_salmonn, write_clips


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--num-beams", type=int, default=1)
    args = parser.parse_args(argv)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="salmonn-bench-") as tmp:
        root = Path(tmp)
        tiny = json.loads(
            subprocess.run(
                [*salmonn_command(), "dev", "tiny-model", str(root / "tiny")],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
        )
        audio_s = write_clips(root / "clips", args.clips, args.seconds)
        model = [
            "--whisper",
            tiny["whisper"],
            "--beats",
            tiny["beats"],
            "--llm",
            tiny["llm"],
            "--checkpoint",
            tiny["checkpoint"],
            "--device",
            args.device,
        ]
        decoding = [
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--num-beams",
            str(args.num_beams),
        ]
        print(
            f"{args.clips} clips x {args.seconds:g} s = {audio_s:g} s of audio, tiny model, "
            f"{args.device}, {' '.join(decoding)}"
        )
        for batch in args.batch_sizes:
            out = root / f"out-b{batch}.jsonl"
            wall = timed_salmonn(
                [
                    "transcribe",
                    str(root / "clips"),
                    "-o",
                    str(out),
                    "-q",
                    "--batch-size",
                    str(batch),
                    *model,
                    *decoding,
                ],
                env,
            )
            records = [json.loads(line) for line in out.read_text().splitlines()]
            model_s = sum(r["timings"]["model_s"] for r in records)
            print(
                f"  --batch-size {batch:>2}: {wall:6.2f} s wall end to end, "
                f"{audio_s / wall:6.1f} audio-s per wall-s; model time {model_s:.2f} s "
                f"({audio_s / model_s:.1f} audio-s per model-s)"
            )
        best = min(timed_salmonn(["--help"], env) for _ in range(5))
        print(f"  salmonn --help: {best * 1000:.0f} ms (best of 5)")


if __name__ == "__main__":
    main()
