"""Throughput of ``salmonn serve``: the same N chat requests one at a time, then all at once.

The server runs in a subprocess on 127.0.0.1 with a decode-heavy random model: tiny encoders
(Whisper 64 wide, BEATs one layer) and a random LLaMA of ``--layers`` x ``--hidden`` (default
8 x 1024, FFN 2816), where the LLM dominates as it does with real weights on a GPU. EOS is
suppressed, so every answer is exactly ``--new-tokens`` long and the numbers do not depend on when
a random model happens to stop; decoding is greedy (``--num-beams 1``) unless ``--num-beams`` says
otherwise. The client uses the official openai SDK; the concurrent answers are checked to equal the
sequential ones.

    python benchmarks/bench_serve.py                         # 16 requests, 5 s clips, 32 tokens
    python benchmarks/bench_serve.py --requests 32 --max-batch-size 16
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SR = 16_000
INSTRUCTION = "Describe the audio."


# ---------------------------------------------------------------------------------------- server


def _serve(args: argparse.Namespace) -> None:
    """The server process: build the random model and serve it until SIGTERM."""
    import torch

    sys.path.insert(0, str(HERE))
    from _models import suppress_eos
    from bench_model import _random_model

    from salmonn.config import GenerationOptions
    from salmonn.serve import ServeConfig, run_server

    if args.threads:
        torch.set_num_threads(args.threads)
    dims = {
        "whisper": (64, 2, 2, 256),
        "beats_layers": 1,
        "llm": (args.hidden, args.layers, args.ffn),
    }

    def load() -> Any:
        torch.manual_seed(0)
        model = _random_model(torch.device("cpu"), torch.float32, dims)
        suppress_eos(model)
        return model

    config = ServeConfig(
        port=args.port,
        served_model_name="bench",
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_queue=max(64, args.requests),
        generation=GenerationOptions(max_new_tokens=args.new_tokens, num_beams=args.num_beams),
    )
    run_server(
        config, load, on_ready=lambda url: print(f"ready {url}", file=sys.stderr, flush=True)
    )


# ---------------------------------------------------------------------------------------- client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clips(folder: Path, count: int, seconds: float) -> list[str]:
    import numpy as np
    import soundfile as sf

    encoded = []
    for i in range(count):
        t = np.arange(int(SR * seconds)) / SR
        wave = 0.3 * np.sin(2 * np.pi * (150 + 37 * i) * t)
        path = folder / f"clip{i:02d}.wav"
        sf.write(path, wave.astype(np.float32), SR, subtype="PCM_16")
        encoded.append(base64.b64encode(path.read_bytes()).decode())
    return encoded


def _metrics(base: str) -> dict[str, float]:
    with urllib.request.urlopen(base + "/metrics", timeout=30) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _calls(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("salmonn_batch_size_count"))


def _wait_ready(base: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("server not ready in time")


@contextlib.contextmanager
def serving(script: str, options: list[str]) -> Iterator[tuple[str, Any]]:
    """Run ``script --serve --port P OPTIONS`` as the server; yields its base URL and an openai
    client, and stops the server (SIGTERM, then kill) on the way out."""
    from openai import OpenAI

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, script, "--serve", "--port", str(port), *options]
    server = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        _wait_ready(base, server)
        yield base, OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def run(args: argparse.Namespace) -> dict[str, Any]:
    options: list[str] = []
    for name in ("layers", "hidden", "ffn", "new_tokens", "num_beams", "max_batch_size", "threads"):
        value = getattr(args, name)
        if value is not None:
            options += [f"--{name.replace('_', '-')}", str(value)]
    options += ["--batch-wait-ms", str(args.batch_wait_ms), "--requests", str(args.requests)]
    with serving(__file__, options) as (base, client):
        with tempfile.TemporaryDirectory() as folder:
            clips = _clips(Path(folder), args.requests, args.seconds)

        def ask(i: int) -> str:
            answer = client.chat.completions.create(
                model="bench",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": INSTRUCTION},
                            {
                                "type": "input_audio",
                                "input_audio": {"data": clips[i], "format": "wav"},
                            },
                        ],
                    }
                ],
            )
            assert answer.usage.completion_tokens == args.new_tokens, answer.usage
            return answer.choices[0].message.content

        for i in range(min(2, args.requests)):  # warm-up
            ask(i)
        t = time.perf_counter()
        sequential = [ask(i) for i in range(args.requests)]
        seq_s = time.perf_counter() - t
        before = _metrics(base)
        t = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            concurrent = list(pool.map(ask, range(args.requests)))
        con_s = time.perf_counter() - t
        after = _metrics(base)
        if concurrent != sequential:
            raise SystemExit("concurrent answers differ from the sequential ones")
        calls = _calls(after) - _calls(before)
        return {
            "requests": args.requests,
            "sequential_s": seq_s,
            "concurrent_s": con_s,
            "sequential_rps": args.requests / seq_s,
            "concurrent_rps": args.requests / con_s,
            "ratio": seq_s / con_s,
            "model_calls_concurrent": calls,
            "load_average": os.getloadavg(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=None, help="default: --requests")
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=2816)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None, help="server torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args)
        return 0
    args.concurrency = args.concurrency or args.requests
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"LLaMA {args.layers}x{args.hidden} (FFN {args.ffn}), {args.requests} requests, "
        f"{args.seconds:g} s clips, {args.new_tokens} tokens, {args.num_beams} beam(s), "
        f"max batch {args.max_batch_size}"
    )
    print(f"sequential : {result['sequential_s']:7.2f} s  {result['sequential_rps']:6.3f} req/s")
    print(
        f"concurrent : {result['concurrent_s']:7.2f} s  {result['concurrent_rps']:6.3f} req/s  "
        f"({result['model_calls_concurrent']:.0f} model calls for {args.requests} requests)"
    )
    print(f"ratio      : {result['ratio']:.2f}x   load average {result['load_average']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
