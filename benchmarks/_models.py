"""Random SALMONN models for the benchmarks (no real weights needed).

``decode_heavy_model``: the tiny encoders and Q-Former of ``salmonn.model.tiny`` in front of a random
LLaMA of 8 layers x 1024 (8 heads of 128, FFN 2816, vocabulary 32001) with LoRA r=8, float32 on
CPU. Its LLM decode step costs what it would in a real model relative to the encoders, which the
tiny model hides. Random weights almost never pick EOS, so answers run to the limit;
:func:`eos_after_tokens` makes answers end at varied steps, as real ones do.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from salmonn.model.salmonn_model import SalmonnModel

LLM_VOCAB = 32001
DECODE_HEAVY = {"hidden": 1024, "layers": 8, "heads": 8, "ffn": 2816}


def tiny_model(device: str = "cpu", **load_kwargs: Any) -> SalmonnModel:
    from salmonn.hub.load import load_model
    from salmonn.model.tiny import write_tiny_model

    paths = write_tiny_model(tempfile.mkdtemp(prefix="salmonn-bench-"), seed=0)
    return load_model(
        paths.whisper, paths.beats, paths.llm, paths.checkpoint, device=device, **load_kwargs
    )


def suppress_eos(model: SalmonnModel) -> None:
    """Ban EOS from every answer of ``model`` (a forward hook on its LM head), so that each answer
    runs to ``max_new_tokens`` and timings compare equal amounts of work."""
    eos = model.tokenizer.eos_id

    def hook(_module: torch.nn.Module, _inputs: tuple, logits: torch.Tensor) -> torch.Tensor:
        logits[..., eos] = float("-inf")
        return logits

    model.llama_model.get_output_embeddings().register_forward_hook(hook)


def eos_after_tokens(model: SalmonnModel, modulus: int) -> None:
    """Make EOS the best next token at pseudo-random decode steps: when a row's fed token and its
    position hash to 0 modulo ``modulus``.

    A row's answer then ends at a step that depends on its own history only (about ``modulus``
    steps on average with greedy search; random weights alone almost never choose EOS and often
    repeat one token), so batched, continuous and one-at-a-time runs still agree. Hooks on the
    input embedding and the rotary embedding record the ids and positions of a decode step.
    """
    eos = model.tokenizer.eos_id
    fed: dict[str, torch.Tensor | None] = {"ids": None, "positions": None}
    lm = model.llama_model
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm

    def on_embed(_module: torch.nn.Module, inputs: tuple, _out: torch.Tensor) -> None:
        ids = inputs[0]
        if ids.dim() == 2 and ids.shape[1] == 1:  # [rows, 1]: the tokens of a decode step
            fed["ids"] = ids[:, 0]

    def on_rotary(_module: torch.nn.Module, args: tuple, kwargs: dict, _out: Any) -> None:
        positions = args[1] if len(args) > 1 else kwargs.get("position_ids")
        fed["positions"] = positions[:, -1] if positions is not None else None

    def on_logits(_module: torch.nn.Module, _inputs: tuple, logits: torch.Tensor) -> torch.Tensor:
        ids, positions = fed["ids"], fed["positions"]
        fed["ids"] = None
        rows = logits.shape[0]
        if ids is None or positions is None or ids.shape[0] != rows or positions.shape[0] != rows:
            return logits  # a prefill, not a decode step
        hit = ((ids * 7919 + positions * 104729) % modulus == 0) & (ids != eos)
        logits[hit, ..., eos] = logits[hit].amax(dim=-1) + 5.0
        return logits

    lm.get_input_embeddings().register_forward_hook(on_embed)
    base.model.rotary_emb.register_forward_hook(on_rotary, with_kwargs=True)
    lm.get_output_embeddings().register_forward_hook(on_logits)


def decode_heavy_model(*, seed: int = 0, dims: dict[str, int] | None = None) -> SalmonnModel:
    """The tiny SALMONN with its LLM replaced by a random LLaMA of ``dims`` (CPU, float32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from salmonn.model.llm import wrap_lora

    dims = {**DECODE_HEAVY, **(dims or {})}
    tiny = tiny_model("cpu")
    config = LlamaConfig(
        vocab_size=LLM_VOCAB,
        hidden_size=dims["hidden"],
        intermediate_size=dims["ffn"],
        num_hidden_layers=dims["layers"],
        num_attention_heads=dims["heads"],
        num_key_value_heads=dims["heads"],
        rms_norm_eps=1e-6,
        max_position_embeddings=2048,
        bos_token_id=tiny.tokenizer.bos_id,
        eos_token_id=tiny.tokenizer.eos_id,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = LlamaForCausalLM(config).eval()
        with torch.no_grad():
            lm.lm_head.weight.normal_(0.0, 0.1)  # peaky logits, as a trained LM's
        lm.requires_grad_(False)
        model = SalmonnModel(
            tiny.speech_encoder,
            tiny.beats,
            tiny.speech_Qformer.config,
            wrap_lora(lm, 8, 4.0),
            tiny.tokenizer,
            device=torch.device("cpu"),
            dtype=torch.float32,
            identity={"preset": f"random {dims['layers']}x{dims['hidden']}"},
        )
        state = {
            k: v
            for k, v in tiny.state_dict().items()
            if k.startswith(("speech_Qformer", "speech_query_tokens", "ln_"))
        }
        model.load_state_dict(state, strict=False)
        with torch.no_grad():
            model.speech_llama_proj.weight.normal_(0.0, 0.05)
            model.speech_llama_proj.bias.zero_()
            for name, param in model.llama_model.named_parameters():
                if ".lora_" in name:
                    param.normal_(0.0, 0.02)
    return model
