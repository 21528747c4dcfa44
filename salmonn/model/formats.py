"""The official on-disk layouts, written down once: the BEATs file's ``cfg`` and state-dict keys, the
SALMONN checkpoint's trainable keys, and the training state that the released checkpoints carry beside
the weights (see docs/original-model.md, "BEATs encoder" and "Checkpoints").

:mod:`salmonn.model.tiny` writes its files from these tables; tests derive from them, or check them against
tables of their own where an independent check is the point. The loaders (:mod:`salmonn.model.checkpoint`,
:mod:`salmonn.model.encoders.beats`) check files against the modules they build, not against these tables.
"""

from __future__ import annotations

from typing import Any

import torch

from ..constants import BEATS_PATCH, PROMPT_TEMPLATE, QFORMER_WINDOW_SECONDS

LORA_RANK = 8
LORA_ALPHA = 32
QFORMER_LAYERS = 2
QFORMER_POSITIONS = 512  # BERT max_position_embeddings: length of the unused position_ids buffer
AUDIOSET_CLASSES = 527
BEATS_BUCKETS, BEATS_MAX_DISTANCE = 320, 800
BEATS_GATE_WIDTH = 8  # outputs of each layer's relative-position gate network

Shapes = list[tuple[str, tuple[int, ...]]]


def beats_cfg(
    d_model: int = 768, layers: int = 12, embed_dim: int = 512, ffn_dim: int | None = None
) -> dict[str, Any]:
    """Every key of the released fine-tuned BEATs file's ``cfg``; the defaults are its widths (feed-forward
    ``4 * d_model`` unless ``ffn_dim``), and heads stay 64 wide whatever ``d_model``."""
    return {
        "input_patch_size": BEATS_PATCH,
        "embed_dim": embed_dim,
        "conv_bias": False,
        "encoder_layers": layers,
        "encoder_embed_dim": d_model,
        "encoder_ffn_embed_dim": 4 * d_model if ffn_dim is None else ffn_dim,
        "encoder_attention_heads": d_model // 64,
        "activation_fn": "gelu",
        "layer_wise_gradient_decay_ratio": 0.6,
        "layer_norm_first": False,
        "deep_norm": True,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.0,
        "conv_pos": 128,
        "conv_pos_groups": 16,
        "relative_position_embedding": True,
        "num_buckets": BEATS_BUCKETS,
        "max_distance": BEATS_MAX_DISTANCE,
        "gru_rel_pos": True,
        "finetuned_model": True,
        "predictor_dropout": 0.0,
        "predictor_class": AUDIOSET_CLASSES,
    }


def beats_shapes(cfg: dict[str, Any]) -> Shapes:
    """Official BEATs state-dict keys and shapes in module order (the order of the released file)."""
    e, d, f = cfg["embed_dim"], cfg["encoder_embed_dim"], cfg["encoder_ffn_embed_dim"]
    heads, p, k = cfg["encoder_attention_heads"], cfg["input_patch_size"], cfg["conv_pos"]
    shapes = [
        ("post_extract_proj.weight", (d, e)),
        ("post_extract_proj.bias", (d,)),
        ("patch_embedding.weight", (e, 1, p, p)),
        ("layer_norm.weight", (e,)),
        ("layer_norm.bias", (e,)),
        ("encoder.pos_conv.0.bias", (d,)),
        ("encoder.pos_conv.0.weight_g", (1, 1, k)),
        ("encoder.pos_conv.0.weight_v", (d, d // cfg["conv_pos_groups"], k)),
    ]
    for i in range(cfg["encoder_layers"]):
        pre = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes += [
                (f"{pre}self_attn.{proj}.weight", (d, d)),
                (f"{pre}self_attn.{proj}.bias", (d,)),
            ]
        shapes += [
            (f"{pre}self_attn.grep_a", (1, heads, 1, 1)),
            (f"{pre}self_attn.grep_linear.weight", (BEATS_GATE_WIDTH, d // heads)),
            (f"{pre}self_attn.grep_linear.bias", (BEATS_GATE_WIDTH,)),
            (f"{pre}self_attn.relative_attention_bias.weight", (cfg["num_buckets"], heads)),
            (f"{pre}self_attn_layer_norm.weight", (d,)),
            (f"{pre}self_attn_layer_norm.bias", (d,)),
            (f"{pre}fc1.weight", (f, d)),
            (f"{pre}fc1.bias", (f,)),
            (f"{pre}fc2.weight", (d, f)),
            (f"{pre}fc2.bias", (d,)),
            (f"{pre}final_layer_norm.weight", (d,)),
            (f"{pre}final_layer_norm.bias", (d,)),
        ]
    shapes += [
        ("encoder.layer_norm.weight", (d,)),
        ("encoder.layer_norm.bias", (d,)),
        ("predictor.weight", (cfg["predictor_class"], d)),
        ("predictor.bias", (cfg["predictor_class"],)),
    ]
    return shapes


def salmonn_shapes(
    whisper_d: int, beats_d: int, hidden: int, llm_hidden: int, llm_layers: int
) -> Shapes:
    """Trainable SALMONN checkpoint keys and shapes, in the released file's order (Q-Former of width
    ``hidden``, 2 layers; encoders of widths ``whisper_d`` and ``beats_d``; an LLM of ``llm_hidden``)."""
    h, enc, ffn = hidden, whisper_d + beats_d, 4 * hidden
    shapes: Shapes = [
        ("speech_query_tokens", (1, 1, h)),
        ("ln_speech.weight", (whisper_d,)),
        ("ln_speech.bias", (whisper_d,)),
        ("ln_audio.weight", (beats_d,)),
        ("ln_audio.bias", (beats_d,)),
        ("speech_Qformer.bert.embeddings.LayerNorm.weight", (h,)),
        ("speech_Qformer.bert.embeddings.LayerNorm.bias", (h,)),
    ]
    for i in range(QFORMER_LAYERS):
        pre = f"speech_Qformer.bert.encoder.layer.{i}."
        blocks = [
            ("attention.self.query", (h, h)),
            ("attention.self.key", (h, h)),
            ("attention.self.value", (h, h)),
            ("attention.output.dense", (h, h)),
            ("attention.output.LayerNorm", (h,)),
            ("crossattention.self.query", (h, h)),
            ("crossattention.self.key", (h, enc)),
            ("crossattention.self.value", (h, enc)),
            ("crossattention.output.dense", (h, h)),
            ("crossattention.output.LayerNorm", (h,)),
            ("intermediate_query.dense", (ffn, h)),
            ("output_query.dense", (h, ffn)),
            ("output_query.LayerNorm", (h,)),
        ]
        for module, shape in blocks:
            shapes += [(f"{pre}{module}.weight", shape), (f"{pre}{module}.bias", (shape[0],))]
    shapes += [
        ("speech_llama_proj.weight", (llm_hidden, h)),
        ("speech_llama_proj.bias", (llm_hidden,)),
    ]
    for i in range(llm_layers):
        pre = f"llama_model.base_model.model.model.layers.{i}.self_attn."
        for proj in ("q_proj", "v_proj"):
            shapes += [
                (f"{pre}{proj}.lora_A.default.weight", (LORA_RANK, llm_hidden)),
                (f"{pre}{proj}.lora_B.default.weight", (llm_hidden, LORA_RANK)),
            ]
    return shapes


def training_extras(model_state: dict[str, torch.Tensor], n_trainable: int) -> dict[str, Any]:
    """The training state a released checkpoint carries beside ``model``: ``optimizer`` (AdamW moments
    of the first ``n_trainable`` tensors, made up from them), ``config``, ``scaler`` and ``epoch``."""
    tensors = list(model_state.values())[:n_trainable]
    optimizer = {
        "state": {
            i: {"step": torch.tensor(1.0), "exp_avg": 0.1 * t, "exp_avg_sq": 0.01 * t * t}
            for i, t in enumerate(tensors)
        },
        "param_groups": [
            {
                "lr": 3e-5,
                "betas": (0.9, 0.999),
                "eps": 1e-8,
                "weight_decay": 0.05,
                "amsgrad": False,
                "maximize": False,
                "foreach": None,
                "capturable": False,
                "differentiable": False,
                "fused": None,
                "params": list(range(len(tensors))),
            }
        ],
    }
    config = {
        "model": {
            "llama_path": "llm",
            "whisper_path": "whisper",
            "beats_path": "beats.pt",
            "ckpt": "",
            "freeze_whisper": True,
            "freeze_beats": True,
            "use_speech_Qformer": True,
            "num_speech_query_token": 1,
            "freeze_speech_QFormer": False,
            "window_level_Qformer": True,
            "second_per_window": QFORMER_WINDOW_SECONDS,
            "second_stride": QFORMER_WINDOW_SECONDS,
            "lora": True,
            "lora_rank": LORA_RANK,
            "lora_alpha": LORA_ALPHA,
            "lora_dropout": 0.1,
            "multi_prompt": True,
            "prompt_template": PROMPT_TEMPLATE,
            "max_txt_len": 300,
            "end_sym": "</s>",
        },
        "run": {"seed": 42, "max_epoch": 30, "amp": True, "device": "cuda"},
    }
    scaler = {
        "scale": 65536.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 2000,
        "_growth_tracker": 0,
    }
    return {"optimizer": optimizer, "config": config, "scaler": scaler, "epoch": 1}
