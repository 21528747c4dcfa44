"""Window-level Q-Former: windowing, key names, config inference, numerics against an oracle."""

from __future__ import annotations

import pytest
import torch

from salmonn.constants import QFORMER_N_WINDOWS, QFORMER_WINDOW_FRAMES, WHISPER_ENCODER_FRAMES
from salmonn.errors import CheckpointError
from salmonn.model.qformer import QFormer, QFormerConfig, split_windows


def test_window_constants_match_the_original():
    assert (QFORMER_WINDOW_FRAMES, QFORMER_N_WINDOWS, WHISPER_ENCODER_FRAMES) == (17, 88, 1500)


def test_split_windows_order_and_dropped_tail():
    batch, channels = 2, 3
    frames = torch.arange(batch * WHISPER_ENCODER_FRAMES * channels, dtype=torch.float32)
    x = frames.reshape(batch, WHISPER_ENCODER_FRAMES, channels)
    w = split_windows(x)
    assert w.shape == (batch * 88, 17, channels)
    # row b*88 + k holds frames 17k .. 17k+16 of item b, all channels, in time order
    for b, k in [(0, 0), (0, 87), (1, 0), (1, 5), (1, 87)]:
        assert torch.equal(w[b * 88 + k], x[b, 17 * k : 17 * k + 17])
    # the last 4 frames (1496..1499) are in no window
    used = set(w[:88, :, 0].flatten().tolist())
    assert x[0, 1495, 0].item() in used and x[0, 1496, 0].item() not in used


def _random_state(cfg: QFormerConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    model = QFormer(cfg)
    return {k: torch.randn(v.shape, generator=gen) * 0.3 for k, v in model.state_dict().items()}


def test_state_dict_names_are_the_checkpoint_names():
    keys = set(QFormer(QFormerConfig()).state_dict())
    layer = "bert.encoder.layer.1."
    expected = {
        "bert.embeddings.LayerNorm.weight",
        f"{layer}attention.self.query.weight",
        f"{layer}attention.self.key.bias",
        f"{layer}attention.self.value.weight",
        f"{layer}attention.output.dense.weight",
        f"{layer}attention.output.LayerNorm.bias",
        f"{layer}crossattention.self.query.weight",
        f"{layer}crossattention.self.key.weight",
        f"{layer}crossattention.self.value.bias",
        f"{layer}crossattention.output.dense.bias",
        f"{layer}crossattention.output.LayerNorm.weight",
        f"{layer}intermediate_query.dense.weight",
        f"{layer}output_query.dense.weight",
        f"{layer}output_query.LayerNorm.weight",
    }
    assert expected <= keys
    assert not any(
        "word_embeddings" in k or ".intermediate." in k or k.startswith("cls") for k in keys
    )
    # official sizes (docs/original-model.md, "Checkpoints"): 2 layers x 26 tensors + embeddings LayerNorm
    assert len(keys) == 2 * 26 + 2
    sd = QFormer(QFormerConfig()).state_dict()
    assert sd["bert.encoder.layer.0.crossattention.self.key.weight"].shape == (768, 2048)
    assert sd["bert.encoder.layer.0.intermediate_query.dense.weight"].shape == (3072, 768)


def test_config_inferred_from_tensor_shapes():
    cfg = QFormerConfig(hidden_size=128, num_layers=3, intermediate_size=96, encoder_width=40)
    state = {f"speech_Qformer.{k}": v for k, v in _random_state(cfg).items()}
    state["speech_query_tokens"] = torch.zeros(1, 2, 128)
    got = QFormerConfig.from_state_dict(state, "speech_Qformer.")
    assert got == QFormerConfig(128, 3, 96, 40, num_query_tokens=2)
    assert got.num_heads == 2
    with pytest.raises(CheckpointError, match="no Q-Former weights"):
        QFormerConfig.from_state_dict({"x": torch.zeros(1)}, "speech_Qformer.")


def test_forward_matches_transformers_blip2_qformer():
    """Independent oracle: transformers' Blip2QFormerModel (same query path), keys remapped."""
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    cfg = QFormerConfig(hidden_size=128, num_layers=2, intermediate_size=96, encoder_width=40)
    state = _random_state(cfg)
    ours = QFormer(cfg).eval()
    ours.load_state_dict(state)
    oracle = Blip2QFormerModel(
        Blip2QFormerConfig(
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=96,
            encoder_hidden_size=40,
            cross_attention_frequency=1,
            layer_norm_eps=1e-12,
        )
    ).eval()
    remapped = {
        k.replace("bert.embeddings.LayerNorm", "layernorm")
        .replace("bert.", "")
        .replace("attention.self.", "attention.attention."): v
        for k, v in state.items()
    }
    missing, unexpected = oracle.load_state_dict(remapped, strict=False)
    assert not unexpected
    assert all(".intermediate." in k or ".output." in k and "_query" not in k for k in missing), (
        missing
    )
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(5, 1, 128, generator=gen)
    frames = torch.randn(5, 17, 40, generator=gen)
    with torch.no_grad():
        got = ours(query, frames)
        want = oracle(query_embeds=query, encoder_hidden_states=frames).last_hidden_state
    assert got.shape == (5, 1, 128)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the output depends on the window content
    assert not torch.allclose(ours(query, frames.flip(0)), got)
