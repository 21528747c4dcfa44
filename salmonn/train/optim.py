"""AdamW over the trainable tensors, in the original's two parameter groups.

Weight decay applies to every tensor of two or more dimensions whose name contains none of ``bias``,
``ln`` and ``bn`` (``speech_query_tokens`` [1, 1, H] included, as in the original); the others get
none. Betas (0.9, 0.999), eps 1e-8, no gradient clipping.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

BETAS = (0.9, 0.999)
EPS = 1e-8
_NO_DECAY_WORDS = ("bias", "ln", "bn")


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether the original's grouping puts ``name`` in the weight-decay group."""
    return param.ndim >= 2 and not any(word in name for word in _NO_DECAY_WORDS)


def make_optimizer(
    params: Mapping[str, torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW with a decay group and a no-decay group (names sorted, so the state is ordered the
    same way in every process and on every resume); frozen tensors are left out."""
    trainable = sorted((n, p) for n, p in params.items() if p.requires_grad)
    groups = [
        {"params": [p for n, p in trainable if decays(n, p)], "weight_decay": weight_decay},
        {"params": [p for n, p in trainable if not decays(n, p)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=EPS)
