"""Generation over ``inputs_embeds`` with transformers-4.28 semantics, exact per item.

About 600 lines on purpose: the decoding rules (processors, warpers, beam hypotheses) and the
``Decoder`` that applies them to a running batch are one algorithm whose pieces must agree step by
step with 4.28; split across modules, a reader would have to hold several files to check one step.
The KV cache lives apart, in ``kvcache.py``.

The original calls transformers 4.28 ``generate(inputs_embeds=...)`` (see docs/original-model.md,
"Generation"). What decides its output:

* the bookkeeping ids start as ``[[BOS]]`` (a dummy BOS that is never fed), so ``max_length`` is
  ``max_new_tokens + 1`` and beam-hypothesis lengths count that BOS;
* step 0 runs the LM over the whole embedding sequence; later steps feed the embedding of the last
  token with the KV cache, at position "attended positions - 1";
* beam search is 4.28 ``beam_search`` + ``BeamSearchScorer`` (early_stopping False); beam-sample is
  4.28 ``beam_sample``; greedy and sampling are 4.28 ``greedy_search`` / ``sample``.

Two reference bugs are fixed on purpose, so that a batched item gives what it gives alone: the beam
"done" test uses ``cur_len + 1`` for every item (4.28 uses ``cur_len + k`` for the k-th unfinished
item), and a greedy row stops on its own EOS (the reference stops the whole batch on row 0's EOS).
For the same reason seeded sampling (and beam-sample) gives every item its own generator seeded with
``options.seed``: an item draws what it draws alone, whatever else is in the batch or joins it
later; alone, its draws are those of the original's single ``generate`` call. Without a seed,
sampling draws from torch's global generator (random, as the original).

Two ways to run the LM (the search itself is the same code in both):

* fast (default): a LLaMA-shaped LM decodes through :class:`salmonn.model.kvcache.LlamaStepper`, which
  keeps each item's prompt keys/values once for all its beams and only reorders the short generated
  part when beams swap; the prompt is prefilled once per item. Finished items leave the batch and,
  with :class:`Decoder`, new items join a running batch (continuous batching). Results equal the
  exact mode's up to floating-point rounding (SDPA prefill, a different attention reduction order).
* exact (``exact=True``): the original's arithmetic and shapes: one item at a time, transformers'
  own forward with 4.28 eager attention, and step 0 of beam search on the prompt repeated
  ``num_beams`` times.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..config import GenerationOptions
from ..errors import ConfigError

__all__ = ["Decoder", "exact_attention", "generate_ids"]

_BEAM_INIT = -1e9  # 4.28: every beam but the first starts here, so step 0 expands beam 0 only
_WORST_INIT = 1e9  # 4.28 BeamHypotheses.worst_score before any hypothesis
EXACT_ATTENTION = "salmonn_exact"  # transformers attention-interface name of the 4.28 arithmetic


def generate_ids(
    lm: Any,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    options: GenerationOptions,
    *,
    eos_token_id: int,
    embed_tokens: Callable[[Tensor], Tensor],
    bos_token_id: int = 1,
    exact: bool = False,
) -> list[list[int]]:
    """Generate token ids for each item of a left-padded batch of embedding sequences.

    Args:
        lm: causal LM (``LlamaForCausalLM``, possibly peft-wrapped) taking ``inputs_embeds``,
            ``attention_mask``, ``position_ids`` and a KV cache, returning ``.logits`` [N, T, V].
        inputs_embeds: [B, L, D] prompt embeddings, left-padded.
        attention_mask: [B, L] with 1 for real positions; every row's last position must be real.
        options: decoding settings; ``num_beams`` / ``do_sample`` select greedy, sampling, beam
            search or beam-sample.
        eos_token_id: end-of-sequence id.
        embed_tokens: maps ids [N, 1] to embeddings [N, 1, D] (the LM's input table).
        bos_token_id: the dummy BOS that starts the bookkeeping ids (only the repetition penalty
            sees it).
        exact: the original's arithmetic and shapes (see the module docstring); slower.

    Returns:
        Per item, the generated ids without the dummy BOS; they end with ``eos_token_id`` when the
        answer finished, and have ``max_new_tokens`` ids without EOS when it ran to the limit.
    """
    _check_inputs(inputs_embeds, attention_mask)
    kwargs = {"eos_token_id": eos_token_id, "bos_token_id": bos_token_id}
    if exact:
        results = []
        for b in range(inputs_embeds.shape[0]):  # the original: one item per generate call
            real = attention_mask[b].bool()
            decoder = Decoder(lm, options, embed_tokens=embed_tokens, exact=True, **kwargs)
            decoder.add([b], inputs_embeds[b : b + 1, real], attention_mask[b : b + 1, real])
            results.append(dict(decoder.run())[b])
        return results
    decoder = Decoder(lm, options, embed_tokens=embed_tokens, **kwargs)
    decoder.add(list(range(inputs_embeds.shape[0])), inputs_embeds, attention_mask)
    done = dict(decoder.run())
    return [done[b] for b in range(inputs_embeds.shape[0])]


def _check_inputs(inputs_embeds: Tensor, attention_mask: Tensor) -> None:
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[0] == 0 or inputs_embeds.shape[1] == 0:
        raise ConfigError(
            f"inputs_embeds must be [B, L, D] with B, L >= 1, got {tuple(inputs_embeds.shape)}"
        )
    expected = tuple(inputs_embeds.shape[:2])
    if tuple(attention_mask.shape) != expected:
        raise ConfigError(
            f"attention_mask must be [B, L] = {expected}, got {tuple(attention_mask.shape)}"
        )
    if not bool((attention_mask[:, -1] == 1).all()):
        raise ConfigError(
            "attention_mask must be left-padded: the last position of every row must be 1"
        )


def _make_generator(options: GenerationOptions, device: torch.device) -> torch.Generator | None:
    """A new generator seeded with ``options.seed`` (one per item), or ``None``: no sampling, or
    no seed (sampling then draws from torch's global generator)."""
    if not options.do_sample or options.seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(options.seed)
    return generator


def _draw(probs: Tensor, count: int, items: list[_Item]) -> Tensor:
    """``count`` multinomial draws (without replacement) from each row of ``probs`` [N, V], one
    row per item; returns [N, count] ids.

    Seeded: each row draws from its item's own generator, so an item gets the draws it gets alone
    whatever else is in the batch, and alone exactly those of one ``multinomial`` call (the
    single-item sequence of draws). Without a seed: one call on torch's global generator.
    """
    if not items or items[0].generator is None:
        return torch.multinomial(probs, count)
    return torch.cat(
        [
            torch.multinomial(probs[k : k + 1], count, generator=item.generator)
            for k, item in enumerate(items)
        ]
    )


# --------------------------------------------------------------------------------------------------
# Exact attention: the transformers-4.28 LLaMA eager arithmetic


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


def _base_model(lm: Any) -> Any:
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


@contextlib.contextmanager
def exact_attention(lm: Any) -> Iterator[None]:
    """Within the block, ``lm`` (a transformers model) attends with the 4.28 eager arithmetic."""
    config = getattr(_base_model(lm), "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        yield
        return
    _register_exact_attention()
    before = config._attn_implementation
    config._attn_implementation = EXACT_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


# --------------------------------------------------------------------------------------------------
# Runners: prefill new items, feed one token per row, keep / reorder rows


class _HFRunner:
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
    base = _base_model(lm)
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _make_runner(lm: Any, embed_tokens: Callable[[Tensor], Tensor], exact: bool) -> Any:
    if not exact:
        from .kvcache import LlamaStepper

        stepper = LlamaStepper.maybe(lm, embed_tokens)
        if stepper is not None:
            return stepper
    return _HFRunner(lm, embed_tokens, exact)


# --------------------------------------------------------------------------------------------------
# Logits processors and warpers (4.28 order: processors, then temperature, top-k, top-p)


def _repetition_penalty(scores: Tensor, ids: Tensor, penalty: float) -> Tensor:
    """4.28 RepetitionPenaltyLogitsProcessor: scores [N, V], ids [N, T] (dummy BOS included).

    ``ids`` may be right-padded with BOS: BOS is in every history, so padding changes nothing.
    """
    if penalty == 1.0:
        return scores
    picked = scores.gather(1, ids)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, ids, picked)


def _processors(
    scores: Tensor, ids: Tensor, lengths: Tensor, options: GenerationOptions, eos: int
) -> Tensor:
    """4.28 logits processors in order: repetition penalty, then min length.

    ``ids`` [N, T] hold the dummy BOS (right-padded with it); ``lengths`` [N] are 4.28's
    ``cur_len`` per row: EOS is banned while ``cur_len < min_length`` (``min_length=1``, the
    original's setting, never bans it).
    """
    scores = _repetition_penalty(scores, ids, options.repetition_penalty)
    if options.min_length > 1:
        short = lengths < options.min_length
        if bool(short.any()):
            scores = scores.clone()
            scores[short, eos] = -float("inf")
    return scores


def _warp(scores: Tensor, options: GenerationOptions, min_keep: int) -> Tensor:
    """4.28 temperature, top-k and top-p warpers over scores [N, V]; removed entries become -inf."""
    if options.temperature != 1.0:
        scores = scores / options.temperature
    if options.top_k != 0:
        k = min(max(options.top_k, min_keep), scores.shape[-1])
        kth_best = torch.topk(scores, k).values[..., -1:]
        scores = scores.masked_fill(scores < kth_best, -float("inf"))
    if options.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - options.top_p)
        drop_sorted[..., -min_keep:] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)
        scores = scores.masked_fill(drop, -float("inf"))
    return scores


# --------------------------------------------------------------------------------------------------
# Beam hypotheses


class _Hypotheses:
    """4.28 BeamHypotheses for one item: at most ``num_beams`` finished (score, ids) pairs."""

    def __init__(self, num_beams: int, length_penalty: float) -> None:
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.beams: list[tuple[float, list[int]]] = []
        self.worst_score = _WORST_INIT

    def add(self, ids: list[int], sum_logprobs: float) -> None:
        """``ids`` include the dummy BOS and exclude the EOS; the score divides by their length."""
        score = sum_logprobs / (len(ids) ** self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst_score:
            self.beams.append((score, ids))
            if len(self.beams) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, length: int) -> bool:
        if len(self.beams) < self.num_beams:
            return False
        return self.worst_score >= best_sum_logprobs / length**self.length_penalty

    def best(self) -> list[int]:
        """Highest score; among equal scores the last added (4.28 sorts ascending and pops)."""
        return sorted(self.beams, key=lambda beam: beam[0])[-1][1]


# --------------------------------------------------------------------------------------------------
# The decoder: one running batch whose items may finish and join at any step


@dataclass
class _Item:
    key: Hashable
    length: int = 1  # 4.28 cur_len: the dummy BOS plus the generated ids
    hyps: _Hypotheses | None = None
    ids: list[int] = field(default_factory=list)  # greedy / sampling: generated ids so far
    generator: torch.Generator | None = None  # seeded sampling: this item's own draws


class Decoder:
    """Greedy, sampling, beam search or beam-sample over a running batch of items.

    Items join with :meth:`add` (their prompt is prefilled at once) and leave when they finish;
    :meth:`step` advances every running item by one token. Each item's ids equal what it gives
    alone (beam bookkeeping is per item, seeded sampling draws from a generator per item; rows never
    see each other). With a LLaMA-shaped LM in the
    fast mode, items can join a batch that is already decoding (continuous batching); otherwise
    every item must be added before the first step.

    ``decoder.add(keys, embeds, mask)`` then ``for key, ids in decoder.run(): ...``, or
    ``finished = decoder.step()`` repeatedly while ``decoder.running``.
    """

    def __init__(
        self,
        lm: Any,
        options: GenerationOptions,
        *,
        eos_token_id: int,
        embed_tokens: Callable[[Tensor], Tensor],
        bos_token_id: int = 1,
        exact: bool = False,
    ) -> None:
        self.options = options
        self.eos, self.bos = eos_token_id, bos_token_id
        self.num_beams = options.num_beams
        self.max_length = options.max_new_tokens + 1  # the dummy BOS counts
        self.runner = _make_runner(lm, embed_tokens, exact)
        self.items: list[_Item] = []  # running items, in row-block order
        self.logits: Tensor | None = None  # [R, V] next-token logits of the running rows
        self.seqs: Tensor | None = None  # [R, max_length] ids, right-padded with BOS
        self.beam_scores: Tensor | None = None  # [R]

    @property
    def running(self) -> int:
        """Items in the batch."""
        return len(self.items)

    @property
    def rows(self) -> int:
        """Rows in the batch (``running * num_beams``)."""
        return len(self.items) * self.num_beams

    @property
    def can_join(self) -> bool:
        """Whether :meth:`add` is allowed now (always before the first step)."""
        return self.logits is None or bool(getattr(self.runner, "can_join", False))

    def partial_ids(self) -> list[tuple[Hashable, list[int]]]:
        """``(key, ids generated so far)`` of each running item, as copies; greedy and sampling
        only (empty with beams: the best hypothesis is known only when the item finishes)."""
        if self.num_beams != 1:
            return []
        return [(item.key, list(item.ids)) for item in self.items]

    def add(self, keys: list[Hashable], inputs_embeds: Tensor, attention_mask: Tensor) -> None:
        """Prefill new items ([N, L, D] left-padded, mask [N, L]); they decode from the next step."""
        _check_inputs(inputs_embeds, attention_mask)
        if len(keys) != inputs_embeds.shape[0]:
            raise ConfigError(f"{len(keys)} keys for {inputs_embeds.shape[0]} items")
        if not self.can_join:
            raise RuntimeError("this LM cannot take new items into a running batch")
        device = inputs_embeds.device
        nb = self.num_beams
        with torch.inference_mode():
            logits = self.runner.add(inputs_embeds, attention_mask, nb)
        new_rows = len(keys) * nb
        seqs = torch.full((new_rows, self.max_length), self.bos, dtype=torch.long, device=device)
        scores = torch.zeros(len(keys), nb, device=device)
        if nb > 1 and not self.options.do_sample:  # 4.28 beam_sample starts every beam at 0
            scores[:, 1:] = _BEAM_INIT
        for key in keys:
            hyps = _Hypotheses(nb, self.options.length_penalty) if nb > 1 else None
            generator = _make_generator(self.options, device)
            self.items.append(_Item(key, hyps=hyps, generator=generator))
        if self.logits is None:
            self.logits, self.seqs, self.beam_scores = logits, seqs, scores.view(-1)
        else:
            assert self.seqs is not None and self.beam_scores is not None
            self.logits = torch.cat([self.logits, logits])
            self.seqs = torch.cat([self.seqs, seqs])
            self.beam_scores = torch.cat([self.beam_scores, scores.view(-1)])

    def step(self) -> list[tuple[Hashable, list[int]]]:
        """Choose every running item's next token; returns the items that finished, with ids."""
        if not self.items:
            return []
        with torch.inference_mode():
            if self.num_beams == 1:
                finished, rows, tokens = self._step_single()
            else:
                finished, rows, tokens = self._step_beams()
            kept = rows.view(-1, self.num_beams)[:, 0] // self.num_beams
            if self.items:
                self.runner.select(rows, kept)
                self.logits = self.runner.step(tokens)
            else:
                if self.runner.can_join:
                    self.runner.select(rows, kept)  # empties the runner for later items
                assert self.logits is not None
                self.logits = self.logits[:0]
        return finished

    def run(self) -> Iterator[tuple[Hashable, list[int]]]:
        """Step until every item has finished, yielding ``(key, ids)`` as they finish."""
        while self.items:
            yield from self.step()

    # -- greedy and sampling (num_beams == 1) ----------------------------------------------------
    def _step_single(self) -> tuple[list[tuple[Hashable, list[int]]], Tensor, Tensor]:
        assert self.logits is not None and self.seqs is not None
        options = self.options
        lengths = torch.tensor([item.length for item in self.items], device=self.seqs.device)
        scores = _processors(self.logits, self.seqs, lengths, options, self.eos)
        if options.do_sample:
            probs = _warp(scores, options, min_keep=1).softmax(dim=-1)
            tokens = _draw(probs, 1, self.items).squeeze(1)
        else:
            tokens = scores.argmax(dim=-1)
        finished, keep = [], []
        for row, (item, token) in enumerate(zip(self.items, tokens.tolist(), strict=True)):
            item.ids.append(token)
            item.length += 1
            if token == self.eos or item.length >= self.max_length:
                finished.append((item.key, item.ids))
            else:
                keep.append(row)
        return finished, *self._keep_rows(keep, tokens)

    # -- beam search and beam-sample (num_beams > 1) ---------------------------------------------
    def _step_beams(self) -> tuple[list[tuple[Hashable, list[int]]], Tensor, Tensor]:
        """4.28 beam_search / beam_sample with BeamSearchScorer, per item."""
        assert self.logits is not None and self.seqs is not None and self.beam_scores is not None
        options, nb = self.options, self.num_beams
        lengths = torch.tensor(
            [item.length for item in self.items for _ in range(nb)], device=self.seqs.device
        )
        scores = torch.log_softmax(self.logits, dim=-1)
        scores = _processors(scores, self.seqs, lengths, options, self.eos)
        scores = scores + self.beam_scores[:, None]
        vocab = scores.shape[-1]
        if options.do_sample:  # 4.28 beam_sample: warp the running sums, sample w/o replacement
            scores = _warp(scores, options, min_keep=2).view(-1, nb * vocab)
            picked = _draw(scores.softmax(dim=-1), 2 * nb, self.items)
            top_scores, order = torch.sort(scores.gather(1, picked), descending=True, dim=1)
            top_ids = picked.gather(1, order)
        else:
            top_scores, top_ids = torch.topk(scores.view(-1, nb * vocab), 2 * nb, dim=1)
        cand_tokens, cand_beams = (top_ids % vocab).tolist(), (top_ids // vocab).tolist()
        cand_scores = top_scores.tolist()
        finished: list[tuple[Hashable, list[int]]] = []
        rows: list[int] = []
        tokens: list[int] = []
        next_scores: list[float] = []
        running: list[_Item] = []
        for k, item in enumerate(self.items):
            chosen = self._choose(item, k, cand_tokens[k], cand_scores[k], cand_beams[k])
            assert item.hyps is not None
            # cur_len + 1 for every item: the 4.28 "cur_len + k" batch bug is not reproduced
            if item.hyps.is_done(max(cand_scores[k]), item.length + 1):
                finished.append((item.key, self._best(item)))
                continue
            item.length += 1
            if item.length >= self.max_length:  # 4.28 finalize adds the running beams
                for row, _token, score in chosen:
                    ids = self.seqs[row, : item.length - 1].tolist() + [_token]
                    item.hyps.add(ids, score)
                finished.append((item.key, self._best(item)))
                continue
            running.append(item)
            for row, token, score in chosen:
                rows.append(row)
                tokens.append(token)
                next_scores.append(score)
        self.items = running
        device = self.seqs.device
        row_t = torch.tensor(rows, dtype=torch.long, device=device)
        token_t = torch.tensor(tokens, dtype=torch.long, device=device)
        self.beam_scores = torch.tensor(next_scores, dtype=torch.float32, device=device)
        self.seqs = self.seqs.index_select(0, row_t)
        if rows:
            columns = torch.tensor(
                [item.length - 1 for item in running for _ in range(nb)], device=device
            )
            self.seqs[torch.arange(len(rows), device=device), columns] = token_t
        return finished, row_t, token_t

    def _choose(
        self, item: _Item, k: int, tokens: list[int], scores: list[float], beams: list[int]
    ) -> list[tuple[int, int, float]]:
        """4.28 BeamSearchScorer.process for one item: EOS candidates in the top ``num_beams``
        become hypotheses; the first ``num_beams`` other candidates continue."""
        assert self.seqs is not None and item.hyps is not None
        nb = self.num_beams
        chosen: list[tuple[int, int, float]] = []
        for rank, (token, score, beam) in enumerate(zip(tokens, scores, beams, strict=True)):
            row = k * nb + beam
            if token == self.eos:
                if rank < nb:  # an EOS below the top num_beams ranks is ignored
                    item.hyps.add(self.seqs[row, : item.length].tolist(), score)
            else:
                chosen.append((row, token, score))
            if len(chosen) == nb:
                break
        if len(chosen) < nb:
            raise RuntimeError(f"only {len(chosen)} non-EOS beam candidates, {nb} needed")
        return chosen

    def _best(self, item: _Item) -> list[int]:
        assert item.hyps is not None
        best = item.hyps.best()
        return best[1:] + [self.eos] if len(best) < self.max_length else best[1:]

    def _keep_rows(self, keep: list[int], tokens: Tensor) -> tuple[Tensor, Tensor]:
        assert self.seqs is not None
        device = self.seqs.device
        rows = torch.tensor(keep, dtype=torch.long, device=device)
        self.items = [self.items[r] for r in keep]
        tokens = tokens.index_select(0, rows)
        self.seqs = self.seqs.index_select(0, rows)
        if keep:
            columns = torch.tensor([item.length - 1 for item in self.items], device=device)
            self.seqs[torch.arange(len(keep), device=device), columns] = tokens
        return rows, tokens
