"""A cancelled item leaves a running decode (``GenerationStream.drop``, ``Decoder.drop``): the items
decoding beside it get exactly the answers they get without it, waiting items are dropped too, and
the dropped one is never answered."""

from __future__ import annotations

import numpy as np
import pytest

from salmonn.config import GenerationOptions
from salmonn.model.work import WorkItem

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["Tell me about cats.", "What is rain?", "Name a colour.", "Count to five."]


def _wave(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(16_000 * seconds)) / 16_000
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _run(model, options, keys, drop_after=None, dropped=()):
    stream = model.open_stream(options, batch_size=3)
    for key in keys:
        wave = _wave(2.0 + key, 200.0 + 50 * key) if key % 2 else None
        stream.put(WorkItem(key, PROMPTS[key], wave))
    results, steps = {}, 0
    while stream.busy:
        for key, result in stream.step():
            results[key] = result
        steps += 1
        if steps == drop_after:
            stream.drop(set(dropped))
    return results


@pytest.mark.parametrize(
    "options",
    [
        GenerationOptions(max_new_tokens=12, num_beams=1, min_length=12),
        GenerationOptions(max_new_tokens=10, num_beams=3),
        GenerationOptions(max_new_tokens=12, do_sample=True, num_beams=1, seed=5),
    ],
    ids=["greedy", "beams", "sampled"],
)
def test_dropped_items_leave_and_the_others_are_unchanged(tiny_model, options):
    alone = _run(tiny_model, options, [0, 2])
    # items 0, 1, 2 decode together (batch of 3), 3 waits; after 3 steps 1 (running) and 3
    # (waiting) are dropped
    mixed = _run(tiny_model, options, [0, 1, 2, 3], drop_after=3, dropped=[1, 3])
    assert sorted(mixed) == [0, 2]
    for key in (0, 2):
        assert mixed[key].token_ids == alone[key].token_ids
