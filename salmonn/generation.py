"""Generation over ``inputs_embeds`` with transformers-4.28 semantics, exact per item (spec §8.2).

The original calls transformers 4.28 ``generate(inputs_embeds=...)``. What decides its output:

* the bookkeeping ids start as ``[[BOS]]`` (a dummy BOS that is never fed), so ``max_length`` is
  ``max_new_tokens + 1`` and beam-hypothesis lengths count that BOS;
* step 0 runs the LM over the whole embedding sequence; later steps feed the embedding of the last
  token with the KV cache, at position "attended positions - 1";
* beam search is 4.28 ``beam_search`` + ``BeamSearchScorer`` (early_stopping False); beam-sample is
  4.28 ``beam_sample``; greedy and sampling are 4.28 ``greedy_search`` / ``sample``.

Two reference bugs are fixed on purpose, so that a batched item gives what it gives alone: the beam
"done" test uses ``cur_len + 1`` for every item (4.28 uses ``cur_len + k`` for the k-th unfinished
item), and a greedy row stops on its own EOS (the reference stops the whole batch on row 0's EOS).
Finished items are dropped from the running batch, which changes nothing for the others.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .config import GenerationOptions
from .errors import ConfigError

__all__ = ["generate_ids"]

_BEAM_INIT = -1e9  # 4.28: every beam but the first starts here, so step 0 expands beam 0 only
_WORST_INIT = 1e9  # 4.28 BeamHypotheses.worst_score before any hypothesis


def generate_ids(
    lm: Any,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    options: GenerationOptions,
    *,
    eos_token_id: int,
    pad_token_id: int = 0,
    embed_tokens: Callable[[Tensor], Tensor],
    bos_token_id: int = 1,
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
        pad_token_id: kept for interface compatibility; finished items are dropped, never padded.
        embed_tokens: maps ids [N, 1] to embeddings [N, 1, D] (the LM's input table).
        bos_token_id: the dummy BOS that starts the bookkeeping ids (only the repetition penalty
            sees it).

    Returns:
        Per item, the generated ids without the dummy BOS; they end with ``eos_token_id`` when the
        answer finished, and have ``max_new_tokens`` ids without EOS when it ran to the limit.
    """
    del pad_token_id  # finished rows leave the running batch instead of being padded
    _check_inputs(inputs_embeds, attention_mask)
    generator = _make_generator(options, inputs_embeds.device)
    runner = _Runner(lm, embed_tokens)
    with torch.inference_mode():
        logits = runner.prefill(inputs_embeds, attention_mask)
        if options.num_beams == 1:
            return _decode_single(runner, logits, options, eos_token_id, bos_token_id, generator)
        return _decode_beams(runner, logits, options, eos_token_id, bos_token_id, generator)


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
    if not options.do_sample or options.seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(options.seed)
    return generator


class _Runner:
    """Runs the LM one step at a time over a KV cache whose rows can be reordered or dropped."""

    def __init__(self, lm: Any, embed_tokens: Callable[[Tensor], Tensor]) -> None:
        self.lm = lm
        self.embed_tokens = embed_tokens
        self.cache_kwarg = _cache_kwarg(lm)
        self.cache: Any = None
        self.mask: Tensor | None = None

    def prefill(self, inputs_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        """Step 0 over the prompt [N, L, D]; returns the last position's logits [N, V] float32."""
        mask = attention_mask.long()
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # 4.28 Llama prepare_inputs
        self.mask = mask
        return self._forward(inputs_embeds, position_ids)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row ([N] ids); returns the next logits [N, V] float32."""
        assert self.mask is not None
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        position_ids = self.mask.sum(-1, keepdim=True) - 1  # attended positions - 1
        embeds = self.embed_tokens(tokens[:, None])  # [N, 1, D]
        return self._forward(embeds, position_ids)

    def repeat(self, times: int) -> None:
        """Repeat every row ``times`` times (row r becomes rows r*times .. r*times + times-1)."""
        assert self.mask is not None
        self.cache.batch_repeat_interleave(times)
        self.mask = self.mask.repeat_interleave(times, dim=0)

    def select(self, rows: Tensor) -> None:
        """Keep / reorder rows: new row i is old row ``rows[i]``."""
        assert self.mask is not None
        self.cache.reorder_cache(rows)
        self.mask = self.mask.index_select(0, rows.to(self.mask.device))

    def _forward(self, inputs_embeds: Tensor, position_ids: Tensor) -> Tensor:
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
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


# --------------------------------------------------------------------------------------------------
# Logits processors and warpers (4.28 order: processors, then temperature, top-k, top-p)


def _repetition_penalty(scores: Tensor, ids: Tensor, penalty: float) -> Tensor:
    """4.28 RepetitionPenaltyLogitsProcessor: scores [N, V], ids [N, T] (dummy BOS included)."""
    if penalty == 1.0:
        return scores
    picked = scores.gather(1, ids)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, ids, picked)


def _processors(scores: Tensor, ids: Tensor, options: GenerationOptions, eos: int) -> Tensor:
    """4.28 logits processors in order: repetition penalty, then min length.

    ``ids`` [N, T] hold the dummy BOS, so ``T`` is 4.28's ``cur_len``: EOS is banned while
    ``T < min_length`` (``min_length=1``, the original's setting, never bans it).
    """
    scores = _repetition_penalty(scores, ids, options.repetition_penalty)
    if ids.shape[1] < options.min_length:
        scores = scores.clone()
        scores[:, eos] = -float("inf")
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
# Greedy and sampling (num_beams == 1)


def _decode_single(
    runner: _Runner,
    logits: Tensor,
    options: GenerationOptions,
    eos: int,
    bos: int,
    generator: torch.Generator | None,
) -> list[list[int]]:
    """4.28 greedy_search / sample; a row leaves the batch after its EOS. logits: [B, V], step 0."""
    batch = logits.shape[0]
    results: list[list[int]] = [[] for _ in range(batch)]
    items = torch.arange(batch)  # item of each running row
    history = torch.full((batch, 1), bos, dtype=torch.long, device=logits.device)
    for step in range(options.max_new_tokens):
        scores = _processors(logits, history, options, eos)
        if options.do_sample:
            probs = _warp(scores, options, min_keep=1).softmax(dim=-1)
            tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
        else:
            tokens = scores.argmax(dim=-1)
        for item, token in zip(items.tolist(), tokens.tolist()):
            results[item].append(token)
        running = tokens != eos
        if step + 1 == options.max_new_tokens or not bool(running.any()):
            break
        if not bool(running.all()):
            keep = running.nonzero().squeeze(1)
            runner.select(keep)
            items, tokens = items[keep.cpu()], tokens[keep]
            history = history[keep]
        history = torch.cat([history, tokens[:, None]], dim=1)
        logits = runner.step(tokens)
    return results


# --------------------------------------------------------------------------------------------------
# Beam search and beam-sample (num_beams > 1)


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


def _decode_beams(
    runner: _Runner,
    logits: Tensor,
    options: GenerationOptions,
    eos: int,
    bos: int,
    generator: torch.Generator | None,
) -> list[list[int]]:
    """4.28 beam_search / beam_sample with BeamSearchScorer. logits: [B, V] from step 0."""
    batch, num_beams = logits.shape[0], options.num_beams
    max_length = options.max_new_tokens + 1  # the dummy BOS counts
    hyps = [_Hypotheses(num_beams, options.length_penalty) for _ in range(batch)]
    runner.repeat(num_beams)  # the prompt ran once per item; its cache is shared by the beams
    logits = logits.repeat_interleave(num_beams, dim=0)  # [N*nb, V]
    items = list(range(batch))  # running items, in row-block order
    seqs = torch.full((batch * num_beams, 1), bos, dtype=torch.long, device=logits.device)
    beam_scores = torch.zeros(batch, num_beams, device=logits.device)
    if not options.do_sample:  # 4.28 beam_sample starts every beam at 0
        beam_scores[:, 1:] = _BEAM_INIT
    beam_scores = beam_scores.view(-1)
    while True:
        candidates = _candidates(logits, seqs, beam_scores, options, generator, eos)
        rows, tokens, scores, items = _process(hyps, items, seqs, *candidates, eos)
        seqs = torch.cat([seqs[rows], tokens[:, None]], dim=1)
        beam_scores = scores
        if not items or seqs.shape[1] >= max_length:
            break
        runner.select(rows)
        logits = runner.step(tokens)
    for k, item in enumerate(items):  # 4.28 finalize: unfinished items add their running beams
        for row in range(k * num_beams, (k + 1) * num_beams):
            hyps[item].add(seqs[row].tolist(), beam_scores[row].item())
    results = []
    for item_hyps in hyps:
        best = item_hyps.best()
        results.append(best[1:] + [eos] if len(best) < max_length else best[1:])
    return results


def _candidates(
    logits: Tensor,
    seqs: Tensor,
    beam_scores: Tensor,
    options: GenerationOptions,
    generator: torch.Generator | None,
    eos: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Score the next tokens of every beam and pick 2*num_beams candidates per item, best first.

    logits [N*nb, V], seqs [N*nb, T], beam_scores [N*nb] -> (scores, tokens, beam) each [N, 2*nb],
    where ``beam`` is the candidate's beam within its item.
    """
    num_beams = options.num_beams
    scores = torch.log_softmax(logits, dim=-1)
    scores = _processors(scores, seqs, options, eos)
    scores = scores + beam_scores[:, None]
    vocab = scores.shape[-1]
    if options.do_sample:  # 4.28 beam_sample: warp the running sums, sample without replacement
        scores = _warp(scores, options, min_keep=2).view(-1, num_beams * vocab)
        picked = torch.multinomial(scores.softmax(dim=-1), 2 * num_beams, generator=generator)
        top_scores, order = torch.sort(scores.gather(1, picked), descending=True, dim=1)
        top_ids = picked.gather(1, order)
    else:
        top_scores, top_ids = torch.topk(scores.view(-1, num_beams * vocab), 2 * num_beams, dim=1)
    return top_scores, top_ids % vocab, top_ids // vocab


def _process(
    hyps: list[_Hypotheses],
    items: list[int],
    seqs: Tensor,
    cand_scores: Tensor,
    cand_tokens: Tensor,
    cand_beams: Tensor,
    eos: int,
) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """4.28 BeamSearchScorer.process for the running items; items that become done are dropped.

    Returns (rows [M*nb] into the current rows, next tokens [M*nb], next beam scores [M*nb],
    the M items still running).
    """
    num_beams = cand_scores.shape[1] // 2
    cur_len = seqs.shape[1]
    all_scores, all_tokens = cand_scores.tolist(), cand_tokens.tolist()
    all_beams = cand_beams.tolist()
    rows: list[int] = []
    tokens: list[int] = []
    scores: list[float] = []
    still_running: list[int] = []
    for k, item in enumerate(items):
        chosen: list[tuple[int, int, float]] = []
        ranked = zip(all_tokens[k], all_scores[k], all_beams[k])
        for rank, (token, score, beam) in enumerate(ranked):
            row = k * num_beams + beam
            if token == eos:
                if rank < num_beams:  # an EOS below the top num_beams ranks is ignored
                    hyps[item].add(seqs[row].tolist(), score)
            else:
                chosen.append((row, token, score))
            if len(chosen) == num_beams:
                break
        if len(chosen) < num_beams:
            raise RuntimeError(f"only {len(chosen)} non-EOS beam candidates, {num_beams} needed")
        # cur_len + 1 for every item: the 4.28 "cur_len + k" batch bug is not reproduced
        if hyps[item].is_done(max(all_scores[k]), cur_len + 1):
            continue
        still_running.append(item)
        for row, token, score in chosen:
            rows.append(row)
            tokens.append(token)
            scores.append(score)
    device = seqs.device
    return (
        torch.tensor(rows, dtype=torch.long, device=device),
        torch.tensor(tokens, dtype=torch.long, device=device),
        torch.tensor(scores, dtype=torch.float32, device=device),
        still_running,
    )
