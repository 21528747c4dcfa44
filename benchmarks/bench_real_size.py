"""SALMONN-7B's sizes on this machine's CPU: load time, resident memory, encoding, decode steps.

Real weights are not needed: ``--build`` writes random ones at the released sizes and layouts into
DIR first (``salmonn.model.fullsize``: whisper-large-v2 float32, BEATs, a 32 x 4096 LLaMA in float16
shards with a 32,000-piece tokenizer, the 7B checkpoint; about 21 GB, several minutes). Then a fresh
process loads them as ``--dtype`` (bfloat16 unless told) and reports

* load time, and resident memory split into anonymous pages (what the process owns) and
  file-backed pages (memory-mapped weight files, which the kernel can drop), with the footprint
  estimate that ``doctor`` and the loader use;
* encoding one 10 s clip with the encoders under the LLM's dtype (the fast mode's autocast) and in
  float32, and how far apart their audio vectors are (relative L2 distance, lowest cosine of a
  vector) and the greedy answers that follow from each;
* ms per decode step at batch 1 and 4 (the fast mode's decoder, greedy, EOS suppressed; the median
  of the steps after the prefill),
  next to the memory-bandwidth bound: the LLM's weight bytes / this machine's copy bandwidth
  (STREAM's convention, bytes read plus bytes written per second, best of 5 copies of 1 GiB).

    python benchmarks/bench_real_size.py /data/salmonn-random --build   # write ~21 GB, then measure
    python benchmarks/bench_real_size.py /data/salmonn-random           # measure what is there
    python benchmarks/bench_real_size.py /tmp/small --build --small     # same code, small widths

Random weights decode like real ones (every step reads every weight once) but encode no meaning:
the agreement figures say how much bfloat16 moves the numbers, not what a listener would hear.
Run it on an idle machine; the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROMPTS = ("Please describe the audio.", "Recognize the speech and give me the transcription.")


def load_average() -> float:
    return os.getloadavg()[0]


def copy_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second moved by a large tensor copy (read plus write), best of ``repeats``."""
    src = torch.ones(int(gib * 2**30) // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - began)
    return 2 * src.numel() * 4 / best


def memory() -> dict[str, float]:
    """This process's resident memory (GiB): anonymous, file-backed, and the peak."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024 / 2**30
    return {
        "anon_gib": fields["RssAnon"],
        "file_gib": fields["RssFile"],
        "peak_gib": fields["VmHWM"],
    }


class AnonPeak:
    """The highest anonymous RSS seen while in the ``with`` block (sampled every 50 ms): what a load
    takes for itself, where ``VmHWM`` also counts file pages the kernel may drop."""

    def __enter__(self) -> AnonPeak:
        self.peak_gib, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            self.peak_gib = max(self.peak_gib, memory()["anon_gib"])
            if self._stop.wait(0.05):
                return

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def kernel_bandwidth(matrices: Sequence[torch.Tensor], rows: int, repeats: int = 3) -> float:
    """Bytes per second that ``torch.nn.functional.linear`` streams through ``matrices`` (the
    LLM's own weights, together larger than any cache) for an input of ``rows`` rows."""
    x = torch.randn(rows, matrices[0].shape[1]).to(matrices[0].dtype)
    with torch.inference_mode():
        for w in matrices:
            torch.nn.functional.linear(x, w)
        best = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            for w in matrices:
                torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - began)
    return sum(w.numel() * w.element_size() for w in matrices) / best


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - began, out


def _clip(seconds: float = 10.0) -> np.ndarray:
    """A tone sweep with noise, 16 kHz."""
    t = np.arange(int(16_000 * seconds)) / 16_000
    rng = np.random.default_rng(0)
    wave = 0.3 * np.sin(2 * np.pi * (200 + 30 * t) * t) + 0.02 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a, b = a.float().flatten(0, -2), b.float().flatten(0, -2)
    return {
        "relative_l2": float((a - b).norm() / a.norm()),
        "min_cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min()),
    }


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def child(root: str, dtype: str, tokens: int, batches: Sequence[int]) -> dict[str, Any]:
    """Everything measured inside one fresh process (so that its memory is the model's)."""
    from salmonn import load_model
    from salmonn.config import GenerationOptions
    from salmonn.hub.resolve import resolve_components
    from salmonn.model.footprint import estimate
    from salmonn.model.llm import base_model
    from salmonn.model.tiny import TinyModelPaths

    paths = TinyModelPaths.under(root)
    comps = resolve_components(None, paths.whisper, paths.beats, paths.llm, paths.checkpoint)
    report: dict[str, Any] = {"dtype": dtype, "threads": torch.get_num_threads()}
    report["estimate_gib"] = estimate(comps, dtype).total / 2**30
    with AnonPeak() as peak:
        report["load_s"], model = _timed(
            load_model,
            paths.whisper,
            paths.beats,
            paths.llm,
            paths.checkpoint,
            device="cpu",
            dtype=dtype,
        )
    report["after_load"] = memory()
    report["load_anon_peak_gib"] = peak.peak_gib
    llm_bytes = sum(p.numel() * p.element_size() for p in model.llama_model.parameters())
    report["llm_gb"] = llm_bytes / 1e9
    report["embedding_rows"] = model.llama_model.get_input_embeddings().num_embeddings

    waves = model._waves([_clip()])

    def encode(autocast: bool) -> torch.Tensor:
        with torch.inference_mode(), model.encoder_attention(False):
            if autocast:
                with model.precision():
                    return model._encode(waves, None)
            return model._encode(waves, None)

    encode(True)  # first call: one-time allocations
    report["encode_autocast_s"], low = _timed(lambda: encode(True))
    report["encode_float32_s"], high = _timed(lambda: encode(False))
    report["encoder_agreement"] = _agreement(high, low)

    eos = model.tokenizer.eos_id
    head = model.llama_model.get_output_embeddings()
    head.register_forward_hook(
        lambda _m, _i, logits: logits.index_fill_(-1, torch.tensor([eos]), -1e4)
    )
    options = GenerationOptions(num_beams=1, do_sample=False, max_new_tokens=tokens)

    def decode(audio: torch.Tensor, prompts: Sequence[str]) -> tuple[float, list[float], list]:
        """Prefill seconds, seconds of each decode step, and the answers (the fast mode's decoder)."""
        with torch.inference_mode(), model.precision():
            embeds, mask = model.build_inputs(audio, prompts)
            decoder = model.new_decoder(options)
            prefill, _ = _timed(decoder.add, list(range(len(prompts))), embeds, mask)
            times, answers = [], {}
            while decoder.running:
                seconds, finished = _timed(decoder.step)
                times.append(seconds)
                answers.update(finished)
        # The last step only picks the last token: no forward pass follows it.
        return prefill, times[:-1], [answers[i] for i in range(len(prompts))]

    steps, answers = {}, []
    for batch in batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        prefill, times, ids = decode(low.expand(batch, -1, -1), prompts)
        steps[str(batch)] = {"step_ms": 1000 * float(np.median(times)), "prefill_s": prefill}
        if batch == 1:
            answers.append(ids[0])
    report["steps"] = steps
    layers = base_model(model.llama_model).model.layers
    matrices = [layer.mlp.up_proj.weight for layer in layers[:8]]
    report["kernel_gbs"] = {str(b): kernel_bandwidth(matrices, b) / 1e9 for b in batches}
    if not answers:
        answers.append(decode(low, PROMPTS[:1])[2][0])
    answers.append(decode(high, PROMPTS[:1])[2][0])
    report["answer_tokens_equal"] = _common_prefix(*answers)
    report["answer_tokens"] = tokens
    report["after_run"] = memory()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folder", type=Path, help="where the random weights are (or go, with --build)"
    )
    parser.add_argument("--build", action="store_true", help="write the weights first (~21 GB)")
    parser.add_argument("--small", action="store_true", help="small widths (a smoke run)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"))
    parser.add_argument(
        "--tokens",
        type=int,
        default=9,
        help="tokens per timed answer (>= 2; all but the last step are timed)",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", action="store_true", help="one JSON object, nothing else")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tokens < 2:
        parser.error("--tokens must be at least 2")
    if args.child:
        print(json.dumps(child(str(args.folder), args.dtype, args.tokens, args.batches)))
        return 0

    from salmonn.model.fullsize import SALMONN_7B, SMALL, write_random_model, written_sizes

    sizes = SMALL if args.small else SALMONN_7B
    report: dict[str, Any] = {"load_before": load_average()}
    if written_sizes(args.folder) != sizes:
        if not args.build:
            raise SystemExit(f"{args.folder}: no finished random model of these sizes; add --build")
        report["build_s"], _ = _timed(lambda: write_random_model(args.folder, sizes))
    report["bandwidth_gbs"] = copy_bandwidth() / 1e9
    command = [sys.executable, __file__, str(args.folder), "--child", "--dtype", args.dtype]
    command += ["--tokens", str(args.tokens), "--batches", *map(str, args.batches)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode == -signal.SIGKILL:
        raise SystemExit(
            "measuring was killed (SIGKILL): most likely out of memory; "
            "`salmonn doctor --whisper ... --llm ...` says what fits"
        )
    if done.returncode != 0:
        raise SystemExit(f"measuring failed ({done.returncode}): {done.stderr.strip()[-3000:]}")
    report.update(json.loads(done.stdout.strip().splitlines()[-1]))
    report["load_after"] = load_average()
    bound_ms = 1000 * report["llm_gb"] / report["bandwidth_gbs"]
    report["bound_ms"] = bound_ms
    if args.json:
        print(json.dumps(report))
        return 0
    mem, agree = report["after_load"], report["encoder_agreement"]
    print(
        f"load average {report['load_before']:.2f} before, {report['load_after']:.2f} after; "
        f"{report['threads']} torch threads; LLM {report['dtype']} {report['llm_gb']:.2f} GB"
    )
    if "build_s" in report:
        print(f"wrote the random weights in {report['build_s']:.0f} s")
    print(
        f"load {report['load_s']:.1f} s; resident {mem['anon_gib']:.2f} GiB anonymous + "
        f"{mem['file_gib']:.2f} GiB file-backed (peak anonymous {report['load_anon_peak_gib']:.2f}, "
        f"peak with file pages {mem['peak_gib']:.2f}); "
        f"estimate {report['estimate_gib']:.2f} GiB"
    )
    print(
        f"encode one 10 s clip: {report['encode_autocast_s']:.2f} s under {report['dtype']} "
        f"autocast, {report['encode_float32_s']:.2f} s in float32; audio vectors relative L2 "
        f"{agree['relative_l2']:.2e}, lowest cosine {agree['min_cosine']:.5f}; greedy answers "
        f"equal for {report['answer_tokens_equal']} of {report['answer_tokens']} tokens"
    )
    print(f"copy bandwidth {report['bandwidth_gbs']:.1f} GB/s -> bound {bound_ms:.0f} ms per step")
    for batch, step in report["steps"].items():
        print(
            f"batch {batch}: {step['step_ms']:.0f} ms per decode step "
            f"({step['step_ms'] / bound_ms:.2f}x the bound; a matrix-vector product streams "
            f"{report['kernel_gbs'][batch]:.1f} GB/s here), prefill {step['prefill_s']:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
