"""Finished beam hypotheses of one item, as transformers 4.28's ``BeamHypotheses`` keeps them.

A hypothesis records whether it ended on EOS (added when EOS was chosen) or ran out of length
(added when the item reached ``max_new_tokens``): the decoder appends EOS to the answer of the first
kind only, and reads that fact here instead of guessing it from the length.
"""

from __future__ import annotations

from dataclasses import dataclass

_WORST_INIT = 1e9  # 4.28 BeamHypotheses.worst_score before any hypothesis


@dataclass(frozen=True)
class Hypothesis:
    """One finished beam: its score, its ids (dummy BOS included, EOS excluded), how it ended."""

    score: float
    ids: list[int]
    ended_on_eos: bool


class BeamHypotheses:
    """4.28 BeamHypotheses for one item: at most ``num_beams`` finished (score, ids) pairs."""

    def __init__(self, num_beams: int, length_penalty: float) -> None:
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.beams: list[Hypothesis] = []
        self.worst_score = _WORST_INIT

    def add(self, ids: list[int], sum_logprobs: float, *, ended_on_eos: bool) -> None:
        """``ids`` include the dummy BOS and exclude the EOS; the score divides by their length."""
        score = sum_logprobs / (len(ids) ** self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst_score:
            self.beams.append(Hypothesis(score, ids, ended_on_eos))
            if len(self.beams) > self.num_beams:
                ranked = sorted((beam.score, i) for i, beam in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, length: int) -> bool:
        if len(self.beams) < self.num_beams:
            return False
        return self.worst_score >= best_sum_logprobs / length**self.length_penalty

    def best(self) -> Hypothesis:
        """Highest score; among equal scores the last added (4.28 sorts ascending and pops)."""
        return sorted(self.beams, key=lambda beam: beam.score)[-1]
