"""What seeded sampling costs per decode step: one generator per item (a ``multinomial`` per row)
against one draw over the whole batch on torch's global generator, and greedy, side by side.

The model is the decode-heavy random SALMONN (``benchmarks/_models.py``: LLaMA 8 x 1024, vocabulary
32001, CPU float32); 32 text prompts decode together in one :class:`salmonn.model.generation.Decoder`.
For each decoding it times ``--steps`` decode steps after the first, best of ``--repeats``, and
also the draw alone on a [32, 32001] probability table.

    python benchmarks/bench_sampling.py                 # 32 rows, 16 steps, best of 3
    python benchmarks/bench_sampling.py --rows 8 --steps 8 --repeats 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import decode_heavy_model

from salmonn.config import GenerationOptions
from salmonn.model.generation import Decoder, _Item
from salmonn.model.logits import draw, make_generator

DECODINGS = {
    "greedy": GenerationOptions(num_beams=1),
    "sampled, no seed (one draw, global generator)": GenerationOptions(num_beams=1, do_sample=True),
    "sampled, seed (one generator per item)": GenerationOptions(
        num_beams=1, do_sample=True, seed=3
    ),
}


def step_seconds(model, options: GenerationOptions, rows: int, steps: int) -> float:
    """Seconds per decode step of ``rows`` items (steps 2 .. steps + 1; every row keeps running)."""
    options = options.with_overrides(max_new_tokens=steps + 2)
    prompts = [f"Tell me about the number {i}." for i in range(rows)]
    with torch.inference_mode():
        embeds, mask = model._left_pad([model._text_row(p) for p in prompts])
    decoder = Decoder(
        model.llama_model,
        options,
        eos_token_id=model.tokenizer.eos_id,
        embed_tokens=model.embed_tokens,
        bos_token_id=model.tokenizer.bos_id,
    )
    decoder.add(list(range(rows)), embeds, mask)
    decoder.step()
    start = time.perf_counter()
    for _ in range(steps):
        decoder.step()
    return (time.perf_counter() - start) / steps


def draw_seconds(rows: int, seeded: bool, repeats: int = 50) -> float:
    probs = torch.rand(rows, 32001).softmax(dim=-1)
    options = GenerationOptions(do_sample=True, seed=3 if seeded else None)
    items = [_Item(i, generator=make_generator(options, probs.device)) for i in range(rows)]
    start = time.perf_counter()
    for _ in range(repeats):
        draw(probs, 1, items)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = decode_heavy_model()
    best = {name: float("inf") for name in DECODINGS}
    for _ in range(args.repeats):  # interleaved, so load changes hit every decoding alike
        for name, options in DECODINGS.items():
            best[name] = min(best[name], step_seconds(model, options, args.rows, args.steps))
    base = best["greedy"]
    print(f"decode step at {args.rows} rows, best of {args.repeats}:")
    for name, seconds in best.items():
        print(f"  {name:48s} {seconds * 1000:8.2f} ms  ({seconds / base:.3f} x greedy)")
    one = min(draw_seconds(args.rows, False) for _ in range(args.repeats))
    per_item = min(draw_seconds(args.rows, True) for _ in range(args.repeats))
    print(f"the draw alone on [{args.rows}, 32001]:")
    print(f"  one multinomial, global generator   {one * 1000:8.3f} ms")
    print(f"  one multinomial per row, seeded     {per_item * 1000:8.3f} ms")


if __name__ == "__main__":
    main()
