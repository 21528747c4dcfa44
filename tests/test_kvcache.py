"""salmonn.model.kvcache.LlamaStepper: the shared-prompt cache gives transformers' own logits.

Each test drives the stepper and transformers' cache (the exact-mode runner without the exact
attention) through the same prompts, tokens, beam reorders and dropped items, and compares the
next-token logits at every step.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from salmonn.model.kvcache import LlamaStepper
from salmonn.model.runners import HFRunner as _HFRunner

HIDDEN = 64


@pytest.fixture(scope="module")
def lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=120,
        hidden_size=HIDDEN,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def _batch(lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    embeds = torch.zeros(len(lengths), longest, HIDDEN)
    mask = torch.zeros(len(lengths), longest, dtype=torch.long)
    for i, n in enumerate(lengths):
        embeds[i, longest - n :] = torch.randn(n, HIDDEN, generator=gen)
        mask[i, longest - n :] = 1
    return embeds, mask


def test_stepper_is_recognised_only_for_llama(lm):
    table = lm.get_input_embeddings()
    assert LlamaStepper.maybe(lm, table) is not None
    assert LlamaStepper.maybe(torch.nn.Linear(2, 2), table) is None


@torch.inference_mode()
@pytest.mark.parametrize("beams", [1, 3])
def test_logits_follow_transformers_through_reorders_and_drops(lm, beams):
    table = lm.get_input_embeddings()
    ours = LlamaStepper.maybe(lm, table)
    theirs = _HFRunner(lm, table, exact=False)
    embeds, mask = _batch([4, 9, 6], seed=1)
    a = ours.add(embeds, mask, beams)
    b = theirs.add(embeds, mask, beams)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    gen = torch.Generator().manual_seed(2)
    items = 3
    for step in range(7):
        rows = []
        for item in range(items):  # rows of an item permute among themselves
            perm = torch.randint(0, beams, (beams,), generator=gen)
            rows += (item * beams + perm).tolist()
        kept = list(range(items))
        if step == 3:  # the middle item finishes: its rows leave
            kept = [0, 2]
            rows = rows[:beams] + rows[2 * beams :]
            items = 2
        rows_t, kept_t = torch.tensor(rows), torch.tensor(kept)
        ours.select(rows_t, kept_t)
        theirs.select(rows_t, kept_t)
        tokens = torch.randint(0, 120, (len(rows),), generator=gen)
        a, b = ours.step(tokens), theirs.step(tokens)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_items_joining_later_see_only_their_own_prompt(lm):
    table = lm.get_input_embeddings()
    embeds, mask = _batch([5, 11], seed=3)
    joined = LlamaStepper.maybe(lm, table)
    joined.add(embeds[:1, -5:], mask[:1, -5:], 2)
    tokens = torch.tensor([7, 8])
    joined.step(tokens)  # the first item is one token ahead
    late = joined.add(embeds[1:], mask[1:], 2)  # a longer prompt widens the prompt buffer
    alone = LlamaStepper.maybe(lm, table)
    first = alone.add(embeds[1:], mask[1:], 2)
    torch.testing.assert_close(late, first, atol=1e-5, rtol=1e-5)
    more = torch.tensor([3, 4, 5, 6])
    mixed = joined.step(more)
    torch.testing.assert_close(mixed[2:], alone.step(more[2:]), atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_a_freed_slot_is_reused_without_its_old_prompt(lm):
    """Items that join after others left take the freed item slots; what those slots held (here:
    poisoned with NaN) never reaches the newcomer or the item that stayed."""
    table = lm.get_input_embeddings()
    embeds, mask = _batch([9, 8, 9], seed=4)
    short, short_mask = _batch([3], seed=5)
    ours = LlamaStepper.maybe(lm, table)
    ours.add(embeds, mask, 2)
    ours.step(torch.tensor([5, 6, 7, 8, 9, 10]))
    ours.select(torch.tensor([1, 0]), torch.tensor([0]))  # items 1 and 2 leave; beams swap
    ours.prefix[:, :, 1:] = float("nan")
    ours.generated[:, :, 2:] = float("nan")
    joined = ours.add(short, short_mask, 2)  # a shorter prompt, into slot 1
    alone = LlamaStepper.maybe(lm, table)
    torch.testing.assert_close(joined, alone.add(short, short_mask, 2), atol=1e-5, rtol=1e-5)
    stay = LlamaStepper.maybe(lm, table)
    stay.add(embeds[:1], mask[:1], 2)
    stay.step(torch.tensor([5, 6]))
    stay.select(torch.tensor([1, 0]), torch.tensor([0]))
    tokens = torch.tensor([11, 12, 13, 14])
    both = ours.step(tokens)
    assert torch.isfinite(both).all()
    torch.testing.assert_close(both[:2], stay.step(tokens[:2]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[2:], alone.step(tokens[2:]), atol=1e-5, rtol=1e-5)
