"""Logits processors, warpers and the draws of sampling, as transformers 4.28 applies them.

Order (4.28): processors (repetition penalty, then min length), then the warpers (temperature,
top-k, top-p); sampling draws from each item's own seeded generator when a seed is given, so an
item draws what it draws alone whatever else is in the batch (see :mod:`salmonn.model.generation`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..config import GenerationOptions


def make_generator(options: GenerationOptions, device: torch.device) -> torch.Generator | None:
    """A new generator seeded with ``options.seed`` (one per item), or ``None``: no sampling, or
    no seed (sampling then draws from torch's global generator)."""
    if not options.do_sample or options.seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(options.seed)
    return generator


def draw(probs: Tensor, count: int, items: list[Any]) -> Tensor:
    """``count`` multinomial draws (without replacement) from each row of ``probs`` [N, V], one
    row per item (each with a ``generator`` attribute); returns [N, count] ids.

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


def repetition_penalty(scores: Tensor, ids: Tensor, penalty: float) -> Tensor:
    """4.28 RepetitionPenaltyLogitsProcessor: scores [N, V], ids [N, T] (dummy BOS included).

    ``ids`` may be right-padded with BOS: BOS is in every history, so padding changes nothing.
    """
    if penalty == 1.0:
        return scores
    picked = scores.gather(1, ids)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, ids, picked)


def process_logits(
    scores: Tensor, ids: Tensor, lengths: Tensor, options: GenerationOptions, eos: int
) -> Tensor:
    """4.28 logits processors in order: repetition penalty, then min length.

    ``ids`` [N, T] hold the dummy BOS (right-padded with it); ``lengths`` [N] are 4.28's
    ``cur_len`` per row: EOS is banned while ``cur_len < min_length`` (``min_length=1``, the
    original's setting, never bans it).
    """
    scores = repetition_penalty(scores, ids, options.repetition_penalty)
    if options.min_length > 1:
        short = lengths < options.min_length
        if bool(short.any()):
            scores = scores.clone()
            scores[short, eos] = -float("inf")
    return scores


def warp(scores: Tensor, options: GenerationOptions, min_keep: int) -> Tensor:
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
