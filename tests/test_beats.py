"""BEATs: official key layout, strict loading, relative-position buckets, forward vs a functional
reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from salmonn.audio.features import beats_fbank, beats_n_tokens
from salmonn.errors import CheckpointError
from salmonn.model.encoders.beats import Beats, BeatsAttention, relative_position_buckets
from salmonn.model.encoders.beats_config import BeatsConfig
from salmonn.model.encoders.beats_file import load_beats
from salmonn.model.formats import beats_shapes

SR = 16_000
# The official file's flags (docs/original-model.md, "BEATs encoder") with tiny widths: head dim
# 64 as in the real model.
TINY_CFG = {
    "input_patch_size": 16,
    "embed_dim": 32,
    "conv_bias": False,
    "encoder_layers": 2,
    "encoder_embed_dim": 128,
    "encoder_ffn_embed_dim": 256,
    "encoder_attention_heads": 2,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "deep_norm": True,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": True,
    "num_buckets": 320,
    "max_distance": 800,
    "gru_rel_pos": True,
    "finetuned_model": True,
    "predictor_class": 5,
    "layer_wise_gradient_decay_ratio": 0.6,
    "dropout": 0.0,
    "encoder_layerdrop": 0.05,
}


def _official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the official file's layout, tiny sizes. The keys and shapes come from
    salmonn.model.formats (the one table of the layout; test_tiny checks that table independently); the
    scales are chosen here so that the forward comparison below exercises every part."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(shape: tuple[int, ...], std: float = 0.05, mean: float = 0.0) -> torch.Tensor:
        return mean + std * torch.randn(*shape, generator=gen)

    scales = {  # name ending -> (std, mean); biases and the rest: std 0.05 around 0
        "patch_embedding.weight": (0.1, 0.0),
        "post_extract_proj.weight": (0.2, 0.0),
        "weight_g": (0.2, 1.0),
        "norm.weight": (0.1, 1.0),
        "_proj.weight": (0.15, 0.0),
        "grep_linear.weight": (0.02, 0.0),
        "grep_a": (0.3, 1.0),
        "fc1.weight": (0.1, 0.0),
        "fc2.weight": (0.1, 0.0),
    }
    sd: dict[str, torch.Tensor] = {}
    table = None
    for name, shape in beats_shapes(TINY_CFG):
        if name.endswith("relative_attention_bias.weight"):  # one table, shared by every layer
            table = rnd(shape, std=1.0) if table is None else table
            sd[name] = table.clone()
            continue
        std, mean = next((v for k, v in scales.items() if name.endswith(k)), (0.05, 0.0))
        sd[name] = rnd(shape, std=std, mean=mean)
    return sd


@pytest.fixture(scope="module")
def beats_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("beats") / "BEATs_tiny.pt"
    torch.save(
        {"cfg": dict(TINY_CFG), "model": _official_state_dict(), "label_dict": {0: "/m/x"}}, path
    )
    return path


@pytest.fixture(scope="module")
def beats(beats_file):
    return load_beats(beats_file)


def _waves(*seconds: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for s in seconds:
        t = np.arange(int(s * SR)) / SR
        out.append(
            0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
            + 0.05 * rng.standard_normal(len(t))
        )
    return out


# ------------------------------------------------------------------------------------------ buckets


@pytest.mark.parametrize(
    "offset,bucket",
    [
        (0, 0),
        (-1, 1),
        (-79, 79),
        (-80, 80),
        (-400, 135),
        (-800, 159),
        (-5000, 159),
        (1, 161),
        (79, 239),
        (80, 240),
        (400, 295),
        (800, 319),
        (5000, 319),
    ],
)
def test_relative_position_buckets_worked_examples(offset, bucket):
    got = relative_position_buckets(torch.tensor([offset]), num_buckets=320, max_distance=800)
    assert got.tolist() == [bucket]


def test_max_distance_comes_from_cfg():
    assert BeatsConfig().max_distance == 1280  # upstream class default
    assert BeatsConfig.from_dict(TINY_CFG).max_distance == 800
    # with the class default the log part is stretched: -400 lands elsewhere
    assert relative_position_buckets(torch.tensor([-400]), 320, 1280).item() == 126


def test_config_keeps_unknown_keys_and_round_trips():
    cfg = BeatsConfig.from_dict({**TINY_CFG, "some_future_key": 3})
    assert cfg.extra == {"some_future_key": 3}
    assert BeatsConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.deep_norm_alpha == pytest.approx((2 * 2) ** 0.25)


# ------------------------------------------------------------------------------------------ loading


def test_strict_load_round_trip(beats_file, beats):
    official = _official_state_dict()
    state = beats.state_dict()
    assert set(state) == set(official)
    for key, value in official.items():
        assert torch.equal(state[key], value), key
    attn0, attn1 = (layer.self_attn for layer in beats.encoder.layers)
    assert attn0.relative_attention_bias is attn1.relative_attention_bias  # one shared table
    assert not beats.training and all(not p.requires_grad for p in beats.parameters())
    assert all(p.dtype == torch.float32 for p in beats.parameters())
    # a fresh module accepts the file's dict strictly, as the reference does
    fresh = Beats(BeatsConfig.from_dict(torch.load(beats_file, weights_only=True)["cfg"]))
    fresh.load_state_dict(torch.load(beats_file, weights_only=True)["model"], strict=True)


def test_new_style_weight_norm_names_are_accepted(tmp_path):
    sd = _official_state_dict()
    sd["encoder.pos_conv.0.parametrizations.weight.original0"] = sd.pop(
        "encoder.pos_conv.0.weight_g"
    )
    sd["encoder.pos_conv.0.parametrizations.weight.original1"] = sd.pop(
        "encoder.pos_conv.0.weight_v"
    )
    torch.save({"cfg": TINY_CFG, "model": sd}, tmp_path / "b.pt")
    model = load_beats(tmp_path / "b.pt")
    g = model.encoder.pos_conv[0].weight_g
    assert torch.equal(g, sd["encoder.pos_conv.0.parametrizations.weight.original0"])


def _bad_files(tmp_path):
    sd = _official_state_dict()
    missing = dict(sd)
    del missing["encoder.layers.1.fc2.bias"]
    extra = {**sd, "encoder.layers.2.fc1.weight": torch.zeros(1)}
    shape = {**sd, "patch_embedding.weight": torch.zeros(32, 1, 8, 8)}
    cases = {
        "list.pt": ([1, 2, 3], "expected keys 'cfg' and 'model'"),
        "no_cfg.pt": ({"model": sd}, "expected keys 'cfg' and 'model'"),
        "missing.pt": (
            {"cfg": TINY_CFG, "model": missing},
            "missing keys encoder.layers.1.fc2.bias",
        ),
        "extra.pt": (
            {"cfg": TINY_CFG, "model": extra},
            "unexpected keys encoder.layers.2.fc1.weight",
        ),
        "shape.pt": ({"cfg": TINY_CFG, "model": shape}, "patch_embedding.weight"),
    }
    for name, (obj, _) in cases.items():
        torch.save(obj, tmp_path / name)
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint\n" * 10)
    cases["garbage.pt"] = (None, "is not a BEATs checkpoint")
    cases["absent.pt"] = (None, "no such file")
    return cases


def test_wrong_files_are_rejected_with_one_line(tmp_path):
    for name, (_, expected) in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            load_beats(tmp_path / name)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / name} is not a BEATs checkpoint: "), message
        assert expected in message, message
        assert "\n" not in message


def test_unsupported_configuration_is_rejected(tmp_path):
    torch.save(
        {"cfg": {**TINY_CFG, "layer_norm_first": True}, "model": _official_state_dict()},
        tmp_path / "p.pt",
    )
    with pytest.raises(CheckpointError, match="layer_norm_first"):
        load_beats(tmp_path / "p.pt")


# ------------------------------------------------------------------------------------------ forward


def _reference_forward(sd: dict[str, torch.Tensor], fbank: torch.Tensor) -> torch.Tensor:
    """The BEATs forward (docs/original-model.md, "BEATs encoder") written as plainly as possible
    in float64, one head at a time. ``[T,128] -> [N,128]``."""
    w = {k: v.double() for k, v in sd.items()}
    heads, hd, n_layers = 2, 64, 2
    x = F.conv2d(fbank.double()[None, None], w["patch_embedding.weight"], stride=16)[
        0
    ]  # (E, T', 8)
    x = x.reshape(x.shape[0], -1).T  # token t*8+f
    x = F.layer_norm(x, (32,), w["layer_norm.weight"], w["layer_norm.bias"])
    x = x @ w["post_extract_proj.weight"].T + w["post_extract_proj.bias"]
    n = x.shape[0]
    v, g = w["encoder.pos_conv.0.weight_v"], w["encoder.pos_conv.0.weight_g"]
    kernel = g * v / v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
    conv = F.conv1d(x.T[None], kernel, w["encoder.pos_conv.0.bias"], padding=64, groups=16)[
        0, :, :n
    ]
    x = x + F.gelu(conv.T)
    x = F.layer_norm(x, (128,), w["encoder.layer_norm.weight"], w["encoder.layer_norm.bias"])

    def bucket(r: int) -> int:
        m = abs(r)
        b = m if m < 80 else min(159, 80 + int(math.log(m / 80) / math.log(10) * 80))
        return b + (160 if r > 0 else 0)

    idx = torch.tensor([[bucket(j - i) for j in range(n)] for i in range(n)])
    table = w["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    alpha = (2 * n_layers) ** 0.25
    for layer in range(n_layers):
        p = f"encoder.layers.{layer}."
        proj = {
            k: x @ w[f"{p}self_attn.{k}_proj.weight"].T + w[f"{p}self_attn.{k}_proj.bias"]
            for k in "qkv"
        }
        outs = []
        for h in range(heads):
            q, k, val = (proj[c][:, h * hd : (h + 1) * hd] for c in "qkv")
            scores = (q @ k.T) * hd**-0.5
            gl = q @ w[f"{p}self_attn.grep_linear.weight"].T + w[f"{p}self_attn.grep_linear.bias"]
            ga, gb = torch.sigmoid(gl[:, :4].sum(1)), torch.sigmoid(gl[:, 4:].sum(1))
            gate = ga * (gb * w[f"{p}self_attn.grep_a"][0, h, 0, 0] - 1) + 2
            scores = scores + gate[:, None] * table[idx, h]
            outs.append(torch.softmax(scores, dim=-1) @ val)
        attn = (
            torch.cat(outs, dim=1) @ w[f"{p}self_attn.out_proj.weight"].T
            + w[f"{p}self_attn.out_proj.bias"]
        )
        ln = f"{p}self_attn_layer_norm"
        x = F.layer_norm(alpha * x + attn, (128,), w[f"{ln}.weight"], w[f"{ln}.bias"])
        hidden = F.gelu(x @ w[f"{p}fc1.weight"].T + w[f"{p}fc1.bias"])
        ffn = hidden @ w[f"{p}fc2.weight"].T + w[f"{p}fc2.bias"]
        ln = f"{p}final_layer_norm"
        x = F.layer_norm(alpha * x + ffn, (128,), w[f"{ln}.weight"], w[f"{ln}.bias"])
    return x


def test_forward_matches_functional_reference(beats):
    (wave,) = _waves(2.5)
    (fbank,) = beats_fbank([wave])
    with torch.no_grad():
        ours = beats(fbank[None])[0]
    ref = _reference_forward(_official_state_dict(), fbank)
    assert ours.shape == ref.shape == (beats_n_tokens(len(wave)), 128) == (120, 128)
    assert (ours.double() - ref).abs().max().item() < 1e-4
    # the test has power: the relative-position bias changes the output clearly
    no_bias = _official_state_dict()
    for i in range(2):
        no_bias[f"encoder.layers.{i}.self_attn.relative_attention_bias.weight"].zero_()
    assert (ours.double() - _reference_forward(no_bias, fbank)).abs().max().item() > 1e-2


def _old_attention(attn, x, position_bias):
    """BEATs attention step by step in the reference's order (q scaled by 1/sqrt(d) then by 1/32,
    the row maximum subtracted, times 32, the gated bias added, softmax): what the exact path must
    reproduce bit for bit."""
    bsz, n, dim = x.shape
    heads, hd = attn.num_heads, attn.head_dim
    q = attn.q_proj(x) * attn.scaling
    q = q * (1 / 32.0)
    k, v = attn.k_proj(x), attn.v_proj(x)
    q, k, v = (
        t.view(bsz, n, heads, hd).transpose(1, 2).reshape(bsz * heads, n, hd) for t in (q, k, v)
    )
    scores = torch.bmm(q, k.transpose(1, 2))
    scores = (scores - scores.max(dim=-1, keepdim=True)[0]) * 32.0
    query = q.view(bsz, heads, n, hd) * 32.0 / attn.scaling
    gates = attn.grep_linear(query).view(bsz, heads, n, 2, 4).sum(-1)
    gate_a, gate_b = torch.sigmoid(gates).chunk(2, dim=-1)
    bias = (gate_a * (gate_b * attn.grep_a - 1.0) + 2.0) * position_bias.unsqueeze(0)
    scores = (scores.view(bsz, heads, n, n) + bias).view(bsz * heads, n, n)
    out = torch.bmm(F.softmax(scores, dim=-1), v)
    return attn.out_proj(out.view(bsz, heads, n, hd).transpose(1, 2).reshape(bsz, n, dim))


def test_position_bias_equals_bucketing_every_pair(beats):
    table = beats.encoder.layers[0].self_attn.relative_attention_bias
    for n in (1, 2, 48, 120, 1496):
        positions = torch.arange(n)
        buckets = relative_position_buckets(positions[None, :] - positions[:, None], 320, 800)
        with torch.no_grad():
            expected = table(buckets).permute(2, 0, 1)  # [H, query, key]
            got = beats.encoder.position_bias(n)
        assert got.shape == (2, n, n) and torch.equal(got, expected), n


def test_exact_attention_keeps_the_reference_steps(beats):
    # the exact path's arithmetic, bit for bit: the same operations in the same order
    (wave,) = _waves(3.1, seed=5)
    (fbank,) = beats_fbank([wave])
    attn = beats.encoder.layers[1].self_attn
    seen = []
    hook = attn.register_forward_hook(lambda m, args, out: seen.append((args, out)))
    try:
        with torch.no_grad():
            beats(fbank[None])
            (x, bias, *_), out = seen[0]
            assert torch.equal(out, _old_attention(attn, x, bias))
    finally:
        hook.remove()


def test_fast_attention_matches_exact_up_to_rounding(beats):
    """``fast_attention`` (one scaled_dot_product_attention call) changes only the rounding.

    The bound: both paths must stay within 1e-4 of the float64 reference (the accuracy the exact
    path is held to above), so they differ by at most 2e-4. Outputs are LayerNorm-ed, of order 1
    (at most about 5 here); float32 rounding of sums over <= 1496 keys, in whatever order a CPU's
    kernels take, gives errors near 1e-6 (2e-6 measured on an AVX-512 CPU), far inside the bound,
    while a wrong scale, mask or gate gives errors of order 0.01 to 1 (checked below).
    """
    waves = _waves(2.5, 1.0, 12.0, seed=4)
    fbanks = beats_fbank(waves)
    with torch.no_grad():
        exact = beats.extract_features(waves)
        beats.fast_attention = True
        try:
            fast = beats.extract_features(waves)
            ref = _reference_forward(_official_state_dict(), fbanks[0])
            assert (fast[0].double() - ref).abs().max().item() < 1e-4
            # power: the fast path with the gate left out is clearly off
            gate = BeatsAttention._gate
            BeatsAttention._gate = lambda self, q: torch.ones_like(q[..., :1])
            try:
                ungated = beats.extract_features(waves[:1])[0]
            finally:
                BeatsAttention._gate = gate
        finally:
            beats.fast_attention = False
    for e, f in zip(exact, fast, strict=True):
        assert e.shape == f.shape and f.dtype == torch.float32
        assert (e - f).abs().max().item() < 2e-4
    assert not all(torch.equal(e, f) for e, f in zip(exact, fast, strict=True))  # a real switch
    assert (ungated - exact[0]).abs().max().item() > 1e-2


def test_token_counts_for_1s_and_30s(beats):
    with torch.no_grad():
        one, thirty = beats.extract_features([np.zeros(SR), _waves(30.0)[0]])
    assert one.shape == (48, 128) and thirty.shape == (1496, 128)


def test_batched_equals_one_at_a_time(beats):
    waves = _waves(1.0, 1.5, 1.0, 2.0, seed=3)
    with torch.no_grad():
        batched = beats.extract_features(waves)
        alone = [beats.extract_features([w])[0] for w in waves]
    assert [b.shape[0] for b in batched] == [48, 72, 48, 96]
    for i in (1, 3):  # lengths that occur once: computed exactly as alone
        assert torch.equal(batched[i], alone[i])
    for i in (0, 2):  # batched with their equal-length partner: no padding, no cross-talk
        torch.testing.assert_close(batched[i], alone[i], rtol=0, atol=1e-5)
    assert not torch.allclose(batched[0], batched[2])


def test_bfloat16_autocast_keeps_beats_in_float32(beats):
    # bf16 has no reference and its error depended on the CPU's kernels (0.1 here, 3.3 elsewhere):
    # BEATs leaves a bf16 autocast and gives exactly what it gives in fp32, on any machine
    (wave,) = _waves(1.2)
    with torch.no_grad():
        full = beats.extract_features([wave])[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = beats.extract_features([wave])[0]
            assert torch.is_autocast_enabled("cpu")  # restored for what runs next (the LLM)
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, rtol=0, atol=1e-6)


def test_float16_autocast_still_applies(beats):
    # float16 is the reference's CUDA regime: BEATs' matmuls run in it (checked here on CPU)
    (wave,) = _waves(1.2)
    with torch.no_grad():
        full = beats.extract_features([wave])[0]
        with torch.autocast("cpu", dtype=torch.float16):
            half = beats.extract_features([wave])[0]
    assert half.dtype == torch.float16 and half.shape == full.shape
    assert torch.isfinite(half).all()
    diff = (half.float() - full).abs().mean().item()
    assert 0 < diff < 0.02  # fp16 rounding shows (mean 0.0014 here), but stays small


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_autocast_close_to_fp32(beats_file):
    model = load_beats(beats_file, device="cuda")
    (wave,) = _waves(3.0)
    with torch.no_grad():
        full = model.extract_features([wave])[0]
        with torch.autocast("cuda", dtype=torch.float16):
            half = model.extract_features([wave])[0]
    assert half.dtype == torch.float32  # final LayerNorm runs in fp32 under autocast
    assert (half - full).abs().max() < 0.05
