"""Decode-bound throughput on the decode-heavy random SALMONN, all modes side by side in one run.

The model (``benchmarks/_models.py``): the tiny encoders and Q-Former in front of a random LLaMA of
8 layers x 1024 (FFN 2816, vocabulary 32001, LoRA r=8), CPU float32, where the LLM's decode steps
dominate as they do with real weights.

Part 1 (static, every answer forced to ``--new-tokens`` by suppressing EOS): 8 clips of 15-30 s,
three prompts, 4 beams:

* ``original-style``: one clip at a time in exact mode (the original's loop, arithmetic and shapes:
  transformers' forward, whole-cache reorder every step, beam step 0 on the prompt x4);
* ``one-at-a-time``: one clip at a time, fast mode;
* ``batch 8``: ``generate`` on the 8 clips at once, fast mode;
* ``continuous``: ``generate_stream`` with a budget of 8 clips.

It prints clips/s and the ratio to the original-style loop, checks that the fast modes give the same
ids, reports exact-vs-fast id agreement, and times one decode step at 4 and 32 rows.

Part 2 (``--part varied``): answers that end at varied steps (``eos_after_tokens``); 24 clips,
static batches of 8 vs continuous batching with a budget of 8; ids must be identical.

    python benchmarks/bench_decode.py               # both parts, best of 2
    python benchmarks/bench_decode.py --quick       # 12 new tokens, one repeat (a smoke run)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import decode_heavy_model, eos_after_tokens

from salmonn.config import GenerationOptions
from salmonn.model.salmonn_model import SalmonnModel
from salmonn.model.work import WorkItem

PROMPTS = (
    "Recognize the speech and give me the transcription.",
    "Please describe the audio.",
    "Describe the emotion of the speaker in one word.",
)
SECONDS = (15, 18, 20, 22, 25, 27, 29, 30)


def _clips(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = [SECONDS[i % len(SECONDS)] for i in range(count)]
    return [(0.1 * rng.standard_normal(s * 16000)).astype(np.float32) for s in lengths]


def _suppress_eos(model: SalmonnModel) -> Any:
    eos = model.tokenizer.eos_id

    def hook(_module: torch.nn.Module, _inputs: tuple, logits: torch.Tensor) -> torch.Tensor:
        logits[..., eos] = float("-inf")
        return logits

    return model.llama_model.get_output_embeddings().register_forward_hook(hook)


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _rounds(modes: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, Any]]:
    """Best time of each mode over ``repeats`` rounds; every round runs every mode in turn, so a
    load change on a shared machine hits all modes alike."""
    best: dict[str, tuple[float, Any]] = {}
    for _ in range(repeats):
        for name, fn in modes.items():
            start = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - start
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, out)
    return best


def _load() -> str:
    """The 1-minute load average (other processes on a shared machine skew every timing)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def _ids(results: Sequence[Any]) -> list[list[int]]:
    return [list(r.token_ids) for r in results]


def _stream(model: SalmonnModel, clips, prompts, options, batch_size: int) -> list[Any]:
    work = [WorkItem(i, p, c) for i, (c, p) in enumerate(zip(clips, prompts, strict=True))]
    done = dict(model.generate_stream(work, options, batch_size=batch_size))
    for key, value in done.items():
        if isinstance(value, Exception):
            raise SystemExit(f"item {key} failed: {value}")
    return [done[i] for i in range(len(clips))]


def load_before(path: str) -> Any:
    """An earlier ``salmonn/model/generation.py`` (e.g. ``git show REV:salmonn/model/generation.py``), imported
    inside the ``salmonn`` package so its relative imports resolve."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("salmonn._generation_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generate_before(model: SalmonnModel, before: Any, clips, prompts, options) -> list[Any]:
    """``model.generate`` with the earlier ``generate_ids`` (same encoders and prompt assembly)."""
    with torch.inference_mode():
        audio = model.encode_audio(clips)
        embeds, mask = model.build_inputs(audio, prompts)
        ids = before.generate_ids(
            model.llama_model,
            embeds,
            mask,
            options,
            eos_token_id=model.tokenizer.eos_id,
            embed_tokens=model.embed_tokens,
            bos_token_id=model.tokenizer.bos_id,
        )
    return [SimpleNamespace(token_ids=list(x)) for x in ids]


def step_ms(
    model: SalmonnModel,
    clips,
    options: GenerationOptions,
    items: int,
    repeats: int,
    generate_ids: Callable[..., Any] | None = None,
) -> float:
    """ms per decode step with ``items * num_beams`` rows: (t(N tokens) - t(1 token)) / (N - 1)."""
    if generate_ids is None:
        from salmonn.model.generation import generate_ids

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(items)]
    audio = model.encode_audio(clips[:items])
    with torch.inference_mode():
        embeds, mask = model.build_inputs(audio, prompts)

    def run(tokens: int) -> None:
        generate_ids(
            model.llama_model,
            embeds,
            mask,
            options.with_overrides(max_new_tokens=tokens),
            eos_token_id=model.tokenizer.eos_id,
            embed_tokens=model.embed_tokens,
            bos_token_id=model.tokenizer.bos_id,
        )

    full, _ = _best(lambda: run(options.max_new_tokens), repeats)
    one, _ = _best(lambda: run(1), repeats)
    return 1000 * (full - one) / (options.max_new_tokens - 1)


def encode_line(model: SalmonnModel, clips, repeats: int) -> None:
    """Audio encoding of the clips at once, exact encoders (the original's attention arithmetic)
    vs fast (Whisper SDPA, BEATs fused attention), and how far apart their BEATs outputs are."""
    waves = model._waves(clips)

    def encode(exact: bool) -> torch.Tensor:
        with torch.inference_mode(), model.encoder_attention(exact):
            return model._encode(waves, None)

    timed = _rounds({"exact": lambda: encode(True), "fast": lambda: encode(False)}, repeats)
    with torch.inference_mode():
        beats = {}
        for exact in (True, False):
            with model.encoder_attention(exact):
                beats[exact] = model.beats.extract_features([torch.from_numpy(w) for w in waves])
    diff = max((a - b).abs().max().item() for a, b in zip(beats[True], beats[False], strict=True))
    print(
        f"encode {len(clips)} clips: exact encoders {timed['exact'][0]:.2f} s, fast "
        f"{timed['fast'][0]:.2f} s; BEATs fast vs exact max abs diff {diff:.1e}",
        flush=True,
    )


def part_static(new_tokens: int, beams: int, repeats: int, before: Any = None) -> None:
    model = decode_heavy_model()
    hook = _suppress_eos(model)
    clips = _clips(8)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(clips))]
    options = GenerationOptions(max_new_tokens=new_tokens, num_beams=beams)
    model.generate(clips[:1], prompts[:1], options)  # warm-up
    timed = _rounds(
        {
            "original-style (exact, 1 at a time)": lambda: [
                model.generate([c], [p], options, exact=True)[0]
                for c, p in zip(clips, prompts, strict=True)
            ],
            "one-at-a-time (fast)": lambda: [
                model.generate([c], [p], options)[0] for c, p in zip(clips, prompts, strict=True)
            ],
            "batch 8 (fast)": lambda: model.generate(clips, prompts, options),
            "continuous, budget 8 (fast)": lambda: _stream(model, clips, prompts, options, 8),
            **(
                {
                    "before: one-at-a-time": lambda: [
                        _generate_before(model, before, [c], [p], options)[0]
                        for c, p in zip(clips, prompts, strict=True)
                    ],
                    "before: batch 8": lambda: _generate_before(
                        model, before, clips, prompts, options
                    ),
                }
                if before is not None
                else {}
            ),
        },
        repeats,
    )
    rows = [(name, seconds) for name, (seconds, _) in timed.items()]
    t_exact = rows[0][1]
    exact, one, batch, cont = (timed[name][1] for name, _ in rows[:4])
    print(
        f"decode-heavy SALMONN (8x1024 LLaMA) on CPU fp32, torch threads {torch.get_num_threads()}"
        f", load average at the end {_load()}: "
        f"{len(clips)} clips of {SECONDS[0]}-{SECONDS[-1]} s, {beams} beams, "
        f"{new_tokens} new tokens (EOS suppressed), best of {repeats}"
    )
    print(f"{'mode':<38} {'seconds':>8} {'clips/s':>8} {'x original-style':>17}")
    for name, seconds in rows:
        print(f"{name:<38} {seconds:>8.2f} {len(clips) / seconds:>8.3f} {t_exact / seconds:>17.2f}")
    same = _ids(one) == _ids(batch) == _ids(cont)
    agree = sum(a == b for a, b in zip(_ids(exact), _ids(one), strict=True))
    print(f"fast modes give identical ids: {same}")
    print(f"exact vs fast: {agree}/{len(clips)} answers with identical ids")
    if before is not None:
        befores = [_ids(timed[name][1]) for name in ("before: one-at-a-time", "before: batch 8")]
        print(f"before == now (one-at-a-time, batch 8): {[b == _ids(one) for b in befores]}")
    encode_line(model, clips, repeats)
    for items in (1, 8):
        ms = step_ms(model, clips, options, items, repeats)
        line = f"decode step at {items * beams:>2} rows: {ms:7.1f} ms"
        if before is not None:
            old = step_ms(model, clips, options, items, repeats, before.generate_ids)
            line += f"   (before: {old:7.1f} ms)"
        print(line, flush=True)
    hook.remove()
    if not same:
        raise SystemExit("batched / continuous ids differ from one-at-a-time")


def part_varied(new_tokens: int, beams: int, repeats: int, count: int = 24) -> None:
    model = decode_heavy_model()
    eos_after_tokens(model, modulus=max(4, new_tokens // 2))
    clips = _clips(count, seed=1)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(count)]
    options = GenerationOptions(max_new_tokens=new_tokens, num_beams=beams)
    model.generate(clips[:1], prompts[:1], options)  # warm-up

    def static() -> list[Any]:
        out: list[Any] = []
        for i in range(0, count, 8):
            out += model.generate(clips[i : i + 8], prompts[i : i + 8], options)
        return out

    timed = _rounds(
        {"static": static, "continuous": lambda: _stream(model, clips, prompts, options, 8)},
        repeats,
    )
    (t_static, static_out), (t_cont, cont_out) = timed["static"], timed["continuous"]
    lengths = sorted(len(r.token_ids) for r in static_out)
    print(
        f"\nvaried answer lengths ({count} clips, {beams} beams, at most {new_tokens} tokens; "
        f"lengths min {lengths[0]} median {lengths[len(lengths) // 2]} max {lengths[-1]}):"
    )
    print(f"{'mode':<38} {'seconds':>8} {'clips/s':>8} {'x static':>9}")
    for name, seconds in (("static batches of 8", t_static), ("continuous, budget 8", t_cont)):
        print(f"{name:<38} {seconds:>8.2f} {count / seconds:>8.3f} {t_static / seconds:>9.2f}")
    same = _ids(static_out) == _ids(cont_out)
    print(f"continuous gives identical ids: {same}; load average at the end {_load()}")
    if not same:
        raise SystemExit("continuous ids differ from static batches")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="12 tokens, 1 repeat")
    parser.add_argument("--part", choices=("static", "varied", "both"), default="both")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--before",
        metavar="FILE",
        help="an earlier salmonn/model/generation.py to time side by side (git show REV:salmonn/model/generation.py)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.new_tokens, args.repeats = 12, 1
    if args.part in ("static", "both"):
        before = load_before(args.before) if args.before else None
        part_static(args.new_tokens, args.beams, args.repeats, before)
    if args.part in ("varied", "both"):
        part_varied(args.new_tokens, args.beams, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
