"""Streamed chat answers of ``salmonn serve``: when the first text arrives, and what streaming costs.

The server runs ``bench_serve.py``'s decode-heavy random model (tiny encoders, LLaMA ``--layers`` x
``--hidden``, EOS suppressed so every answer is ``--new-tokens`` long), here also kept to the text
pieces of its tokenizer, as a trained model's answers mostly are (the random LLaMA has 32000 ids,
the tiny tokenizer 600, of which 256 are byte pieces).
For each request, sent one at a time: the time to the first content delta, the time to the end and the number
of content deltas, streamed greedy, streamed with beam search (one delta at the end), and not
streamed (the same greedy request); then ``--concurrency`` greedy streams at once. Streamed answers
are checked to equal the non-streamed ones.

    python benchmarks/bench_stream.py                      # 3 requests, 5 s clips, 64 tokens
    python benchmarks/bench_stream.py --requests 6 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_serve import INSTRUCTION, _clips, serving  # noqa: E402


def _serve(args: argparse.Namespace) -> None:
    """The server process: the random model, its answers kept to the tokenizer's ids."""
    import torch
    from _models import suppress_eos
    from bench_model import _random_model

    from salmonn.config import GenerationOptions
    from salmonn.serve import ServeConfig, run_server

    def load() -> Any:
        torch.manual_seed(0)
        dims = {"whisper": (64, 2, 2, 256), "beats_layers": 1}
        model = _random_model(torch.device("cpu"), torch.float32, {**dims, "llm": args.llm})
        suppress_eos(model)
        tokenizer = model.tokenizer
        banned = [i for i in range(tokenizer.vocab_size) if tokenizer._sp.is_byte(i)]
        banned = torch.tensor(banned + list(range(tokenizer.vocab_size, 32001)))

        def in_vocabulary(_module: Any, _inputs: Any, logits: torch.Tensor) -> torch.Tensor:
            logits[..., banned] = float("-inf")
            return logits

        model.llama_model.get_output_embeddings().register_forward_hook(in_vocabulary)
        return model

    config = ServeConfig(
        port=args.port,
        served_model_name="bench",
        max_batch_size=max(8, args.concurrency),
        generation=GenerationOptions(max_new_tokens=args.new_tokens, num_beams=1),
    )
    run_server(config, load, on_ready=lambda url: print(f"ready {url}", file=sys.stderr))


def _messages(clip: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": INSTRUCTION},
                {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
            ],
        }
    ]


def _streamed(client: Any, clip: str, extra: dict[str, Any]) -> dict[str, Any]:
    """One streamed request: seconds to the first content delta and to the end, the deltas."""
    start = time.perf_counter()
    first, parts = None, []
    stream = client.chat.completions.create(
        model="bench", messages=_messages(clip), extra_body=extra, stream=True
    )
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                first = first if first is not None else time.perf_counter() - start
                parts.append(choice.delta.content)
    return {"first_s": first, "total_s": time.perf_counter() - start, "text": "".join(parts),
            "deltas": len(parts)}  # fmt: skip


def _whole(client: Any, clip: str, extra: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    answer = client.chat.completions.create(
        model="bench", messages=_messages(clip), extra_body=extra
    )
    return {"total_s": time.perf_counter() - start, "text": answer.choices[0].message.content}


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def run(args: argparse.Namespace) -> dict[str, Any]:
    options = [
        "--layers", str(args.layers), "--hidden", str(args.hidden), "--ffn", str(args.ffn),
        "--new-tokens", str(args.new_tokens), "--concurrency", str(args.concurrency),
    ]  # fmt: skip
    with serving(__file__, options) as (_base, client):
        with tempfile.TemporaryDirectory() as folder:
            clips = _clips(Path(folder), max(args.requests, args.concurrency), args.seconds)
        greedy, beams = {"num_beams": 1}, {"num_beams": args.beams}
        _whole(client, clips[0], greedy)  # warm-up
        rows: dict[str, list[dict[str, Any]]] = {"streamed": [], "beam_streamed": [], "whole": []}
        for i in range(args.requests):
            rows["whole"].append(_whole(client, clips[i], greedy))
            rows["streamed"].append(_streamed(client, clips[i], greedy))
            rows["beam_streamed"].append(_streamed(client, clips[i], beams))
            if rows["streamed"][-1]["text"] != rows["whole"][-1]["text"]:
                raise SystemExit(f"request {i}: the streamed answer differs from the whole one")
        with ThreadPoolExecutor(args.concurrency) as pool:
            together = list(
                pool.map(lambda c: _streamed(client, c, greedy), clips[: args.concurrency])
            )
        result: dict[str, Any] = {
            "requests": args.requests,
            "new_tokens": args.new_tokens,
            "whole_total_s": _median(rows["whole"], "total_s"),
            "load_average": os.getloadavg(),
        }
        for name in ("streamed", "beam_streamed"):
            result[f"{name}_first_s"] = _median(rows[name], "first_s")
            result[f"{name}_total_s"] = _median(rows[name], "total_s")
            result[f"{name}_deltas"] = _median(rows[name], "deltas")
        result["concurrent"] = args.concurrency
        result["concurrent_first_s"] = _median(together, "first_s")
        result["concurrent_total_s"] = _median(together, "total_s")
        result["concurrent_deltas"] = _median(together, "deltas")
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=3, help="sent one at a time, each way")
    parser.add_argument("--concurrency", type=int, default=4, help="greedy streams at once")
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--beams", type=int, default=2, help="beam width of the beam-search runs")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=2816)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.serve:
        args.llm = (args.hidden, args.layers, args.ffn)
        _serve(args)
        return 0
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"LLaMA {args.layers}x{args.hidden} (FFN {args.ffn}), {args.seconds:g} s clips, "
        f"{args.new_tokens} tokens; medians of {args.requests} requests sent one at a time"
    )
    print(f"not streamed        : whole answer after {result['whole_total_s']:6.2f} s")
    for name, label in (("streamed", "streamed, greedy"), ("beam_streamed", "streamed, beams")):
        print(
            f"{label:<20}: first delta {result[f'{name}_first_s']:6.2f} s, end "
            f"{result[f'{name}_total_s']:6.2f} s, {result[f'{name}_deltas']:.0f} deltas"
        )
    print(
        f"{args.concurrency} streams at once  : first delta {result['concurrent_first_s']:6.2f} s, "
        f"end {result['concurrent_total_s']:6.2f} s, {result['concurrent_deltas']:.0f} deltas"
    )
    print(f"load average {result['load_average']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
