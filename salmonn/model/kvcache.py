"""Fast LLaMA decoding for beam search: prompt keys/values kept once per item, not once per beam.

transformers' own cache stores every beam's copy of the prompt and, for beam search, copies the
whole cache of every layer at every step (``reorder_cache``), while its ``torch.cat`` append copies
it once more. With 32 rows, 8 layers and ~150 positions that is hundreds of MB per step, as much as
the weights themselves. :class:`LlamaStepper` instead keeps

* the prompt ("prefix") keys/values once per item: ``[items, heads, P, head_dim]`` per layer,
  shared by the item's beams (beams differ only in what they generated);
* the generated keys/values per row in preallocated buffers ``[rows, heads, capacity, head_dim]``,
  written in place; a beam reorder copies only the rows that changed, and only their generated
  columns.

Every layer's keys and values live in one tensor per kind (``[layers, 2, ...]``), so a reorder is
one gather and one scatter for the whole model rather than two per layer and kind, and items that
join are written into free item slots instead of concatenating the whole prompt cache again.

Attention for a decode step scores the query of each beam against its item's prefix (one matmul per
item over its ``num_beams`` queries) and against its own generated part, with one softmax over both.
Items of different prompt lengths sit right-padded in the prefix buffer under a mask, so new items
can join a running batch (continuous batching).

The prompt itself runs through transformers' forward (only the last position's logits are computed);
every linear layer is the model's own module (LoRA and quantized layers included), so the weights
and their arithmetic are the model's. Results equal transformers' decoding up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .llm import base_model

_MIN_CAPACITY = 32  # generated columns allocated at first; doubled when full


class LlamaStepper:
    """Decode-step runner for a LLaMA-shaped causal LM (``model.layers[i].self_attn.q_proj`` ...).

    The runner interface used by :class:`salmonn.model.generation.Decoder`: :meth:`add` prefills new
    items, :meth:`select` keeps / reorders rows, :meth:`step` feeds one token per row.
    """

    can_join = True

    def __init__(self, lm: Any, base: Any, embed_tokens: Callable[[Tensor], Tensor]) -> None:
        self.lm = lm
        self.embed_tokens = embed_tokens
        self.layers = list(base.model.layers[: base.config.num_hidden_layers])
        self.norm = base.model.norm
        self.rotary = base.model.rotary_emb
        self.lm_head = base.lm_head
        attn = self.layers[0].self_attn
        self.heads = int(base.config.num_attention_heads)
        self.head_dim = int(getattr(attn, "head_dim", base.config.hidden_size // self.heads))
        self.scaling = float(getattr(attn, "scaling", self.head_dim**-0.5))
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self.apply_rotary = apply_rotary_pos_emb
        self.cache_kwarg = "cache"
        self.nb = 1  # rows per item
        # prefix (prompt) state, per item: [layers, 2 (keys, values), item slots, H, P, d]
        self.prefix: Tensor | None = None
        self.items = 0  # items in the batch (slots 0 .. items-1)
        self.pbias: Tensor | None = None  # [G, P] float32: 0 for real positions, -inf for padding
        self.plen: Tensor | None = None  # [G] real prompt lengths
        # generated state, per row: [layers, 2 (keys, values), row slots, H, capacity, d]
        self.generated: Tensor | None = None
        self.glen: Tensor | None = None  # [R] generated tokens in the cache
        self.rows = 0

    @classmethod
    def maybe(cls, lm: Any, embed_tokens: Callable[[Tensor], Tensor]) -> LlamaStepper | None:
        """A stepper for ``lm`` when it has the LLaMA layout this runner knows, else None."""
        base = base_model(lm)
        config = getattr(base, "config", None)
        model = getattr(base, "model", None)
        if config is None or model is None or getattr(config, "model_type", None) != "llama":
            return None
        needed = ("layers", "norm", "rotary_emb")
        if not all(hasattr(model, name) for name in needed) or not hasattr(base, "lm_head"):
            return None
        heads = getattr(config, "num_attention_heads", None)
        if getattr(config, "num_key_value_heads", heads) != heads:
            return None  # grouped-query attention: not needed for Vicuna, left to transformers
        try:
            import transformers.models.llama.modeling_llama  # noqa: F401
        except ImportError:
            return None
        stepper = cls(lm, base, embed_tokens)
        import inspect

        params = inspect.signature(base.forward).parameters
        stepper.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        return stepper

    # -- items join ------------------------------------------------------------------------------
    def add(self, inputs_embeds: Tensor, attention_mask: Tensor, rows_per_item: int) -> Tensor:
        """Prefill N new items [N, L, D] (left-padded); returns [N*rows_per_item, V] logits."""
        if self.rows and rows_per_item != self.nb:
            raise RuntimeError("every item of a batch must have the same number of rows")
        self.nb = rows_per_item
        mask = attention_mask.long()
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # 4.28 Llama prepare_inputs
        out = self.lm(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        logits = out.logits[:, -1, :].float()
        new_items, length = inputs_embeds.shape[0], mask.shape[1]
        valid = mask.bool()
        old_width = 0 if self.prefix is None else self.prefix.shape[4]
        width = max(old_width, length)
        keys0, _ = _layer_kv(cache, 0)
        self._reserve_items(self.items + new_items, width, like=keys0)
        assert self.prefix is not None
        slots = slice(self.items, self.items + new_items)
        for i in range(len(self.layers)):
            keys, values = _layer_kv(cache, i)  # [N, H, L, d]
            self.prefix[i, 0, slots, :, :length] = keys
            self.prefix[i, 1, slots, :, :length] = values
        if length < width:  # a slot may hold an earlier item's prompt: zeros, as padding
            self.prefix[:, :, slots, :, length:] = 0
        del cache, out
        bias = torch.zeros(new_items, width, dtype=torch.float32, device=mask.device)
        bias[:, :length].masked_fill_(~valid, float("-inf"))
        bias[:, length:] = float("-inf")
        lengths = mask.sum(-1)
        if self.pbias is None or self.plen is None:
            self.pbias, self.plen = bias, lengths
        else:
            old = self.pbias
            if old.shape[1] < width:
                pad = old.new_full((old.shape[0], width - old.shape[1]), float("-inf"))
                old = torch.cat([old, pad], dim=1)
            self.pbias = torch.cat([old, bias])
            self.plen = torch.cat([self.plen, lengths])
        self.items += new_items
        if not self._grow_rows(self.rows + new_items * rows_per_item, like=keys0):
            assert self.generated is not None
            # the rows may hold what earlier rows generated; masked columns are still read
            self.generated[:, :, self.rows : self.rows + new_items * rows_per_item] = 0
        zeros = torch.zeros(new_items * rows_per_item, dtype=torch.long, device=mask.device)
        self.glen = zeros if self.glen is None else torch.cat([self.glen[: self.rows], zeros])
        self.rows += new_items * rows_per_item
        return logits.repeat_interleave(rows_per_item, dim=0) if rows_per_item > 1 else logits

    def _reserve_items(self, count: int, width: int, like: Tensor) -> None:
        """Room for ``count`` items' prompts of up to ``width`` positions (kept: the first
        ``self.items`` slots; new columns are zero)."""
        old = self.prefix
        if old is not None and old.shape[2] >= count and old.shape[4] == width:
            return
        slots = count if old is None else max(old.shape[2], count)
        if old is not None and count > old.shape[2]:
            slots = max(count, 2 * old.shape[2])
        layers = len(self.layers)
        new = like.new_zeros(layers, 2, slots, self.heads, width, self.head_dim)
        if old is not None and self.items:
            new[:, :, : self.items, :, : old.shape[4]] = old[:, :, : self.items]
        self.prefix = new

    def _grow_rows(self, rows: int, like: Tensor) -> bool:
        """Room for ``rows`` rows; True when the rows from ``self.rows`` on are new zeros."""
        old = self.generated
        if old is not None and old.shape[2] >= rows:
            return False
        capacity = old.shape[4] if old is not None else _MIN_CAPACITY
        total = max(rows, 2 * old.shape[2]) if old is not None else rows
        shape = (len(self.layers), 2, total, self.heads, capacity, self.head_dim)
        new = like.new_zeros(shape)
        if old is not None and self.rows:
            new[:, :, : self.rows] = old[:, :, : self.rows]
        self.generated = new
        return True

    def _grow_columns(self, needed: int) -> None:
        old = self.generated
        assert old is not None
        capacity = old.shape[4]
        if needed <= capacity:
            return
        total = max(needed, 2 * capacity)
        new = old.new_zeros(*old.shape[:4], total, old.shape[5])
        new[:, :, :, :, :capacity] = old
        self.generated = new

    def held_bytes(self) -> int:
        """Bytes of the key/value buffers allocated now (prompt and generated parts)."""
        return sum(
            t.numel() * t.element_size() for t in (self.prefix, self.generated) if t is not None
        )

    # -- rows leave / reorder --------------------------------------------------------------------
    def select(self, rows: Tensor, items: Tensor) -> None:
        """New row i is old row ``rows[i]``; new item j is old item ``items[j]``.

        Only rows and items that moved are copied (their generated columns; their prompt)."""
        assert self.glen is not None and self.plen is not None and self.pbias is not None
        rows = rows.to(self.glen.device)
        items = items.to(self.plen.device)
        used = int(self.glen[: self.rows].max()) if self.rows else 0
        moved = (rows != torch.arange(rows.shape[0], device=rows.device)).nonzero().squeeze(1)
        if moved.numel() and used:
            assert self.generated is not None
            source = rows.index_select(0, moved)
            # index_select + index_copy_: one pass each way (advanced-index assignment is
            # several times slower here: it goes element by element)
            written = self.generated[:, :, :, :, :used]
            written.index_copy_(2, moved, written.index_select(2, source))
        self.glen = self.glen.index_select(0, rows)
        self.rows = rows.shape[0]
        count = items.shape[0]
        moved = (items != torch.arange(count, device=items.device)).nonzero().squeeze(1)
        if moved.numel():
            assert self.prefix is not None
            source = items.index_select(0, moved)
            self.prefix.index_copy_(2, moved, self.prefix.index_select(2, source))
        self.items = count
        self.pbias = self.pbias.index_select(0, items)
        self.plen = self.plen.index_select(0, items)

    # -- one token per row -----------------------------------------------------------------------
    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row ([R] ids); returns the next logits [R, V] float32."""
        assert self.glen is not None and self.plen is not None and self.pbias is not None
        rows, nb, heads, dim = tokens.shape[0], self.nb, self.heads, self.head_dim
        items = rows // nb
        glen = self.glen
        self._grow_columns(int(glen.max()) + 1)
        x = self.embed_tokens(tokens[:, None])  # [R, 1, D]
        plen = self.plen.repeat_interleave(nb) if nb > 1 else self.plen
        positions = (plen + glen)[:, None]  # attended positions - 1, as transformers' step
        cos, sin = self.rotary(x, positions)
        width = int(glen.max()) + 1
        row_index = torch.arange(rows, device=tokens.device)
        gbias = torch.zeros(rows, width, dtype=torch.float32, device=tokens.device)
        gbias.masked_fill_(
            torch.arange(width, device=tokens.device)[None, :] > glen[:, None], float("-inf")
        )
        gbias = gbias[:, None, None, :]  # [R, 1, 1, W]
        pbias = self.pbias[:, None, None, :]  # [G, 1, 1, P]
        same_column = bool((glen == glen[0]).all())
        column = int(glen[0])
        assert self.prefix is not None and self.generated is not None
        prefix_kv = self.prefix[:, :, :items]  # [layers, 2, G, H, P, d]
        generated = self.generated
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(rows, 1, heads, dim).transpose(1, 2)  # [R, H, 1, d]
            k = attn.k_proj(h).view(rows, 1, heads, dim).transpose(1, 2)
            v = attn.v_proj(h).view(rows, 1, heads, dim).transpose(1, 2)
            q, k = self.apply_rotary(q, k, cos, sin)
            gk, gv = generated[i, 0], generated[i, 1]
            if same_column:
                gk[:rows, :, column] = k[:, :, 0]
                gv[:rows, :, column] = v[:, :, 0]
            else:
                gk[row_index, :, glen] = k[:, :, 0]
                gv[row_index, :, glen] = v[:, :, 0]
            # scores against the item's prompt: the item's nb queries at once
            q_items = q.reshape(items, nb, heads, dim).transpose(1, 2)  # [G, H, nb, d]
            prefix = torch.matmul(q_items, prefix_kv[i, 0].transpose(2, 3))  # [G, H, nb, P]
            prefix = prefix.float() * self.scaling + pbias
            prefix = prefix.transpose(1, 2).reshape(rows, heads, 1, -1)  # [R, H, 1, P]
            own = torch.matmul(q, gk[:rows, :, :width].transpose(2, 3))  # [R, H, 1, W]
            own = own.float() * self.scaling + gbias
            weights = torch.softmax(torch.cat([prefix, own], dim=-1), dim=-1).to(q.dtype)
            p_prefix = weights[..., : prefix.shape[-1]].reshape(items, nb, heads, -1)
            out = torch.matmul(p_prefix.transpose(1, 2), prefix_kv[i, 1])  # [G, H, nb, d]
            out = out.transpose(1, 2).reshape(rows, heads, 1, dim)
            out = out + torch.matmul(weights[..., prefix.shape[-1] :], gv[:rows, :, :width])
            out = out.transpose(1, 2).reshape(rows, 1, heads * dim)
            x = x + attn.o_proj(out)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.glen = glen + 1
        return self.lm_head(self.norm(x))[:, -1, :].float()


def _layer_kv(cache: Any, index: int) -> tuple[Tensor, Tensor]:
    """Keys and values [N, H, L, d] of one layer of a transformers cache (5.x layers or tuples)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[index].keys, layers[index].values
    keys, values = cache[index][:2]
    return keys, values
