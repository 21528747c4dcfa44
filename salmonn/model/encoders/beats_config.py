"""The BEATs architecture as its official file's ``cfg`` dict describes it, and what this port supports."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ...errors import CheckpointError


@dataclass
class BeatsConfig:
    """BEATs architecture; the defaults are the upstream class defaults, overwritten by a
    checkpoint's ``cfg``.

    The official SALMONN file sets e.g. ``max_distance=800`` (default 1280), ``deep_norm``,
    ``relative_position_embedding``, ``gru_rel_pos`` and ``finetuned_model`` (see
    docs/original-model.md, "BEATs encoder"). Keys this
    class does not know are kept in ``extra``.
    """

    input_patch_size: int = -1
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 1.0
    layer_norm_first: bool = False
    deep_norm: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False
    finetuned_model: bool = False
    predictor_dropout: float = 0.1
    predictor_class: int = 527
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> BeatsConfig:
        """Class defaults overwritten by ``cfg`` (the checkpoint's plain dict)."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in cfg.items() if k in names}
        extra = {k: v for k, v in cfg.items() if k not in names}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The plain ``cfg`` dict form (as stored in checkpoints)."""
        out = asdict(self)
        out.update(out.pop("extra"))
        return out

    @property
    def deep_norm_alpha(self) -> float:
        """Residual scale of the post-LN layers: (2L)^(1/4) with DeepNorm, else 1."""
        return math.pow(2 * self.encoder_layers, 1 / 4) if self.deep_norm else 1.0

    def check_supported(self) -> None:
        """Raise :class:`CheckpointError` for configurations this port does not implement."""
        problems = []
        if self.layer_norm_first:
            problems.append("layer_norm_first=True (pre-LN BEATs)")
        if self.activation_fn != "gelu":
            problems.append(f"activation_fn={self.activation_fn!r}")
        if self.input_patch_size < 1:
            problems.append(f"input_patch_size={self.input_patch_size}")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            problems.append("encoder_embed_dim not divisible by encoder_attention_heads")
        if problems:
            raise CheckpointError("unsupported BEATs configuration: " + ", ".join(problems))
