"""BEATs audio encoder (fine-tuned iter3+ AS2M cpt2), state-dict compatible with the official
checkpoint.

Forward (see docs/original-model.md, "BEATs encoder"): 16x16 fbank patches -> LayerNorm ->
projection -> weight-normalised convolutional positional embedding -> post-LN (DeepNorm) transformer
layers with a gated, bucketed relative position bias. Every operation is written in the reference's
order so that fp32 CPU runs and fp16 CUDA autocast runs give the reference's numbers.

Under a bfloat16 autocast (``--dtype bfloat16``, e.g. on CPU) BEATs runs in float32: the reference
only ever ran it in fp32 or under fp16 autocast, and bf16's 8-bit mantissa made its output depend on
the CPU's kernels (within 0.1 of fp32 on the tiny test model on one AVX-512 CPU, 3.3 off reported on
another). Float16 autocast, the reference's CUDA regime, is left as it is.

The configuration is :mod:`~salmonn.model.encoders.beats_config`; reading, checking and loading an
official file is :mod:`~salmonn.model.encoders.beats_file`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...audio.features import beats_fbank
from .beats_config import BeatsConfig

__all__ = ["Beats", "BeatsAttention", "relative_position_buckets"]

_SCORE_SCALE = 32.0  # BEATs' internal attention constant "alpha": q /= 32, scores (S - rowmax) * 32


def relative_position_buckets(
    relative_position: torch.Tensor, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Bidirectional T5-style buckets of ``key - query`` offsets, computed in float32 on CPU (see
    docs/original-model.md, "BEATs encoder").

    Args:
        relative_position: int64 tensor of offsets ``r = key_index - query_index``, any shape.

    Returns:
        int64 tensor of the same shape, values in ``[0, num_buckets)``.
    """
    half = num_buckets // 2  # one half per direction
    buckets = (relative_position > 0).to(torch.long) * half
    distance = torch.abs(relative_position)
    max_exact = half // 2
    is_small = distance < max_exact
    if_large = max_exact + (
        torch.log(distance.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (half - max_exact)
    ).to(torch.long)
    if_large = torch.min(if_large, torch.full_like(if_large, half - 1))
    return buckets + torch.where(is_small, distance, if_large)


class _WeightNormConv1d(nn.Module):
    """Grouped Conv1d whose weight is ``g * v / ||v||`` with the norm over all axes but the kernel
    tap (dim 2).

    Parameters are named ``weight_g`` ``[1, 1, K]`` and ``weight_v`` ``[C, C/groups, K]`` as the
    legacy ``torch.nn.utils.weight_norm`` stored them.
    """

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.padding = kernel // 2
        self.groups = groups
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        if not self.weight_v.is_meta:  # (random init on "meta" would import torch._dynamo: seconds)
            nn.init.normal_(self.weight_v, std=math.sqrt(4 / (kernel * channels)))
            with torch.no_grad():
                self.weight_g.copy_(torch.norm_except_dim(self.weight_v, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, N]`` -> ``[B, C, N + 1]`` (even kernel, symmetric padding)."""
        # torch._weight_norm is the op torch.nn.utils.weight_norm itself calls: same rounding
        weight = torch._weight_norm(self.weight_v, self.weight_g, 2)
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class BeatsAttention(nn.Module):
    """BEATs multi-head self-attention with the gated relative position bias."""

    def __init__(self, cfg: BeatsConfig, owns_bias_table: bool) -> None:
        super().__init__()
        dim, self.num_heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.head_dim = dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gru_rel_pos = cfg.gru_rel_pos
        if owns_bias_table:
            table = torch.empty(cfg.num_buckets, self.num_heads)
            if not table.is_meta:  # (random init on "meta" would import torch._dynamo: seconds)
                nn.init.normal_(table)
            self.relative_attention_bias = nn.Embedding(
                cfg.num_buckets, self.num_heads, _weight=table
            )
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))

    def forward(
        self, x: torch.Tensor, position_bias: torch.Tensor | None, fast: bool = False
    ) -> torch.Tensor:
        """``x [B, N, C]``, ``position_bias [H, N, N]`` (raw, ungated) or None -> ``[B, N, C]``.

        ``fast``: one fused attention kernel (:meth:`_fast`) instead of the reference's steps."""
        if fast:
            return self._fast(x, position_bias)
        bsz, n, dim = x.shape
        heads, hd = self.num_heads, self.head_dim
        q = self.q_proj(x)
        k = self.k_proj(x)
        v = self.v_proj(x)
        q = q * self.scaling
        q = q * (1 / _SCORE_SCALE)
        q = q.view(bsz, n, heads, hd).transpose(1, 2).reshape(bsz * heads, n, hd)  # (B*H, N, d)
        k = k.view(bsz, n, heads, hd).transpose(1, 2).reshape(bsz * heads, n, hd)
        v = v.view(bsz, n, heads, hd).transpose(1, 2).reshape(bsz * heads, n, hd)
        scores = torch.bmm(q, k.transpose(1, 2))  # (B*H, N, N)
        # Softmax-invariant stabilisation: s*qk^T minus its row maximum.
        scores = (scores - scores.max(dim=-1, keepdim=True)[0]) * _SCORE_SCALE
        if position_bias is not None:
            bias = position_bias.unsqueeze(0)  # (1, H, N, N)
            if self.gru_rel_pos:
                query = q.view(bsz, heads, n, hd) * _SCORE_SCALE / self.scaling  # unscaled q
                bias = self._gate(query) * bias
            scores = (scores.view(bsz, heads, n, n) + bias).view(bsz * heads, n, n)
        probs = F.softmax(scores, dim=-1).type_as(scores)
        out = torch.bmm(probs, v)  # (B*H, N, d)
        out = out.view(bsz, heads, n, hd).transpose(1, 2).reshape(bsz, n, dim)
        return self.out_proj(out)

    def _gate(self, query: torch.Tensor) -> torch.Tensor:
        """Per-query scale of the relative position bias: ``(B, H, N, d)`` -> ``(B, H, N, 1)``."""
        bsz, heads, n, _ = query.shape
        gates = self.grep_linear(query).view(bsz, heads, n, 2, 4).sum(-1)  # (B, H, N, 2)
        gate_a, gate_b = torch.sigmoid(gates).chunk(2, dim=-1)
        return gate_a * (gate_b * self.grep_a - 1.0) + 2.0

    def _fast(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        """The same attention through ``scaled_dot_product_attention``: softmax(q k^T * scaling +
        gated bias) v, with the gated bias as a float mask.

        The reference's steps (q divided by 32, the row maximum subtracted, times 32) leave the
        softmax unchanged in exact arithmetic, so only rounding differs from :meth:`forward`'s
        exact path; the gate sees the projected query itself instead of the query scaled down and
        back up. The fused kernel never builds the [B*H, N, N] score tensor five times over.
        """
        bsz, n, dim = x.shape
        heads, hd = self.num_heads, self.head_dim
        q = self.q_proj(x).view(bsz, n, heads, hd).transpose(1, 2)  # (B, H, N, d)
        k = self.k_proj(x).view(bsz, n, heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(bsz, n, heads, hd).transpose(1, 2)
        mask = None
        if position_bias is not None:
            bias = position_bias.unsqueeze(0)  # (1, H, N, N)
            if self.gru_rel_pos:
                bias = self._gate(q) * bias  # (B, H, N, N)
            mask = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
        out = out.transpose(1, 2).reshape(bsz, n, dim)
        return self.out_proj(out)


class BeatsLayer(nn.Module):
    """Post-LN transformer layer with DeepNorm residual scaling."""

    def __init__(self, cfg: BeatsConfig, owns_bias_table: bool) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.alpha = cfg.deep_norm_alpha
        self.self_attn = BeatsAttention(cfg, owns_bias_table)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, position_bias: torch.Tensor | None, fast: bool = False
    ) -> torch.Tensor:
        """``[B, N, C]`` -> ``[B, N, C]``."""
        x = self.self_attn_layer_norm(x * self.alpha + self.self_attn(x, position_bias, fast))
        hidden = self.fc1(x)
        hidden = F.gelu(hidden.float()).type_as(hidden)  # BEATs computes GELU in fp32
        return self.final_layer_norm(x * self.alpha + self.fc2(hidden))


class BeatsEncoder(nn.Module):
    """Convolutional positional embedding, LayerNorm, then the layers."""

    def __init__(self, cfg: BeatsConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.cfg = cfg
        self.pos_conv = nn.ModuleList([_WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups)])
        self.layer_norm = nn.LayerNorm(dim)
        rel = cfg.relative_position_embedding
        layers = [
            BeatsLayer(cfg, owns_bias_table=rel and i == 0) for i in range(cfg.encoder_layers)
        ]
        self.layers = nn.ModuleList(layers)
        if rel:  # one table, shared: state_dict repeats it under every layer's name (as upstream)
            table = layers[0].self_attn.relative_attention_bias
            for layer in layers[1:]:
                layer.self_attn.relative_attention_bias = table

    def position_bias(self, n: int) -> torch.Tensor | None:
        """Raw relative position bias ``[H, N, N]``: entry ``(h, i, j)`` is the table's value for
        the bucket of the offset ``j - i`` (buckets on CPU, looked up on the table's device).

        The bucket depends on the offset alone, so the 2N - 1 offsets are bucketed and looked up
        once and the ``[H, N, N]`` matrix is laid out from them (each diagonal one value): the
        same numbers as bucketing all N^2 pairs, for a small part of the work.
        """
        if not self.cfg.relative_position_embedding:
            return None
        offsets = torch.arange(1 - n, n, dtype=torch.long)  # key - query: 1-n .. n-1
        buckets = relative_position_buckets(offsets, self.cfg.num_buckets, self.cfg.max_distance)
        table = cast(BeatsLayer, self.layers[0]).self_attn.relative_attention_bias
        values = table(buckets.to(table.weight.device)).T.contiguous()  # [H, 2N - 1]
        # windows[h, a, j] = values[h, a + j] is the offset j - (n - 1 - a): row a is query n-1-a
        return values.unfold(1, n, 1).flip(1)  # a copy, [H, N, N], query-major

    def forward(self, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """``[B, N, C]`` -> ``[B, N, C]``; ``fast``: fused attention (see ``BeatsAttention``)."""
        conv = self.pos_conv[0](x.transpose(1, 2))[:, :, :-1]  # drop the extra step (even kernel)
        x = x + F.gelu(conv).transpose(1, 2)
        x = self.layer_norm(x)
        bias = self.position_bias(x.shape[1])
        for layer in self.layers:
            x = layer(x, bias, fast)
        return x


class Beats(nn.Module):
    """BEATs with the official state-dict key names (see docs/original-model.md, "Checkpoints").

    ``forward`` takes normalised fbank features; :meth:`extract_features` takes waveforms.
    ``fast_attention`` (settable, default False) computes attention with one fused
    ``scaled_dot_product_attention`` call instead of the reference's steps: equal up to rounding
    (SALMONN's fast mode turns it on for its calls; exact mode keeps the reference's arithmetic).
    """

    def __init__(self, cfg: BeatsConfig) -> None:
        super().__init__()
        cfg.check_supported()
        self.cfg = cfg
        patch = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(
            1, cfg.embed_dim, kernel_size=patch, stride=patch, bias=cfg.conv_bias
        )
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (
            nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
            if cfg.embed_dim != cfg.encoder_embed_dim
            else None
        )
        self.encoder = BeatsEncoder(cfg)
        self.predictor = (
            nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class) if cfg.finetuned_model else None
        )
        self.fast_attention = False

    @property
    def output_dim(self) -> int:
        return self.cfg.encoder_embed_dim

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """Encode normalised fbank features.

        Args:
            fbank: ``[B, T, 128]`` float32 (from :func:`salmonn.audio.features.beats_fbank`).

        Returns:
            ``[B, N, D]`` with ``N = (T // 16) * 8``: time-major 16x16 patches, token ``t*8 + f``;
            float32 except under a float16 autocast.
        """
        device_type = fbank.device.type
        if _autocast_dtype(device_type) == torch.bfloat16:
            with torch.autocast(device_type, enabled=False):
                return self._encode(fbank.float())
        return self._encode(fbank)

    def _encode(self, fbank: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(fbank.unsqueeze(1))  # (B, E, T // 16, 8)
        x = x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)  # (B, N, E)
        x = self.layer_norm(x)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)  # (B, N, D)
        return self.encoder(x, self.fast_attention)

    def extract_features(self, waves: Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
        """Encode 16 kHz mono waveforms (kept in float64 for the fbank, as the reference does).

        Items of equal length are batched together; nothing is padded, so every item gives what it
        gives alone (up to the batch size's effect on matmul blocking).

        Returns:
            list of ``[N_i, D]`` tensors on the module's device (float32; under a float16 autocast,
            what the autocast gives).
        """
        device = self.patch_embedding.weight.device
        fbanks = beats_fbank(waves, device=device)
        groups: dict[int, list[int]] = {}
        for i, fb in enumerate(fbanks):
            groups.setdefault(fb.shape[0], []).append(i)
        out: list[torch.Tensor | None] = [None] * len(fbanks)
        for indices in groups.values():
            encoded = self(torch.stack([fbanks[i] for i in indices]))
            for i, item in zip(indices, encoded, strict=True):
                out[i] = item
        return out  # type: ignore[return-value]


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype of the autocast active on ``device_type``, ``None`` when there is none."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    if device_type == "cuda":
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
    return None
