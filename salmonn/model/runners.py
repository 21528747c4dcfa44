"""How the decoder runs the LM: prefill new items, feed one token per row, keep or reorder rows.

Two runners share one interface (``add``, ``step``, ``select``, ``can_join``):
:class:`salmonn.model.kvcache.LlamaStepper` (the fast mode, a LLaMA-shaped LM) and
:class:`HFRunner`, transformers' own forward over its cache (any causal LM, and the exact mode,
where attention follows the transformers 4.28 eager arithmetic: :func:`exact_attention`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from .llm import attention_implementation, base_model

EXACT_ATTENTION = "salmonn_exact"  # transformers attention-interface name of the 4.28 arithmetic


def _attention_428(
    module: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """4.28 LLaMA eager attention: QK^T divided by sqrt(head_dim) (not multiplied by its inverse),
    the additive mask, a floor at the dtype's minimum, softmax in float32 cast back, then PV.

    See docs/original-model.md, "Prompt and LLM".
    """
    del scaling, dropout, kwargs
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(query.shape[-1])
    if attention_mask is not None:
        weights = weights + attention_mask
        floor = torch.tensor(torch.finfo(weights.dtype).min, device=weights.device)
        weights = torch.max(weights, floor)
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


_REGISTERED = False


def _register_exact_attention() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(EXACT_ATTENTION, _attention_428)
    AttentionMaskInterface.register(EXACT_ATTENTION, eager_mask)
    _REGISTERED = True


@contextlib.contextmanager
def exact_attention(lm: Any) -> Iterator[None]:
    """Within the block, ``lm`` (a transformers model) attends with the 4.28 eager arithmetic."""
    config = getattr(base_model(lm), "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        yield
        return
    _register_exact_attention()
    with attention_implementation(config, EXACT_ATTENTION):
        yield


class HFRunner:
    """transformers' own forward over its KV cache (any causal LM; the exact mode).

    Holds one batch: items are added once, before the first step.
    """

    def __init__(self, lm: Any, embed_tokens: Callable[[Tensor], Tensor], exact: bool) -> None:
        self.lm = lm
        self.embed_tokens = embed_tokens
        self.exact = exact
        self.cache_kwarg = _cache_kwarg(lm)
        self.cache: Any = None
        self.mask: Tensor | None = None
        self.can_join = False

    def add(self, inputs_embeds: Tensor, attention_mask: Tensor, rows_per_item: int) -> Tensor:
        """Prefill [N, L, D]; returns [N*rows_per_item, V] float32 next-token logits."""
        if self.mask is not None:
            raise RuntimeError("this runner takes its items once, before the first step")
        mask = attention_mask.long()
        if self.exact and rows_per_item > 1:  # 4.28 runs step 0 on the prompt expanded per beam
            inputs_embeds = inputs_embeds.repeat_interleave(rows_per_item, dim=0)
            mask = mask.repeat_interleave(rows_per_item, dim=0)
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # 4.28 Llama prepare_inputs
        self.mask = mask
        logits = self._forward(inputs_embeds, position_ids)
        if rows_per_item > 1 and not self.exact:
            self.cache.batch_repeat_interleave(rows_per_item)
            self.mask = self.mask.repeat_interleave(rows_per_item, dim=0)
            logits = logits.repeat_interleave(rows_per_item, dim=0)
        return logits

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row ([N] ids); returns the next logits [N, V] float32."""
        assert self.mask is not None
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        position_ids = self.mask.sum(-1, keepdim=True) - 1  # attended positions - 1
        embeds = self.embed_tokens(tokens[:, None])  # [N, 1, D]
        return self._forward(embeds, position_ids)

    def select(self, rows: Tensor, items: Tensor) -> None:
        """Keep / reorder rows: new row i is old row ``rows[i]``."""
        del items
        assert self.mask is not None
        if rows.shape[0] == self.mask.shape[0] and bool(
            (rows == torch.arange(rows.shape[0], device=rows.device)).all()
        ):
            return
        self.cache.reorder_cache(rows)
        self.mask = self.mask.index_select(0, rows.to(self.mask.device))

    def _forward(self, inputs_embeds: Tensor, position_ids: Tensor) -> Tensor:
        context = exact_attention(self.lm) if self.exact else contextlib.nullcontext()
        with context:
            out = self.lm(
                inputs_embeds=inputs_embeds,
                attention_mask=self.mask,
                position_ids=position_ids,
                use_cache=True,
                **{self.cache_kwarg: self.cache},
            )
        self.cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        return out.logits[:, -1, :].float()


def _cache_kwarg(lm: Any) -> str:
    """``cache`` for transformers >= 5.x that renamed it, else ``past_key_values``."""
    base = base_model(lm)
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def make_runner(lm: Any, embed_tokens: Callable[[Tensor], Tensor], exact: bool) -> Any:
    if not exact:
        from .kvcache import LlamaStepper

        stepper = LlamaStepper.maybe(lm, embed_tokens)
        if stepper is not None:
            return stepper
    return HFRunner(lm, embed_tokens, exact)
