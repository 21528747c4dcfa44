"""The tiny random SALMONN: official formats (docs/original-model.md, "Checkpoints"), loadable by plain libs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from salmonn.errors import ConfigError
from salmonn.model.tiny import eval_prompts, write_tiny_model

WHISPER_D, BEATS_D, QF, LLM_D, LLM_LAYERS = 64, 128, 128, 64, 2  # write_tiny_model defaults
BEATS_HEADS, BEATS_EMBED, BEATS_FFN = 2, 32, 256

# ------------------------------------- expected layouts, typed here on purpose: an independent check
# of salmonn.model.formats / salmonn.model.tiny against the official layout (docs/original-model.md, "Checkpoints")


def expected_beats_keys() -> dict[str, tuple[int, ...]]:
    """The official BEATs keys with the tiny widths: embed 32, encoder 128, 2 heads of 64, FFN 256,
    2 layers."""
    d, e = BEATS_D, BEATS_EMBED
    keys = {
        "patch_embedding.weight": (e, 1, 16, 16),
        "layer_norm.weight": (e,),
        "layer_norm.bias": (e,),
        "post_extract_proj.weight": (d, e),
        "post_extract_proj.bias": (d,),
        "encoder.pos_conv.0.weight_g": (1, 1, 128),
        "encoder.pos_conv.0.weight_v": (d, d // 16, 128),
        "encoder.pos_conv.0.bias": (d,),
        "encoder.layer_norm.weight": (d,),
        "encoder.layer_norm.bias": (d,),
        "predictor.weight": (527, d),
        "predictor.bias": (527,),
    }
    for layer in range(2):
        p = f"encoder.layers.{layer}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            keys[f"{p}self_attn.{proj}.weight"] = (d, d)
            keys[f"{p}self_attn.{proj}.bias"] = (d,)
        keys[f"{p}self_attn.relative_attention_bias.weight"] = (320, BEATS_HEADS)
        keys[f"{p}self_attn.grep_linear.weight"] = (8, 64)
        keys[f"{p}self_attn.grep_linear.bias"] = (8,)
        keys[f"{p}self_attn.grep_a"] = (1, BEATS_HEADS, 1, 1)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            keys[f"{p}{norm}.weight"] = (d,)
            keys[f"{p}{norm}.bias"] = (d,)
        keys[f"{p}fc1.weight"], keys[f"{p}fc1.bias"] = (BEATS_FFN, d), (BEATS_FFN,)
        keys[f"{p}fc2.weight"], keys[f"{p}fc2.bias"] = (d, BEATS_FFN), (d,)
    return keys


def expected_salmonn_keys() -> dict[str, tuple[int, ...]]:
    """The trainable keys plus the non-trainable tensors the official files carry, tiny widths."""
    h, enc = QF, WHISPER_D + BEATS_D
    keys = {
        "speech_query_tokens": (1, 1, h),
        "ln_speech.weight": (WHISPER_D,),
        "ln_speech.bias": (WHISPER_D,),
        "ln_audio.weight": (BEATS_D,),
        "ln_audio.bias": (BEATS_D,),
        "speech_Qformer.bert.embeddings.LayerNorm.weight": (h,),
        "speech_Qformer.bert.embeddings.LayerNorm.bias": (h,),
        "speech_Qformer.bert.embeddings.position_ids": (1, 512),
        "speech_llama_proj.weight": (LLM_D, h),
        "speech_llama_proj.bias": (LLM_D,),
    }
    for layer in range(2):
        p = f"speech_Qformer.bert.encoder.layer.{layer}."
        linears = {
            "attention.self.query": (h, h),
            "attention.self.key": (h, h),
            "attention.self.value": (h, h),
            "attention.output.dense": (h, h),
            "crossattention.self.query": (h, h),
            "crossattention.self.key": (h, enc),
            "crossattention.self.value": (h, enc),
            "crossattention.output.dense": (h, h),
            "intermediate_query.dense": (4 * h, h),
            "output_query.dense": (h, 4 * h),
        }
        for name, shape in linears.items():
            keys[f"{p}{name}.weight"], keys[f"{p}{name}.bias"] = shape, (shape[0],)
        for norm in (
            "attention.output.LayerNorm",
            "crossattention.output.LayerNorm",
            "output_query.LayerNorm",
        ):
            keys[f"{p}{norm}.weight"], keys[f"{p}{norm}.bias"] = (h,), (h,)
    for layer in range(LLM_LAYERS):
        p = f"llama_model.base_model.model.model.layers.{layer}.self_attn."
        for proj in ("q_proj", "v_proj"):
            keys[f"{p}{proj}.lora_A.default.weight"] = (8, LLM_D)
            keys[f"{p}{proj}.lora_B.default.weight"] = (LLM_D, 8)
        keys[f"{p}rotary_emb.inv_freq"] = (LLM_D // 4 // 2,)  # 4 heads
    keys["beats.encoder.layers.1.self_attn.relative_attention_bias.weight"] = (320, BEATS_HEADS)
    return keys


# -------------------------------------------------------------------------------------------- tests


def test_files_exist_and_are_small(tiny_paths):
    root = Path(tiny_paths.root)
    for name in ("whisper", "llm"):
        assert Path(getattr(tiny_paths, name)).is_dir()
    for name in ("beats", "checkpoint"):
        assert Path(getattr(tiny_paths, name)).is_file()
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert total < 20e6, total


def test_whisper_folder_loads_with_transformers(tiny_paths):
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(tiny_paths.whisper)
    cfg = model.config
    assert (cfg.num_mel_bins, cfg.max_source_positions, cfg.d_model) == (80, 1500, WHISPER_D)
    assert (cfg.encoder_layers, cfg.encoder_attention_heads) == (2, 2)
    with safe_open(str(Path(tiny_paths.whisper) / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.get_tensor("model.encoder.conv1.weight").shape == (WHISPER_D, 80, 3)
        assert f.get_tensor("model.encoder.embed_positions.weight").shape == (1500, WHISPER_D)
    assert "model.encoder.layer_norm.weight" in names and "model.encoder.layers.1.fc2.bias" in names
    fe = WhisperFeatureExtractor.from_pretrained(tiny_paths.whisper)
    assert (fe.feature_size, fe.sampling_rate, fe.n_fft, fe.hop_length) == (80, 16000, 400, 160)
    assert (fe.chunk_length, fe.n_samples, fe.nb_max_frames) == (30, 480000, 3000)
    out = model.model.encoder(torch.zeros(1, 80, 3000)).last_hidden_state
    assert out.shape == (1, 1500, WHISPER_D) and torch.isfinite(out).all()


def test_llm_folder_loads_and_matches_sentencepiece(tiny_paths):
    import sentencepiece as spm
    from transformers import LlamaForCausalLM, LlamaTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(Path(tiny_paths.llm) / "tokenizer.model"))
    model = LlamaForCausalLM.from_pretrained(tiny_paths.llm)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (LLM_D, 2, 4)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.rms_norm_eps) == (
        1,
        2,
        0,
        1e-6,
    )
    assert cfg.vocab_size == sp.get_piece_size() == model.get_input_embeddings().weight.shape[0]
    assert 500 <= sp.get_piece_size() <= 700
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    gen = json.loads((Path(tiny_paths.llm) / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 0)
    assert (Path(tiny_paths.llm) / "model.safetensors.index.json").is_file()  # sharded, like Vicuna

    tok = LlamaTokenizer.from_pretrained(tiny_paths.llm)
    for text in ("USER: <Speech>", "</Speech> Describe the audio.\nASSISTANT:"):
        ids = sp.encode(text)
        assert tok(text, add_special_tokens=False).input_ids == ids
        assert sp.id_to_piece(ids[0]).startswith("▁")  # dummy prefix per piece ("Tokenizer")
    assert "<0x0A>" in [sp.id_to_piece(i) for i in sp.encode("a\nb")]  # byte fallback ("Tokenizer")
    assert tok("hello").input_ids[0] == 1  # BOS added by default
    for prompt in eval_prompts():  # every prompt is representable and round-trips
        assert sp.decode(sp.encode(prompt)) == prompt


def test_beats_file_has_official_format(tiny_paths):
    ck = torch.load(tiny_paths.beats, map_location="cpu", weights_only=True)
    assert set(ck) == {"cfg", "model", "label_dict"}
    cfg = ck["cfg"]
    official_cfg_keys = {
        "input_patch_size",
        "embed_dim",
        "conv_bias",
        "encoder_layers",
        "encoder_embed_dim",
        "encoder_ffn_embed_dim",
        "encoder_attention_heads",
        "activation_fn",
        "layer_norm_first",
        "deep_norm",
        "conv_pos",
        "conv_pos_groups",
        "relative_position_embedding",
        "num_buckets",
        "max_distance",
        "gru_rel_pos",
        "finetuned_model",
        "predictor_class",
        "layer_wise_gradient_decay_ratio",
        "dropout",
        "attention_dropout",
        "activation_dropout",
        "dropout_input",
        "predictor_dropout",
        "encoder_layerdrop",
    }
    assert official_cfg_keys <= set(cfg)
    assert cfg["max_distance"] == 800 and cfg["num_buckets"] == 320 and cfg["deep_norm"] is True
    assert (
        cfg["conv_bias"] is False
        and cfg["layer_norm_first"] is False
        and cfg["gru_rel_pos"] is True
    )
    assert (cfg["encoder_embed_dim"], cfg["encoder_attention_heads"], cfg["encoder_layers"]) == (
        BEATS_D,
        2,
        2,
    )
    state = ck["model"]
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_beats_keys()
    assert all(v.dtype == torch.float32 for v in state.values())
    table = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    assert torch.equal(table, state["encoder.layers.1.self_attn.relative_attention_bias.weight"])
    assert len(ck["label_dict"]) == 527


def test_checkpoint_has_exact_spec_keys(tiny_paths):
    ck = torch.load(tiny_paths.checkpoint, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "config", "epoch"} <= set(ck)
    state = ck["model"]
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_salmonn_keys()
    ids = state["speech_Qformer.bert.embeddings.position_ids"]
    assert ids.dtype == torch.int64 and torch.equal(ids[0], torch.arange(512))
    floats = [v for k, v in state.items() if not k.endswith("position_ids")]
    assert all(
        v.dtype == torch.float32 for v in floats
    )  # no fp16 in the released files ("Checkpoints")
    head_dim = LLM_D // 4
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    got = state["llama_model.base_model.model.model.layers.1.self_attn.rotary_emb.inv_freq"]
    torch.testing.assert_close(got.double(), inv_freq)
    beats = torch.load(tiny_paths.beats, map_location="cpu", weights_only=True)["model"]
    copy = state["beats.encoder.layers.1.self_attn.relative_attention_bias.weight"]
    assert torch.equal(copy, beats["encoder.layers.0.self_attn.relative_attention_bias.weight"])
    assert len(ck["optimizer"]["state"]) > 0 and ck["optimizer"]["param_groups"]


def _all_tensors(paths) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for folder in (paths.whisper, paths.llm):
        for file in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                out.update({f"{Path(folder).name}/{k}": f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    for name in ("beats", "checkpoint"):
        state = torch.load(getattr(paths, name), map_location="cpu", weights_only=True)["model"]
        out.update({f"{name}/{k}": v for k, v in state.items()})
    return out


def test_deterministic_in_seed(tiny_paths, tmp_path):
    first = _all_tensors(tiny_paths)
    again = _all_tensors(write_tiny_model(tmp_path / "same", seed=0))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert (Path(tiny_paths.llm) / "tokenizer.model").read_bytes() == (
        tmp_path / "same" / "llm" / "tokenizer.model"
    ).read_bytes()
    other = _all_tensors(write_tiny_model(tmp_path / "other", seed=1))
    changed = [k for k in first if not torch.equal(first[k], other[k])]
    assert "checkpoint/speech_llama_proj.weight" in changed and "beats/predictor.weight" in changed
    assert (
        "llm/model.embed_tokens.weight" in changed
        and "whisper/model.encoder.conv1.weight" in changed
    )


def test_weights_are_not_no_ops(tiny_paths):
    tensors = _all_tensors(tiny_paths)
    norms = [
        k
        for k in tensors
        if k.endswith(("norm.weight", "LayerNorm.weight", "ln_speech.weight", "ln_audio.weight"))
    ]
    assert len(norms) >= 29  # whisper 9, beats 6, llm 5, checkpoint 9
    for key in norms:
        assert not torch.allclose(tensors[key], torch.ones_like(tensors[key])), key
    biases = [k for k in tensors if k.endswith("bias") and "relative_attention_bias" not in k]
    for key in biases:
        assert tensors[key].abs().max() > 0, key
    lora_b = [k for k in tensors if "lora_B" in k]
    assert len(lora_b) == 2 * LLM_LAYERS and all(tensors[k].abs().min() > 0 for k in lora_b)
    embed = tensors["llm/model.embed_tokens.weight"]
    assert 0.2 < embed.std() < 0.4  # wide embeddings, not the 0.02 default (see salmonn.model.tiny)
    lm_head = tensors["llm/lm_head.weight"].norm(dim=1)
    assert lm_head[2] > lm_head.median() * 1.2  # EOS row boosted


def test_bad_widths_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="qformer_hidden"):
        write_tiny_model(tmp_path, qformer_hidden=100)


def test_dev_command_writes_and_reports_paths(tmp_path):
    from click.testing import CliRunner

    from salmonn_cli.main import cli

    result = CliRunner().invoke(cli, ["dev", "tiny-model", str(tmp_path / "m"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    reported = json.loads(result.stdout)
    assert reported["checkpoint"] == str(tmp_path / "m" / "salmonn.pth")
    assert all(Path(reported[k]).exists() for k in ("whisper", "beats", "llm", "checkpoint"))
