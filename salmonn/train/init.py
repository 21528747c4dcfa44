"""The trainable part as the original initialises it, for a run without ``--checkpoint`` (stage 1).

The original builds the Q-Former from BERT-base's configuration without BERT's weights: every
Linear weight drawn from N(0, 0.02²) with zero bias, every LayerNorm at weight 1 and bias 0, the
query token from N(0, 0.02²). ``ln_speech`` and ``ln_audio`` start at 1 and 0, the projector as
torch's ``nn.Linear`` draws it, and each LoRA pair as peft draws it: A like an ``nn.Linear``
weight (Kaiming-uniform), B zero, so the LLM starts unchanged. The result is written in the
released layout, so :func:`salmonn.load_model` loads it like any checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..model.formats import salmonn_shapes

BERT_INIT_STD = 0.02


def _linear_like(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """``nn.Linear``'s default weight: Kaiming-uniform with a = sqrt(5), i.e. U(±1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(shape[1])
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def initial_state(
    whisper_width: int,
    beats_width: int,
    llm_width: int,
    llm_layers: int,
    *,
    qformer_hidden: int = 768,
    seed: int = 42,
) -> dict[str, torch.Tensor]:
    """Released-layout tensors (float32) initialised as the original initialises them."""
    gen = torch.Generator().manual_seed(seed)
    shapes = salmonn_shapes(whisper_width, beats_width, qformer_hidden, llm_width, llm_layers)
    state: dict[str, torch.Tensor] = {}
    for name, shape in shapes:
        if name == "speech_query_tokens":
            value = torch.randn(shape, generator=gen) * BERT_INIT_STD
        elif ".lora_B." in name:
            value = torch.zeros(shape)
        elif ".lora_A." in name or name == "speech_llama_proj.weight":
            value = _linear_like(shape, gen)
        elif name == "speech_llama_proj.bias":
            value = (torch.rand(shape, generator=gen) * 2 - 1) / math.sqrt(qformer_hidden)
        elif name.startswith(("ln_", "speech_Qformer.")) and len(shape) == 1:
            is_weight = name.endswith("weight") and ("LayerNorm" in name or name.startswith("ln_"))
            value = torch.ones(shape) if is_weight else torch.zeros(shape)
        else:  # Q-Former Linear weights
            value = torch.randn(shape, generator=gen) * BERT_INIT_STD
        state[name] = value.float()
    return state


def write_initial_checkpoint(
    path: str | Path, whisper: str | Path, beats: str | Path, llm: str | Path, *, seed: int = 42
) -> None:
    """Write ``{"model": initial_state(...)}`` for these encoders and this LLM to ``path``."""
    from transformers import AutoConfig

    from ..model.encoders.beats_file import read_beats_file
    from ..model.encoders.whisper import whisper_encoder_width

    beats_cfg, _ = read_beats_file(beats)
    config = AutoConfig.from_pretrained(str(llm))
    state = initial_state(
        whisper_encoder_width(whisper),
        int(beats_cfg.encoder_embed_dim),
        int(config.hidden_size),
        int(config.num_hidden_layers),
        seed=seed,
    )
    torch.save({"model": state}, path)
