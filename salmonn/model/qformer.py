"""Window-level Q-Former of SALMONN: a query-only BERT stack with cross-attention.

See docs/original-model.md, "Q-Former and windows".

The module's ``state_dict`` names equal the official checkpoint's names under ``speech_Qformer.``
(``bert.embeddings.LayerNorm.*``, ``bert.encoder.layer.{i}.attention.self.query.*`` ...), so the
checkpoint loads without a key map. Only the query path of the original exists here (LAVIS
``BertLMHeadModel`` with the text embeddings, text feed-forward and MLM head deleted); the unused
``position_ids`` buffer of the checkpoint is not registered (the loader knows it as an extra).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import QFORMER_HEAD_DIM, QFORMER_WINDOW_FRAMES
from ..errors import CheckpointError

LAYER_NORM_EPS = 1e-12  # BERT-base default, the original's
DROPOUT = 0.1  # hidden and attention-probability dropout of BERT-base; active only in train mode
_LAYER_PREFIX = "bert.encoder.layer."


@dataclass(frozen=True)
class QFormerConfig:
    """Q-Former sizes; the official model has hidden 768, 2 layers, 12 heads, FFN 3072 and encoder
    width 2048 (1280 Whisper + 768 BEATs channels)."""

    hidden_size: int = 768
    num_layers: int = 2
    intermediate_size: int = 3072
    encoder_width: int = 2048
    num_query_tokens: int = 1

    @property
    def num_heads(self) -> int:
        """Attention heads: the head size is fixed at 64 (BERT-base convention)."""
        return self.hidden_size // QFORMER_HEAD_DIM

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], prefix: str = "") -> QFormerConfig:
        """Infer the sizes from checkpoint tensor shapes (the official checkpoint stores no config).

        ``prefix`` is prepended to the Q-Former's own names, e.g. ``"speech_Qformer."``; the
        number of query tokens comes from ``speech_query_tokens`` (shape ``[1, Q, hidden]``).
        """
        layer0 = f"{prefix}{_LAYER_PREFIX}0."
        try:
            hidden = state[f"{layer0}attention.self.query.weight"].shape[0]
            intermediate = state[f"{layer0}intermediate_query.dense.weight"].shape[0]
            encoder_width = state[f"{layer0}crossattention.self.key.weight"].shape[1]
        except KeyError as err:
            raise CheckpointError(
                f"the checkpoint has no Q-Former weights (missing {err.args[0]!r}); "
                "is it a SALMONN checkpoint?"
            ) from None
        layer_ids = {
            int(k[len(prefix) + len(_LAYER_PREFIX) :].split(".", 1)[0])
            for k in state
            if k.startswith(prefix + _LAYER_PREFIX)
        }
        query = state.get("speech_query_tokens")
        num_query = int(query.shape[1]) if query is not None and query.dim() == 3 else 1
        if hidden % QFORMER_HEAD_DIM:
            raise CheckpointError(f"Q-Former hidden size {hidden} is not a multiple of 64")
        return cls(hidden, max(layer_ids) + 1, intermediate, encoder_width, num_query)


def split_windows(
    x: torch.Tensor, size: int = QFORMER_WINDOW_FRAMES, stride: int = QFORMER_WINDOW_FRAMES
) -> torch.Tensor:
    """Cut the fused encoder sequence into Q-Former windows.

    Args:
        x: ``[B, T, C]`` fused frames (T = 1500, C = 2048 for the official model).
    Returns:
        ``[B * L, size, C]`` with ``L = (T - size) // stride + 1``: 88 for T = 1500 and
        size = stride = 17, frames 1496..1499 are dropped. Row ``b * L + l`` holds frames
        ``l*stride .. l*stride+size-1`` of item ``b`` in time order.
    """
    _, frames, channels = x.shape
    if frames < size:
        raise ValueError(f"need at least {size} frames to form a window, got {frames}")
    windows = x.unfold(1, size, stride)  # [B, L, C, size]
    return windows.permute(0, 1, 3, 2).reshape(-1, size, channels)  # [B*L, size, C]


class _Attention(nn.Module):
    """BERT attention projections ``query``/``key``/``value``; key and value read ``kv_width``."""

    def __init__(self, hidden: int, kv_width: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)
        self.heads = hidden // QFORMER_HEAD_DIM
        self.dropout = nn.Dropout(DROPOUT)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [N, S, H] -> [N, heads, S, 64]
        return x.view(x.shape[0], x.shape[1], self.heads, QFORMER_HEAD_DIM).transpose(1, 2)

    def forward(self, h: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """``h`` [N, Q, H], ``kv`` [N, S, kv_width] -> context [N, Q, H] (nothing masked)."""
        q, k, v = self._split(self.query(h)), self._split(self.key(kv)), self._split(self.value(kv))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(QFORMER_HEAD_DIM)
        # The original adds its all-ones mask in additive form, an fp32 zero tensor [N, 1, 1, S];
        # under fp16 autocast this promotes the scores to fp32 before the softmax (see
        # docs/original-model.md, "Prompt and LLM", precision).
        # A 4-D tensor, not a 0-dim one: 0-dim tensors do not take part in type promotion.
        scores = scores + torch.zeros(1, 1, 1, 1, dtype=torch.float32, device=scores.device)
        probs = self.dropout(scores.softmax(dim=-1))
        context = torch.matmul(probs, v)  # [N, heads, Q, 64]
        return context.transpose(1, 2).reshape(h.shape[0], h.shape[1], -1)


class _Output(nn.Module):
    """``dense`` then post-LN residual: ``LayerNorm(residual + dense(x))``."""

    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _AttentionBlock(nn.Module):
    """``self`` (the projections) + ``output`` (dense + LayerNorm), BERT naming."""

    def __init__(self, hidden: int, kv_width: int) -> None:
        super().__init__()
        self.self = _Attention(hidden, kv_width)
        self.output = _Output(hidden, hidden)

    def forward(self, h: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(h, kv), h)


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact erf GELU


class _Layer(nn.Module):
    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.attention = _AttentionBlock(cfg.hidden_size, cfg.hidden_size)
        self.crossattention = _AttentionBlock(cfg.hidden_size, cfg.encoder_width)
        self.intermediate_query = _Dense(cfg.hidden_size, cfg.intermediate_size)
        self.output_query = _Output(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, h: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        h = self.attention(h, h)
        h = self.crossattention(h, frames)
        return self.output_query(self.intermediate_query(h), h)


class _Embeddings(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(DROPOUT)


class _Encoder(nn.Module):
    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_layers))


class _Bert(nn.Module):
    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(cfg.hidden_size)
        self.encoder = _Encoder(cfg)


class QFormer(nn.Module):
    """Query-only BERT with cross-attention in every layer; post-LN, eps 1e-12."""

    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.bert = _Bert(cfg)

    def forward(self, query: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Attend the learned queries over each window.

        Args:
            query: ``[N, Q, hidden]``, the learned ``speech_query_tokens`` expanded to N rows.
            frames: ``[N, S, encoder_width]`` window frames (S = 17).
        Returns:
            ``[N, Q, hidden]`` last hidden state.
        """
        h = self.bert.embeddings.dropout(self.bert.embeddings.LayerNorm(query))
        for layer in self.bert.encoder.layer:
            h = layer(h, frames)
        return h
