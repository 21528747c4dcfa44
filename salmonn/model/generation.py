"""Generation over ``inputs_embeds`` with transformers-4.28 semantics, exact per item.

This module holds the search (:class:`Decoder`: greedy, sampling, beam search and beam-sample over a
running batch); the rules it applies live beside it: :mod:`~salmonn.model.logits` (processors,
warpers, draws), :mod:`~salmonn.model.beams` (finished hypotheses), :mod:`~salmonn.model.runners`
(how the LM is run, exact attention) and :mod:`~salmonn.model.kvcache` (the fast KV cache).

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

from collections.abc import Callable, Collection, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..config import GenerationOptions
from ..errors import ConfigError
from .beams import BeamHypotheses
from .logits import draw, make_generator, process_logits, warp
from .runners import exact_attention, make_runner

__all__ = ["Decoder", "exact_attention", "generate_ids"]

_BEAM_INIT = -1e9  # 4.28: every beam but the first starts here, so step 0 expands beam 0 only


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
    kwargs: dict[str, Any] = {"eos_token_id": eos_token_id, "bos_token_id": bos_token_id}
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


@dataclass
class _Item:
    key: Hashable
    length: int = 1  # 4.28 cur_len: the dummy BOS plus the generated ids
    hyps: BeamHypotheses | None = None
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
        self.runner = make_runner(lm, embed_tokens, exact)
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
            hyps = BeamHypotheses(nb, self.options.length_penalty) if nb > 1 else None
            generator = make_generator(self.options, device)
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

    def drop(self, keys: Collection[Hashable]) -> None:
        """Take the running items with these keys out of the batch unanswered (a cancelled
        request); the others decode on as before."""
        keep = [i for i, item in enumerate(self.items) if item.key not in keys]
        if len(keep) == len(self.items):
            return
        assert self.logits is not None and self.seqs is not None and self.beam_scores is not None
        nb, device = self.num_beams, self.logits.device
        rows = torch.tensor(
            [i * nb + b for i in keep for b in range(nb)], dtype=torch.long, device=device
        )
        self.items = [self.items[i] for i in keep]
        self.logits = self.logits.index_select(0, rows)
        self.seqs = self.seqs.index_select(0, rows)
        self.beam_scores = self.beam_scores.index_select(0, rows)
        if self.items or self.runner.can_join:
            self.runner.select(rows, torch.tensor(keep, dtype=torch.long, device=device))

    def run(self) -> Iterator[tuple[Hashable, list[int]]]:
        """Step until every item has finished, yielding ``(key, ids)`` as they finish."""
        while self.items:
            yield from self.step()

    # -- greedy and sampling (num_beams == 1) ----------------------------------------------------
    def _step_single(self) -> tuple[list[tuple[Hashable, list[int]]], Tensor, Tensor]:
        assert self.logits is not None and self.seqs is not None
        options = self.options
        lengths = torch.tensor([item.length for item in self.items], device=self.seqs.device)
        scores = process_logits(self.logits, self.seqs, lengths, options, self.eos)
        if options.do_sample:
            probs = warp(scores, options, min_keep=1).softmax(dim=-1)
            tokens = draw(probs, 1, self.items).squeeze(1)
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
        scores = process_logits(scores, self.seqs, lengths, options, self.eos)
        scores = scores + self.beam_scores[:, None]
        vocab = scores.shape[-1]
        if options.do_sample:  # 4.28 beam_sample: warp the running sums, sample w/o replacement
            scores = warp(scores, options, min_keep=2).view(-1, nb * vocab)
            picked = draw(scores.softmax(dim=-1), 2 * nb, self.items)
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
                    item.hyps.add(ids, score, ended_on_eos=False)
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
                    item.hyps.add(self.seqs[row, : item.length].tolist(), score, ended_on_eos=True)
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
        return best.ids[1:] + [self.eos] if best.ended_on_eos else best.ids[1:]

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
