"""The same folder through ``salmonn transcribe`` locally and on a local Ray, side by side.

    python benchmarks/bench_ray.py [--clips 16] [--seconds 8] [--workers 1 2] [--batch-size 4]

Writes the tiny model and a folder of generated clips to a temporary folder, then runs, each in a
fresh process (start-up and model load included): a local run, and ``--ray local --ray-workers N``
for each N (each worker gets ``cores // N`` CPUs, so every run may use the whole machine). Prints
wall time and files per second, and Ray's own start-up costs measured in this process: ``ray.init``
of a local cluster, the first worker ready (its process start, imports and model load) and
``ray.shutdown``. On a machine with few cores the point is the overhead, not a speed-up; the load
average printed beside each run says how busy the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import timed_salmonn, write_clips


def run_cli(args: list[str], env: dict[str, str], out: Path) -> tuple[float, int]:
    """Wall seconds of one run and the records it wrote."""
    wall = timed_salmonn([*args, "-o", str(out)], env)
    return wall, sum(1 for line in out.read_text(encoding="utf-8").splitlines() if line.strip())


def ray_overhead(model: dict[str, str], cpus: int) -> dict[str, float]:
    """Seconds for ray.init (local), the first worker ready (process, imports, model) and shutdown."""
    import ray

    from salmonn.cluster.runner import SalmonnWorker

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    t1 = time.perf_counter()
    worker = ray.remote(SalmonnWorker).options(num_cpus=cpus).remote(model)
    info = ray.get(worker.ready.remote())
    t2 = time.perf_counter()
    if info["load_error"]:
        raise SystemExit(f"worker could not load the model: {info['load_error']}")
    ray.shutdown()
    t3 = time.perf_counter()
    return {"init_s": t1 - t0, "worker_ready_s": t2 - t1, "shutdown_s": t3 - t2}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args(argv)

    from salmonn.model.tiny import write_tiny_model

    cores = os.cpu_count() or 1
    os.environ.update(HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")  # a throw-away local Ray
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        root = Path(tmp)
        tiny = write_tiny_model(root / "tiny", seed=0)
        clips = root / "clips"
        write_clips(clips, args.clips, args.seconds)
        model = {"whisper": tiny.whisper, "beats": tiny.beats, "llm": tiny.llm}
        model["checkpoint"] = tiny.checkpoint
        flags = [f"--{k}={v}" for k, v in model.items()]
        common = ["transcribe", str(clips), *flags, "--device", "cpu", "-q"]
        common += ["--batch-size", str(args.batch_size), "--max-new-tokens", "8"]

        rows = []
        runs = [("local", [])] + [
            (
                f"--ray local --ray-workers {n} ({max(1, cores // n)} CPUs each)",
                [
                    "--ray",
                    "local",
                    "--ray-workers",
                    str(n),
                    "--ray-cpus-per-worker",
                    str(max(1, cores // n)),
                ],
            )
            for n in args.workers
        ]
        for i, (label, extra) in enumerate(runs):
            load = os.getloadavg()[0]
            wall, count = run_cli([*common, *extra], env, root / f"out{i}.jsonl")
            if count != args.clips:
                raise SystemExit(f"{label}: {count} records for {args.clips} clips")
            rows.append((label, wall, count / wall, load))

        overhead = ray_overhead({**model, "device": "cpu"}, cores)

    audio = args.clips * args.seconds
    print(
        f"{args.clips} clips x {args.seconds:g} s = {audio:g} s of audio, tiny model, "
        f"batch size {args.batch_size}, {cores} cores"
    )
    print(f"{'run':<48} {'wall s':>8} {'files/s':>8} {'vs local':>9} {'load avg':>9}")
    for label, wall, rate, load in rows:
        print(f"{label:<48} {wall:8.1f} {rate:8.2f} {wall - rows[0][1]:+8.1f}s {load:9.2f}")
    print(
        "Ray start-up, measured here: ray.init (local) {init_s:.1f} s; first worker ready "
        "(process, imports, model load) {worker_ready_s:.1f} s; ray.shutdown {shutdown_s:.1f} s".format(
            **overhead
        )
    )
    print(json.dumps({"runs": rows, "overhead": overhead}))


if __name__ == "__main__":
    main()
