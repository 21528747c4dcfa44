"""Throughput of SalmonnModel: encode_audio and generate at several batch sizes.

Default: the tiny random SALMONN (``salmonn.model.tiny``) on CPU, float32. ``--full-size`` builds random
SALMONN-13B-shaped weights (Whisper large-v2, BEATs 12x768, Q-Former 768, LLaMA 40x5120, LoRA r=8)
in float16 on CUDA; it needs a GPU with about 40 GB free and is meant for a GPU machine.

Columns: ``encode s`` = encode_audio; ``LLM s`` = prompt assembly + decoding alone; ``generate s`` =
the whole ``generate`` call (clips/s and audio-s/s are computed from it); best of ``--repeats``.
Generation is forced to exactly ``--new-tokens`` tokens per clip (EOS is suppressed at the lm_head),
so the numbers do not depend on when the random model happens to stop; the script checks this.

    python benchmarks/bench_model.py                      # tiny, CPU
    python benchmarks/bench_model.py --full-size --batches 1 4 8 --new-tokens 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from _models import suppress_eos, tiny_model

from salmonn.config import GenerationOptions
from salmonn.model.salmonn_model import SalmonnModel

PROMPT = "Describe the audio."


# SALMONN-13B shapes: Whisper large-v2 (d, layers, heads, ffn), BEATs layers, LLaMA (d, layers, ffn)
FULL_SIZE = {"whisper": (1280, 32, 20, 5120), "beats_layers": 12, "llm": (5120, 40, 13824)}


def _random_model(device: torch.device, dtype: torch.dtype, dims: dict[str, Any]) -> SalmonnModel:
    """Random SALMONN of the given shapes: encoders / Q-Former / LoRA float32, LLaMA ``dtype``."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from salmonn.model.encoders.beats import Beats
    from salmonn.model.encoders.beats_config import BeatsConfig
    from salmonn.model.llm import PromptTokenizer, add_pad_row, wrap_lora
    from salmonn.model.qformer import QFormerConfig
    from salmonn.model.tiny import beats_cfg, write_tiny_model

    tokenizer = PromptTokenizer(write_tiny_model(tempfile.mkdtemp(prefix="salmonn-bench-")).llm)
    w_d, w_layers, w_heads, w_ffn = dims["whisper"]
    l_d, l_layers, l_ffn = dims["llm"]
    w_config = WhisperConfig(
        d_model=w_d,
        encoder_layers=w_layers,
        encoder_attention_heads=w_heads,
        encoder_ffn_dim=w_ffn,
        num_mel_bins=80,
        max_source_positions=1500,
    )
    w_config._attn_implementation = "eager"  # as load_whisper_encoder
    b_cfg = {
        **beats_cfg(768, dims["beats_layers"]),
        "embed_dim": 512,
        "encoder_ffn_embed_dim": 3072,
    }
    l_config = LlamaConfig(
        vocab_size=32000,
        hidden_size=l_d,
        intermediate_size=l_ffn,
        num_hidden_layers=l_layers,
        num_attention_heads=l_d // 128,
        num_key_value_heads=l_d // 128,
        rms_norm_eps=1e-6,
        max_position_embeddings=2048,
    )
    with torch.device(device):
        whisper = WhisperEncoder(w_config).eval()
        beats = Beats(BeatsConfig.from_dict(b_cfg)).eval()
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            lm = LlamaForCausalLM(l_config)
        finally:
            torch.set_default_dtype(previous)
    lm.requires_grad_(False)
    add_pad_row(lm, 32001)
    model = SalmonnModel(
        whisper,
        beats,
        QFormerConfig(encoder_width=w_d + 768),
        wrap_lora(lm, 8, 4.0),
        tokenizer,
        device=device,
        dtype=dtype,
        identity={"preset": f"random {l_layers}x{l_d}"},
    )
    with torch.no_grad():  # non-trivial trainable weights, as a checkpoint would give
        for name, param in model.named_parameters():
            if name.startswith(("speech_", "ln_")) or ".lora_" in name:
                param.normal_(0.0, 0.02)
    return model


def _timed(fn: Callable[..., Any], device: torch.device, *args: Any) -> tuple[float, Any]:
    """Wall time of ``fn(*args)`` (CUDA synchronised) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def _llm_only(model: SalmonnModel, audio: torch.Tensor, options: GenerationOptions) -> object:
    """Prompt assembly + decoding alone (the part of ``generate`` after ``encode_audio``)."""
    from salmonn.model.generation import generate_ids

    with (
        torch.inference_mode(),
        torch.autocast(model.device.type, dtype=model.dtype, enabled=model.dtype != torch.float32),
    ):
        embeds, mask = model.build_inputs(audio, [PROMPT] * audio.shape[0])
        return generate_ids(
            model.llama_model,
            embeds,
            mask,
            options,
            eos_token_id=model.tokenizer.eos_id,
            embed_tokens=model.embed_tokens,
        )


def run(
    model: SalmonnModel,
    batches: Sequence[int],
    seconds: float,
    new_tokens: int,
    beams: int,
    repeats: int,
) -> list[dict[str, float]]:
    """Best-of-``repeats`` timings per batch size; returns one row per batch size."""
    rng = np.random.default_rng(0)
    options = GenerationOptions(max_new_tokens=new_tokens, num_beams=beams)
    suppress_eos(model)
    warm = [(0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)]
    model.generate(warm, PROMPT, options)
    rows = []
    for batch in batches:
        clips = [
            (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
            for _ in range(batch)
        ]
        enc = llm = total = float("inf")
        for _ in range(repeats):
            t_enc, audio = _timed(model.encode_audio, model.device, clips)
            t_llm, _ = _timed(_llm_only, model.device, model, audio, options)
            t_all, results = _timed(model.generate, model.device, clips, PROMPT, options)
            lengths = {len(r.token_ids) for r in results}
            if lengths != {new_tokens}:
                raise SystemExit(
                    f"generation was not forced to {new_tokens} tokens: {sorted(lengths)}"
                )
            enc, llm, total = min(enc, t_enc), min(llm, t_llm), min(total, t_all)
        rows.append(
            {
                "batch": batch,
                "encode_s": enc,
                "llm_s": llm,
                "generate_s": total,
                "clips_per_s": batch / total,
                "audio_s_per_s": batch * seconds / total,
                "tokens_per_s": batch * new_tokens / llm,
            }
        )
    return rows


def _print_table(rows: list[dict[str, float]], title: str) -> None:
    print(title)
    print(
        f"{'batch':>5} {'encode s':>9} {'LLM s':>8} {'generate s':>11} {'clips/s':>8} "
        f"{'audio-s/s':>10} {'LLM tok/s':>10}"
    )
    for r in rows:
        print(
            f"{r['batch']:>5} {r['encode_s']:>9.3f} {r['llm_s']:>8.3f} {r['generate_s']:>11.3f} "
            f"{r['clips_per_s']:>8.2f} {r['audio_s_per_s']:>10.1f} {r['tokens_per_s']:>10.1f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full-size", action="store_true", help="random 13B-shaped weights, fp16, CUDA"
    )
    parser.add_argument("--device", default="cpu", help="device of the tiny model (default cpu)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per clip")
    parser.add_argument(
        "--beams", type=int, default=4, help="beam width (default 4, as the original)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="best of N (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.full_size:
        if not torch.cuda.is_available():
            raise SystemExit("--full-size needs a CUDA device")
        cuda = torch.device("cuda", torch.cuda.current_device())
        model = _random_model(cuda, torch.float16, FULL_SIZE)
    else:
        model = tiny_model(args.device)
    rows = run(model, args.batches, args.seconds, args.new_tokens, args.beams, args.repeats)
    kind = "random 13B-shaped" if args.full_size else "tiny"
    _print_table(
        rows,
        f"SALMONN {kind} on {model.device} ({str(model.dtype).removeprefix('torch.')}), "
        f"{args.seconds:g} s clips, {args.new_tokens} new tokens, {args.beams} beams, "
        f"torch threads {torch.get_num_threads()}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
