"""The original's learning-rate schedule as a pure function of the step.

A linear warmup from ``warmup_start_lr`` to ``lr`` over ``warmup_steps``, then a cosine from ``lr`` to
``min_lr`` over the whole run, read at the step itself (so the cosine does not restart after the
warmup: at its end the rate is already a little below ``lr``). The original counted the warmup in
steps within the epoch, so a warmup longer than an epoch started over each epoch; here the warmup
counts optimizer steps of the whole run (see docs/training.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """The schedule's settings; defaults are the original's configuration."""

    lr: float = 3e-5
    min_lr: float = 1e-5
    warmup_steps: int = 3000
    warmup_start_lr: float = 1e-6
    total_steps: int = 1

    def __call__(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based): step 0 runs at ``warmup_start_lr``."""
        if step < self.warmup_steps:
            rise = (self.lr - self.warmup_start_lr) * step / max(self.warmup_steps, 1)
            return min(self.lr, self.warmup_start_lr + rise)
        progress = step / max(self.total_steps, 1)
        return (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)) + self.min_lr
