"""One command for a GPU: SALMONN-13B-shaped random weights, fp16, every throughput number in one JSON.

    python benchmarks/gpu_check.py --out gpu_check.json        # CUDA, about 5-8 min on one H100/H200
    python benchmarks/gpu_check.py --tiny --out tiny.json      # the same code on CPU, tiny model

What it measures (each section is timed and recorded; a failing section records its error and the
run goes on; sections left when ``--budget`` seconds are spent are recorded as skipped):

* ``throughput``: clips/s and audio-s/s of ``generate`` in fast mode at batch 1, 8, 32 and the
  ``auto`` batch, continuous batching at the auto budget, and the original-style loop (exact mode,
  one clip at a time), with peak GPU memory of each;
* ``decode``: ms per decode step at 4, 32 and 128 rows (1, 8, 32 clips x 4 beams) against the HBM
  roofline: bytes a step must read (LLM weights + KV cache) / measured copy bandwidth;
* ``agreement``: exact vs fast token ids on ``--clips`` clips (identical answers, shared prefix);
* ``quantized``: the LLM saved and reloaded through ``load_llm`` with bitsandbytes 8-bit and 4-bit:
  load seconds, memory and speed at batch 8 (CUDA only);
* ``ratio``: fast at the best batch vs the original-style loop.

Random weights: Whisper large-v2, BEATs 12x768, Q-Former 768, LLaMA 40x5120 (FFN 13824), LoRA r=8;
answers are forced to ``--new-tokens`` tokens (EOS suppressed), so timings do not depend on when a
random model stops. ``--tiny`` uses ``salmonn.model.tiny``'s model on CPU, smaller batches and fewer tokens.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import suppress_eos, tiny_model

from salmonn.config import GenerationOptions
from salmonn.model.salmonn_model import SalmonnModel
from salmonn.model.work import WorkItem

PROMPT = "Recognize the speech and give me the transcription."


class Check:
    """Runs sections under a time budget and collects their results."""

    def __init__(self, device: torch.device, budget_s: float) -> None:
        self.device, self.budget_s = device, budget_s
        self.start = time.perf_counter()
        self.report: dict[str, Any] = {}

    def section(self, name: str, fn: Callable[[], Any]) -> None:
        left = self.budget_s - (time.perf_counter() - self.start)
        if left <= 0:
            self.report[name] = {"skipped": f"time budget of {self.budget_s:.0f} s spent"}
            return
        began = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - recorded; the other sections still run
            result = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            traceback.print_exc()
        if isinstance(result, dict):
            result.setdefault("section_s", round(time.perf_counter() - began, 2))
        self.report[name] = result
        print(f"[{time.perf_counter() - self.start:7.1f} s] {name}: done", flush=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any, int | None]:
        """Seconds, result and peak memory (bytes, CUDA) of ``fn()``."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.sync()
        began = time.perf_counter()
        out = fn()
        self.sync()
        seconds = time.perf_counter() - began
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return seconds, out, peak


def _full_size_model(device: torch.device) -> SalmonnModel:
    from bench_model import FULL_SIZE, _random_model

    model = _random_model(device, torch.float16, FULL_SIZE)
    with torch.no_grad():  # peaky next-token scores, as a trained LM's (random ones are flat)
        model.llama_model.get_output_embeddings().weight.normal_(0.0, 0.1)
    return model


def _clips(count: int, seconds: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32) for _ in range(count)
    ]


def _gib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**30, 3)


def _throughput(check: Check, model: SalmonnModel, cfg: dict[str, Any]) -> dict[str, Any]:
    options = cfg["options"]
    auto = model.auto_batch_size(options) if check.device.type == "cuda" else cfg["batches"][-1]
    rows = []
    batches = cfg["batches"] if auto in cfg["batches"] else [*cfg["batches"], auto]
    for batch in batches:
        clips = _clips(batch, cfg["seconds"])
        model.generate(clips[:1], PROMPT, options)  # warm-up (kernels, allocator)
        seconds, _, peak = check.timed(lambda c=clips: model.generate(c, PROMPT, options))
        rows.append(
            _row(
                f"fast, batch {batch}" + (" (auto)" if batch == auto else ""),
                batch,
                seconds,
                cfg,
                peak,
            )
        )
    clips = _clips(2 * auto, cfg["seconds"], seed=1)
    work = [WorkItem(i, PROMPT, c) for i, c in enumerate(clips)]
    seconds, _, peak = check.timed(
        lambda: list(model.generate_stream(work, options, batch_size=auto))
    )
    rows.append(_row(f"fast, continuous budget {auto}", len(clips), seconds, cfg, peak))
    loop_clips = _clips(cfg["loop_clips"], cfg["seconds"], seed=2)
    seconds, _, peak = check.timed(
        lambda: [model.generate([c], PROMPT, options, exact=True) for c in loop_clips]
    )
    rows.append(
        _row("original-style loop (exact, 1 at a time)", len(loop_clips), seconds, cfg, peak)
    )
    return {"auto_batch": auto, "rows": rows}


def _row(
    name: str, clips: int, seconds: float, cfg: dict[str, Any], peak: int | None
) -> dict[str, Any]:
    return {
        "mode": name,
        "clips": clips,
        "seconds": round(seconds, 3),
        "clips_per_s": round(clips / seconds, 4),
        "audio_s_per_s": round(clips * cfg["seconds"] / seconds, 2),
        "peak_gib": _gib(peak),
    }


def _bandwidth(device: torch.device) -> float | None:
    """Device memory bandwidth (bytes/s) from a large copy, or None on CPU."""
    if device.type != "cuda":
        return None
    source = torch.empty(2**30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    torch.cuda.synchronize(device)
    began = time.perf_counter()
    for _ in range(10):
        target.copy_(source)
    torch.cuda.synchronize(device)
    return 2 * 10 * source.numel() / (time.perf_counter() - began)  # read + write


def _decode(check: Check, model: SalmonnModel, cfg: dict[str, Any]) -> dict[str, Any]:
    from salmonn.model.generation import generate_ids

    options = cfg["options"]
    lm = model.llama_model
    weights = sum(p.numel() * p.element_size() for p in lm.parameters())
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    per_position = 2 * base.config.num_hidden_layers * base.config.hidden_size * 2  # K+V fp16
    bandwidth = _bandwidth(check.device)
    rows = []
    for items in cfg["decode_items"]:
        clips = _clips(items, cfg["seconds"], seed=3)
        audio = model.encode_audio(clips)
        with torch.inference_mode(), model.precision():
            embeds, mask = model.build_inputs(audio, [PROMPT] * items)

        def run(tokens: int, e=embeds, m=mask) -> None:
            with torch.inference_mode(), model.precision():
                generate_ids(
                    lm, e, m, options.with_overrides(max_new_tokens=tokens),
                    eos_token_id=model.tokenizer.eos_id, embed_tokens=model.embed_tokens,
                    bos_token_id=model.tokenizer.bos_id,
                )  # fmt: skip

        run(2)
        full, _, _ = check.timed(lambda r=run: r(options.max_new_tokens))
        one, _, _ = check.timed(lambda r=run: r(1))
        step_ms = 1000 * (full - one) / (options.max_new_tokens - 1)
        positions = embeds.shape[1] + options.num_beams * options.max_new_tokens / 2
        read = weights + items * per_position * positions  # every weight + the mean KV cache
        rows.append(
            {
                "rows": items * options.num_beams,
                "step_ms": round(step_ms, 2),
                "bytes_per_step": int(read),
                "roofline_ms": None if bandwidth is None else round(1000 * read / bandwidth, 2),
            }
        )
    return {
        "bandwidth_gb_s": None if bandwidth is None else round(bandwidth / 1e9, 1),
        "rows": rows,
    }


def _agreement(check: Check, model: SalmonnModel, cfg: dict[str, Any]) -> dict[str, Any]:
    options = cfg["options"]
    clips = _clips(cfg["clips"], cfg["seconds"], seed=4)
    fast = [r.token_ids for r in model.generate(clips, PROMPT, options)]
    exact = [r.token_ids for r in model.generate(clips, PROMPT, options, exact=True)]
    shared = []
    for a, b in zip(fast, exact, strict=True):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        shared.append(n / max(len(a), len(b)))
    return {
        "clips": len(clips),
        "identical": sum(a == b for a, b in zip(fast, exact, strict=True)),
        "mean_shared_prefix": round(float(np.mean(shared)), 4),
    }


def _quantized(check: Check, model: SalmonnModel, cfg: dict[str, Any]) -> dict[str, Any]:
    if check.device.type != "cuda":
        return {"skipped": "bitsandbytes 8-bit / 4-bit needs CUDA"}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return {"skipped": "bitsandbytes is not installed (pip install 'salmonn[gpu]')"}
    from salmonn.model.llm import load_llm

    options = cfg["options"]
    folder = Path(tempfile.mkdtemp(prefix="salmonn-gpu-check-llm-"))
    try:
        base = model.llama_model.unload()  # the LLaMA without its LoRA layers
        base.save_pretrained(folder, safe_serialization=True)
        proto = model.tokenizer._sp.serialized_model_proto()  # the same SentencePiece model
        (folder / "tokenizer.model").write_bytes(proto)
        del base
        model.llama_model = None  # type: ignore[assignment]
        torch.cuda.empty_cache()
        rows = []
        for bits in (8, 4):
            torch.cuda.reset_peak_memory_stats(check.device)
            began = time.perf_counter()
            lm, _ = load_llm(
                folder, device=check.device, dtype=torch.float16, lora_rank=8, lora_scaling=4.0,
                load_in_8bit=bits == 8, load_in_4bit=bits == 4,
            )  # fmt: skip
            load_s = time.perf_counter() - began
            model.llama_model = lm
            suppress_eos(model)
            clips = _clips(8, cfg["seconds"], seed=5)
            model.generate(clips[:1], PROMPT, options)
            seconds, _, peak = check.timed(lambda c=clips: model.generate(c, PROMPT, options))
            rows.append(
                {
                    "bits": bits,
                    "load_s": round(load_s, 1),
                    "batch": 8,
                    "clips_per_s": round(8 / seconds, 4),
                    "peak_gib": _gib(peak),
                    "weights_gib": _gib(sum(p.numel() * p.element_size() for p in lm.parameters())),
                }
            )
            model.llama_model = None  # type: ignore[assignment]
            del lm
            torch.cuda.empty_cache()
        return {"rows": rows}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(tiny: bool, out: Path, budget_s: float, clips: int | None, new_tokens: int | None) -> dict:
    if tiny:
        device = torch.device("cpu")
        model = tiny_model("cpu")
        cfg = {
            "batches": [1, 2],
            "decode_items": [1, 2],
            "seconds": 1.0,
            "clips": clips or 4,
            "loop_clips": 1,
            "options": GenerationOptions(max_new_tokens=new_tokens or 4, num_beams=2),
        }
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny for the CPU version")
        device = torch.device("cuda", torch.cuda.current_device())
        model = _full_size_model(device)
        cfg = {
            "batches": [1, 8, 32],
            "decode_items": [1, 8, 32],
            "seconds": 30.0,
            "clips": clips or 20,
            "loop_clips": 4,
            "options": GenerationOptions(max_new_tokens=new_tokens or 64, num_beams=4),
        }
    suppress_eos(model)
    check = Check(device, budget_s)
    check.report["setup"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "model": "tiny (salmonn.model.tiny)" if tiny else "random SALMONN-13B shapes, fp16",
        "torch": torch.__version__,
        "new_tokens": cfg["options"].max_new_tokens,
        "beams": cfg["options"].num_beams,
        "clip_seconds": cfg["seconds"],
    }
    check.section("throughput", lambda: _throughput(check, model, cfg))
    check.section("decode", lambda: _decode(check, model, cfg))
    check.section("agreement", lambda: _agreement(check, model, cfg))
    check.section("ratio", lambda: _ratio(check.report.get("throughput", {})))
    check.section("quantized", lambda: _quantized(check, model, cfg))
    check.report["total_s"] = round(time.perf_counter() - check.start, 1)
    out.write_text(json.dumps(check.report, indent=2))
    _print(check.report)
    return check.report


def _ratio(throughput: dict[str, Any]) -> dict[str, Any]:
    rows = throughput.get("rows") or []
    loop = [r for r in rows if r["mode"].startswith("original-style")]
    fast = [r for r in rows if r["mode"].startswith("fast")]
    if not loop or not fast:
        return {"skipped": "no throughput numbers"}
    best = max(fast, key=lambda r: r["clips_per_s"])
    return {
        "best_fast": best["mode"],
        "x_original_style": round(best["clips_per_s"] / loop[0]["clips_per_s"], 2),
    }


def _print(report: dict[str, Any]) -> None:
    setup = report["setup"]
    print(f"\n{setup['model']} on {setup['device']}, {setup['date']}")
    print(
        f"{setup['beams']} beams, {setup['new_tokens']} new tokens, {setup['clip_seconds']:g} s clips"
    )
    throughput = report.get("throughput", {})
    if "rows" in throughput:
        print(f"\n{'mode':<44} {'clips/s':>9} {'audio-s/s':>10} {'peak GiB':>9}")
        for r in throughput["rows"]:
            peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
            print(f"{r['mode']:<44} {r['clips_per_s']:>9.3f} {r['audio_s_per_s']:>10.1f} {peak:>9}")
    decode = report.get("decode", {})
    if "rows" in decode:
        print(f"\ndecode step (bandwidth {decode['bandwidth_gb_s']} GB/s)")
        print(f"{'rows':>5} {'ms/step':>9} {'roofline ms':>12}")
        for r in decode["rows"]:
            roof = "-" if r["roofline_ms"] is None else f"{r['roofline_ms']:.2f}"
            print(f"{r['rows']:>5} {r['step_ms']:>9.2f} {roof:>12}")
    for name in ("agreement", "ratio", "quantized"):
        section = report.get(name, {})
        rows = section.get("rows")
        if rows:
            print(f"\n{name}:")
            for r in rows:
                print("  " + ", ".join(f"{k} {v}" for k, v in r.items()))
        else:
            print(f"\n{name}: " + ", ".join(f"{k} {v}" for k, v in section.items()))
    print(f"\ntotal {report['total_s']} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model on CPU (a test run)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument(
        "--budget", type=float, default=450.0, help="seconds before sections are skipped"
    )
    parser.add_argument(
        "--clips", type=int, default=None, help="clips for the agreement check (20)"
    )
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per answer (64)")
    args = parser.parse_args(argv)
    run(args.tiny, args.out, args.budget, args.clips, args.new_tokens)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
