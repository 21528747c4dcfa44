"""Whisper encoder loader: both key layouts, .bin / safetensors / shards, strictness, rejections."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from salmonn.audio.features import whisper_log_mel
from salmonn.errors import CheckpointError
from salmonn.model.encoders.whisper import (
    is_large_v2_shaped,
    load_whisper_encoder,
    whisper_encoder_width,
)

TINY = dict(
    d_model=64,
    encoder_layers=2,
    encoder_attention_heads=2,
    encoder_ffn_dim=128,
    decoder_layers=1,
    decoder_attention_heads=2,
    decoder_ffn_dim=128,
    vocab_size=100,
    max_target_positions=32,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Whisper saved as WhisperForConditionalGeneration (keys model.encoder.*) and
    as WhisperModel (keys encoder.*), plus its own encoder output on one input (expected value)."""
    root = tmp_path_factory.mktemp("whisper")
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(**TINY, num_mel_bins=80)).eval()
    with torch.no_grad():  # make the weights clearly non-default
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(root / "for_cond_gen")
    model.model.save_pretrained(root / "whisper_model")
    features = torch.randn(1, 80, 3000)
    model.model.encoder.config._attn_implementation = "eager"
    with torch.no_grad():
        expected = model.model.encoder(features).last_hidden_state
    return {"root": root, "model": model, "features": features, "expected": expected}


def _keys(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return list(f.keys())


def test_official_layout_model_encoder_keys(tiny):
    folder = tiny["root"] / "for_cond_gen"
    assert any(k.startswith("model.encoder.") for k in _keys(folder))
    assert any(k.startswith("model.decoder.") for k in _keys(folder))
    encoder = load_whisper_encoder(folder)
    assert not encoder.training and all(not p.requires_grad for p in encoder.parameters())
    assert encoder.config._attn_implementation == "eager"
    with torch.no_grad():
        out = encoder(tiny["features"]).last_hidden_state
    assert out.shape == (1, 1500, 64)
    torch.testing.assert_close(out, tiny["expected"], rtol=0, atol=1e-5)
    expected_sd = tiny["model"].model.encoder.state_dict()
    assert all(torch.equal(v, expected_sd[k]) for k, v in encoder.state_dict().items())


def test_whisper_model_layout_encoder_keys(tiny):
    folder = tiny["root"] / "whisper_model"
    assert any(k.startswith("encoder.") for k in _keys(folder))
    encoder = load_whisper_encoder(folder)
    with torch.no_grad():
        out = encoder(tiny["features"]).last_hidden_state
    torch.testing.assert_close(out, tiny["expected"], rtol=0, atol=1e-5)


def _copy_config(src, dst):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())


def test_pytorch_model_bin_and_sharded_index(tiny, tmp_path):
    src = tiny["root"] / "for_cond_gen"
    state = tiny["model"].state_dict()
    bin_dir = tmp_path / "bin"
    _copy_config(src, bin_dir)
    torch.save(state, bin_dir / "pytorch_model.bin")
    # sharded .bin: decoder in one shard, encoder split over two
    shard_dir = tmp_path / "sharded"
    _copy_config(src, shard_dir)
    keys = list(state)
    shards = {
        "a.bin": keys[: len(keys) // 3],
        "b.bin": keys[len(keys) // 3 : 2 * len(keys) // 3],
        "c.bin": keys[2 * len(keys) // 3 :],
    }
    weight_map = {}
    for name, names in shards.items():
        torch.save({k: state[k] for k in names}, shard_dir / name)
        weight_map.update(dict.fromkeys(names, name))
    (shard_dir / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    for folder in (bin_dir, shard_dir):
        with torch.no_grad():
            out = load_whisper_encoder(folder)(tiny["features"]).last_hidden_state
        torch.testing.assert_close(out, tiny["expected"], rtol=0, atol=1e-5)


def test_sharded_safetensors(tiny, tmp_path):
    tiny["model"].save_pretrained(tmp_path / "st", max_shard_size="100KB")
    assert (tmp_path / "st" / "model.safetensors.index.json").is_file()
    with torch.no_grad():
        out = load_whisper_encoder(tmp_path / "st")(tiny["features"]).last_hidden_state
    torch.testing.assert_close(out, tiny["expected"], rtol=0, atol=1e-5)


def test_missing_and_unexpected_encoder_keys_are_named(tiny, tmp_path):
    src = tiny["root"] / "for_cond_gen"
    state = tiny["model"].state_dict()
    missing = {k: v for k, v in state.items() if k != "model.encoder.layers.1.fc2.bias"}
    extra = {**state, "model.encoder.layers.7.fc1.weight": torch.zeros(3)}
    for name, sd, expected in (
        ("missing", missing, "missing encoder keys layers.1.fc2.bias"),
        ("extra", extra, "unexpected encoder keys layers.7.fc1.weight"),
    ):
        _copy_config(src, tmp_path / name)
        torch.save(sd, tmp_path / name / "pytorch_model.bin")
        with pytest.raises(CheckpointError, match=expected) as info:
            load_whisper_encoder(tmp_path / name)
        assert "\n" not in str(info.value)


def test_rejects_128_mel_config(tmp_path):
    folder = tmp_path / "v3"
    WhisperForConditionalGeneration(WhisperConfig(**TINY, num_mel_bins=128)).save_pretrained(folder)
    with pytest.raises(CheckpointError) as info:
        load_whisper_encoder(folder)
    message = str(info.value)
    assert message.startswith(
        "SALMONN needs an 80-mel, 30 s Whisper encoder such as openai/whisper-large-v2; got "
    )
    assert "num_mel_bins=128" in message and "\n" not in message


def test_rejects_folders_that_are_not_whisper(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        load_whisper_encoder(tmp_path / "absent")
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type 'llama'"):
        load_whisper_encoder(tmp_path / "llama")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_whisper_encoder(tmp_path / "empty")


def test_width_shape_check_and_dtype(tiny):
    folder = tiny["root"] / "whisper_model"
    assert whisper_encoder_width(folder) == 64
    assert not is_large_v2_shaped(WhisperConfig(**TINY))
    large = {
        "d_model": 1280,
        "encoder_layers": 32,
        "encoder_attention_heads": 20,
        "num_mel_bins": 80,
    }
    assert is_large_v2_shaped(large) and is_large_v2_shaped(WhisperConfig(**{**TINY, **large}))
    assert not is_large_v2_shaped({**large, "num_mel_bins": 128})
    encoder = load_whisper_encoder(folder, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in encoder.parameters())


def test_log_mel_into_encoder(tiny):
    encoder = load_whisper_encoder(tiny["root"] / "for_cond_gen")
    waves = [
        np.sin(np.linspace(0, 2000, 16_000)).astype(np.float32),
        np.zeros(8000, dtype=np.float32),
    ]
    with torch.no_grad():
        out = encoder(whisper_log_mel(waves)).last_hidden_state
    assert out.shape == (2, 1500, 64) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])
