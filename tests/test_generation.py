"""salmonn.model.generation: 4.28-style greedy / beam / sampling over inputs_embeds, exact per batch item.

The beam and greedy references below are written independently and slowly: a full forward with no KV
cache at every step, plain Python lists for the beams. They check the cache handling, the beam
reordering and the scorer logic of the real implementation.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from salmonn.config import GenerationOptions
from salmonn.errors import ConfigError
from salmonn.model.generation import generate_ids

BOS, EOS, PAD = 1, 2, 0
VOCAB, HIDDEN = 300, 64
PROMPT_LENGTHS = (3, 5, 7, 9, 11, 4)


def _tiny_lm(seed: int, eos_boost: float) -> LlamaForCausalLM:
    """Tiny LLaMA with large random weights (peaky, prompt-dependent outputs); EOS row scaled up."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    lm = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        lm.model.embed_tokens.weight.normal_(0, 0.3)
        for layer in lm.model.layers:
            attn = layer.self_attn
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
                proj.weight.normal_(0, 0.3)
        lm.lm_head.weight.normal_(0, 0.3)
        lm.lm_head.weight[EOS] *= eos_boost
    return lm


@pytest.fixture(scope="module")
def lm() -> LlamaForCausalLM:
    return _tiny_lm(0, eos_boost=2.0)  # some answers end early, some run to the limit


@pytest.fixture(scope="module")
def eos_lm() -> LlamaForCausalLM:
    return _tiny_lm(0, eos_boost=3.0)  # most answers end early


@pytest.fixture(scope="module")
def prompts() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(n, HIDDEN, generator=gen) for n in PROMPT_LENGTHS]


def _left_pad(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(p.shape[0] for p in prompts)
    embeds = torch.zeros(len(prompts), longest, prompts[0].shape[1])
    mask = torch.zeros(len(prompts), longest, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        embeds[i, longest - prompt.shape[0] :] = prompt
        mask[i, longest - prompt.shape[0] :] = 1
    return embeds, mask


def _run(lm, prompts: list[torch.Tensor], **option_fields) -> list[list[int]]:
    """generate_ids over a left-padded batch of prompts [L_i, D]."""
    embeds, mask = _left_pad(prompts)
    options = GenerationOptions(**option_fields)
    return generate_ids(
        lm,
        embeds,
        mask,
        options,
        eos_token_id=EOS,
        embed_tokens=lm.get_input_embeddings(),
    )


def _alone(lm, prompts, **option_fields) -> list[list[int]]:
    return [_run(lm, [p], **option_fields)[0] for p in prompts]


# --------------------------------------------------------------------------------------------------
# Slow, independent references (no cache, one item)


@torch.no_grad()
def _next_logprobs(lm, prompt: torch.Tensor, histories: list[list[int]], log: bool) -> torch.Tensor:
    """Full forward of prompt + generated ids (dummy BOS not fed), per history -> [n, V] f32."""
    table = lm.get_input_embeddings()
    rows = [torch.cat([prompt, table(torch.tensor(h[1:], dtype=torch.long))]) for h in histories]
    logits = lm(inputs_embeds=torch.stack(rows), use_cache=False).logits[:, -1].float()
    return torch.log_softmax(logits, dim=-1) if log else logits


def _penalise(scores: torch.Tensor, histories: list[list[int]], penalty: float) -> torch.Tensor:
    scores = scores.clone()
    for r, history in enumerate(histories):
        for token in set(history):
            value = scores[r, token]
            scores[r, token] = value * penalty if value < 0 else value / penalty
    return scores


def _slow_greedy(lm, prompt, max_new: int, penalty: float = 1.0) -> list[int]:
    ids = [BOS]
    while len(ids) < max_new + 1:
        scores = _penalise(_next_logprobs(lm, prompt, [ids], log=False), [ids], penalty)
        ids.append(int(scores[0].argmax()))
        if ids[-1] == EOS:
            break
    return ids[1:]


def _slow_beam(
    lm, prompt, max_new: int, beams: int = 4, length_penalty: float = 1.0, penalty: float = 1.0
) -> list[int]:
    max_len = max_new + 1
    running = [([BOS], 0.0)] + [([BOS], -1e9)] * (beams - 1)
    finished: list[tuple[float, list[int]]] = []  # (normalised score, ids without EOS)

    def keep(ids: list[int], total: float) -> None:
        score = total / len(ids) ** length_penalty
        if len(finished) < beams or score > min(s for s, _ in finished):
            finished.append((score, ids))
            if len(finished) > beams:
                finished.remove(min(finished, key=lambda f: f[0]))

    while True:
        histories = [ids for ids, _ in running]
        scores = _penalise(_next_logprobs(lm, prompt, histories, log=True), histories, penalty)
        scores = scores + torch.tensor([s for _, s in running])[:, None]
        flat = scores.flatten()
        order = torch.argsort(flat, descending=True)[: 2 * beams].tolist()
        nxt = []
        for rank, index in enumerate(order):
            beam, token = divmod(index, scores.shape[1])
            if token == EOS:
                if rank < beams:
                    keep(running[beam][0], flat[index].item())
            else:
                nxt.append((running[beam][0] + [token], flat[index].item()))
            if len(nxt) == beams:
                break
        cur_len = len(running[0][0])
        best_possible = flat[order[0]].item() / (cur_len + 1) ** length_penalty
        if len(finished) == beams and min(s for s, _ in finished) >= best_possible:
            break
        running = nxt
        if len(running[0][0]) >= max_len:
            for ids, total in running:
                keep(ids, total)
            break
    best = sorted(finished, key=lambda f: f[0])[-1][1]
    return best[1:] + [EOS] if len(best) < max_len else best[1:]


# --------------------------------------------------------------------------------------------------
# Greedy


def test_greedy_matches_transformers_generate(lm, prompts):
    ours = _alone(lm, prompts, num_beams=1, max_new_tokens=12)
    for prompt, mine in zip(prompts, ours, strict=True):
        mask = torch.ones(1, len(prompt), dtype=torch.long)
        theirs = lm.generate(
            inputs_embeds=prompt[None],
            attention_mask=mask,
            do_sample=False,
            num_beams=1,
            max_new_tokens=12,
            eos_token_id=EOS,
            pad_token_id=PAD,
            bos_token_id=BOS,
        )
        assert mine == theirs[0].tolist()
    assert any(o[-1] == EOS for o in ours) and any(o[-1] != EOS for o in ours)


@pytest.mark.parametrize("which", ["lm", "eos_lm"])
def test_greedy_batched_equals_alone(which, request, prompts):
    model = request.getfixturevalue(which)
    alone = _alone(model, prompts, num_beams=1, max_new_tokens=12)
    assert _run(model, prompts, num_beams=1, max_new_tokens=12) == alone
    assert alone == [_slow_greedy(model, p, 12) for p in prompts]


def test_greedy_repetition_penalty(lm, prompts):
    plain = _alone(lm, prompts, num_beams=1, max_new_tokens=12)
    penalised = _run(lm, prompts, num_beams=1, max_new_tokens=12, repetition_penalty=1.8)
    assert penalised != plain
    assert penalised == [_slow_greedy(lm, p, 12, penalty=1.8) for p in prompts]


def test_min_length_bans_eos_until_reached(eos_lm, prompts):
    plain = _run(eos_lm, prompts, num_beams=1, max_new_tokens=12)
    assert any(EOS in ids[:5] for ids in plain)  # the EOS-heavy model stops early somewhere
    for beams in (1, 4):
        held = _run(eos_lm, prompts, num_beams=beams, max_new_tokens=12, min_length=6)
        # 4.28 counts the dummy BOS: ids of length 6 = BOS + 5 tokens, so tokens 1..5 are not EOS
        assert all(EOS not in ids[:5] for ids in held)


# --------------------------------------------------------------------------------------------------
# Beam search


@pytest.mark.parametrize("which", ["lm", "eos_lm"])
def test_beam_matches_slow_reference_alone_and_batched(which, request, prompts):
    model = request.getfixturevalue(which)
    expected = [_slow_beam(model, p, 12) for p in prompts]
    assert _alone(model, prompts, max_new_tokens=12) == expected
    assert _run(model, prompts, max_new_tokens=12) == expected
    assert any(e[-1] == EOS for e in expected)


def test_beam_length_and_repetition_penalty(lm, prompts):
    for fields in ({"length_penalty": 0.5}, {"repetition_penalty": 1.8}):
        expected = [
            _slow_beam(
                lm,
                p,
                10,
                length_penalty=fields.get("length_penalty", 1.0),
                penalty=fields.get("repetition_penalty", 1.0),
            )
            for p in prompts
        ]
        assert _run(lm, prompts, max_new_tokens=10, **fields) == expected
    plain = _run(lm, prompts, max_new_tokens=10)
    assert _run(lm, prompts, max_new_tokens=10, repetition_penalty=1.8) != plain


def test_beam_width_two_and_six(eos_lm, prompts):
    for beams in (2, 6):
        expected = [_slow_beam(eos_lm, p, 8, beams=beams) for p in prompts[:3]]
        assert _run(eos_lm, prompts[:3], max_new_tokens=8, num_beams=beams) == expected


@pytest.mark.parametrize("beams", [1, 4])
def test_max_new_tokens_and_eos_placement(eos_lm, lm, prompts, beams):
    for model in (lm, eos_lm):
        for max_new in (1, 2, 5):
            for ids in _run(model, prompts, num_beams=beams, max_new_tokens=max_new):
                assert 1 <= len(ids) <= max_new
                assert EOS not in ids[:-1]
                if ids[-1] != EOS:
                    assert len(ids) == max_new  # no EOS only when the limit was reached


# --------------------------------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize("beams", [1, 3])
def test_sampling_is_seeded(lm, prompts, beams):
    fields = dict(do_sample=True, num_beams=beams, max_new_tokens=10, temperature=1.5, top_p=0.95)
    first = _run(lm, prompts, seed=7, **fields)
    assert _run(lm, prompts, seed=7, **fields) == first
    others = [_run(lm, prompts, seed=s, **fields) for s in (8, 9)]
    assert any(o != first for o in others)
    for ids in first:
        assert 1 <= len(ids) <= 10 and EOS not in ids[:-1]


@pytest.mark.parametrize("beams", [1, 3])
def test_seeded_sampling_gives_each_item_what_it_gives_alone(lm, prompts, beams):
    """Each item draws from its own generator seeded with ``seed``: batch size, batch mates and
    the order of the items change nothing."""
    fields = dict(do_sample=True, num_beams=beams, max_new_tokens=10, temperature=1.5, seed=7)
    alone = _alone(lm, prompts, **fields)
    assert _run(lm, prompts, **fields) == alone
    assert _run(lm, prompts[::-1], **fields) == alone[::-1]
    assert _run(lm, prompts[1:3], **fields) == alone[1:3]


def test_sampling_with_one_candidate_left_is_greedy(lm, prompts):
    fields = dict(num_beams=1, max_new_tokens=10)
    greedy = _run(lm, prompts, **fields)
    assert _run(lm, prompts, do_sample=True, top_k=1, seed=3, **fields) == greedy
    assert _run(lm, prompts, do_sample=True, top_k=0, top_p=1e-6, seed=3, **fields) == greedy


# --------------------------------------------------------------------------------------------------
# peft and input checks


def test_through_peft_lora(lm, prompts):
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=8,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
    )
    wrapped = get_peft_model(copy.deepcopy(lm), config).eval()
    torch.manual_seed(5)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    few = prompts[:4]
    ours = _run(wrapped, few, max_new_tokens=10)
    assert ours == [_slow_beam(wrapped, p, 10) for p in few]
    assert ours != _run(lm, few, max_new_tokens=10)  # the adapters matter
    greedy = _run(wrapped, few, num_beams=1, max_new_tokens=10)
    assert greedy == [_slow_greedy(wrapped, p, 10) for p in few]


def test_rejects_bad_inputs(lm):
    options = GenerationOptions(max_new_tokens=2)
    table = lm.get_input_embeddings()
    with pytest.raises(ConfigError, match="left-padded"):
        generate_ids(
            lm,
            torch.randn(1, 3, HIDDEN),
            torch.tensor([[1, 1, 0]]),
            options,
            eos_token_id=EOS,
            embed_tokens=table,
        )
    with pytest.raises(ConfigError, match="attention_mask"):
        generate_ids(
            lm,
            torch.randn(1, 3, HIDDEN),
            torch.ones(1, 4, dtype=torch.long),
            options,
            eos_token_id=EOS,
            embed_tokens=table,
        )


# --------------------------------------------------------------------------------------------------
# Scorer rules on scripted LMs


class _ScriptedLM(torch.nn.Module):
    """A fake causal LM whose next-token logits are a seeded random function of the whole history.

    Embeddings are one float per position (a token id embeds as its own value), so the "cache" is
    the list of values each row has seen. A small vocabulary with a strong, often top-ranked EOS
    makes hypotheses finish at many different steps; length penalties 2-3 make the "done" test decisive.
    """

    def __init__(self, seed: int, vocab: int = 7) -> None:
        super().__init__()
        self.seed, self.vocab = seed, vocab

    def get_input_embeddings(self):
        return lambda ids: ids.float()[..., None]

    def _logits(self, history: tuple[int, ...]) -> torch.Tensor:
        gen = torch.Generator().manual_seed(hash((self.seed,) + history) % 2**62)
        logits = torch.randn(self.vocab, generator=gen) * 3
        logits[EOS] = logits.max() - 4 * torch.rand(1, generator=gen).item()
        return logits

    def forward(
        self, inputs_embeds, attention_mask=None, position_ids=None, cache=None, use_cache=False
    ):
        values = inputs_embeds[..., 0].round().long().tolist()
        if attention_mask is not None and cache is None:
            mask = attention_mask[:, -len(values[0]) :].tolist()
            values = [
                [v for v, m in zip(row, mrow, strict=True) if m]
                for row, mrow in zip(values, mask, strict=True)
            ]
        rows = (
            [a + b for a, b in zip(cache.rows, values, strict=True)]
            if cache is not None
            else values
        )
        logits = torch.stack([self._logits(tuple(r)) for r in rows])[:, None]
        return types.SimpleNamespace(logits=logits, cache=_ListCache(rows) if use_cache else None)


class _ListCache:
    def __init__(self, rows: list[list[int]]) -> None:
        self.rows = rows

    def reorder_cache(self, index: torch.Tensor) -> None:
        self.rows = [list(self.rows[i]) for i in index.tolist()]

    def batch_repeat_interleave(self, times: int) -> None:
        self.rows = [list(r) for r in self.rows for _ in range(times)]


@pytest.mark.parametrize("seed", range(5))
def test_beam_scorer_rules_on_scripted_lm(seed):
    model = _ScriptedLM(seed)
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(10, 99, (n, 1), generator=gen).float() for n in (2, 3, 5, 4)]
    for beams, length_penalty in ((2, 1.0), (3, 0.6), (2, 2.0), (3, 3.0)):
        expected = [
            _slow_beam(model, p, 6, beams=beams, length_penalty=length_penalty) for p in prompts
        ]
        options = GenerationOptions(
            max_new_tokens=6, num_beams=beams, length_penalty=length_penalty
        )
        got = generate_ids(
            model,
            *_left_pad(prompts),
            options,
            eos_token_id=EOS,
            embed_tokens=model.get_input_embeddings(),
        )
        assert got == expected


class _TableLM(_ScriptedLM):
    """Scripted LM with given next-token probabilities after given generated prefixes.

    The prompt is one value; any prefix not in the table gets near-uniform non-EOS probabilities.
    """

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]], vocab: int) -> None:
        super().__init__(seed=0, vocab=vocab)
        self.table = table

    def _logits(self, history: tuple[int, ...]) -> torch.Tensor:
        probs = self.table.get(history[1:])
        if probs is None:
            logits = super()._logits(history) * 0.01
            logits[EOS] = -30.0
            return logits
        rest = (1 - sum(probs.values())) / (self.vocab - len(probs))
        return torch.tensor([probs.get(t, rest) for t in range(self.vocab)]).log()


def test_eos_candidate_after_the_beams_are_filled_is_not_kept():
    # step 0 ranks: 3 (p .5), 4 (p .3), EOS (p .15): both beams are filled before the EOS is
    # reached, so it is not a hypothesis. Had it been kept, [BOS] alone (score log .15 = -1.9) would
    # beat every continuation (about -2.3 per token).
    model = _TableLM({(): {3: 0.5, 4: 0.3, EOS: 0.15}}, vocab=40)
    prompt = torch.tensor([[50.0]])
    got = generate_ids(
        model,
        prompt[None],
        torch.ones(1, 1, dtype=torch.long),
        GenerationOptions(max_new_tokens=4, num_beams=2),
        eos_token_id=EOS,
        embed_tokens=model.get_input_embeddings(),
    )[0]
    assert got[0] == 3 and len(got) == 4 and EOS not in got
    assert got == _slow_beam(model, prompt, 4, beams=2)


def test_finished_hypotheses_keep_the_best_num_beams():
    from salmonn.model.beams import BeamHypotheses

    hyps = BeamHypotheses(num_beams=2, length_penalty=1.0)
    hyps.add([1, 5], -2.0, ended_on_eos=True)  # score -1.0
    hyps.add([1, 5, 6, 7], -2.0, ended_on_eos=True)  # -0.5
    assert hyps.worst_score == -1.0
    hyps.add([1], -3.0, ended_on_eos=True)  # -3.0 < worst: rejected
    assert sorted(beam.score for beam in hyps.beams) == [-1.0, -0.5]
    hyps.add([1, 8], -1.0, ended_on_eos=False)  # -0.5 > worst: kept, -1.0 dropped, worst -0.5
    assert sorted(beam.score for beam in hyps.beams) == [-0.5, -0.5] and hyps.worst_score == -0.5
    best = hyps.best()  # equal scores: the last added wins, with how it ended
    assert (best.ids, best.ended_on_eos) == ([1, 8], False)
    assert not hyps.is_done(-1.4, 3) and hyps.is_done(-1.5, 3)  # worst >= best / length


# --------------------------------------------------------------------------------------------------
# Continuous batching and the exact mode


def _continuous(lm, prompts, schedule, **option_fields) -> dict[int, list[int]]:
    """Decoder fed by ``schedule``: {step number: prompt indices joining before that step}."""
    from salmonn.model.generation import Decoder

    decoder = Decoder(
        lm,
        GenerationOptions(**option_fields),
        eos_token_id=EOS,
        embed_tokens=lm.get_input_embeddings(),
        bos_token_id=BOS,
    )
    done: dict[int, list[int]] = {}
    step = 0
    while step <= max(schedule) or decoder.running:
        joining = schedule.get(step, [])
        if joining:
            assert decoder.can_join
            decoder.add(joining, *_left_pad([prompts[i] for i in joining]))
        done.update(decoder.step())
        step += 1
    return done


@pytest.mark.parametrize("beams", [1, 4])
def test_items_joining_a_running_batch_give_their_own_ids(eos_lm, lm, prompts, beams):
    schedule = {0: [0, 1], 2: [2], 3: [3, 4], 9: [5]}  # step 9: after everyone else finished too
    for model in (lm, eos_lm):
        alone = _alone(model, prompts, num_beams=beams, max_new_tokens=12)
        got = _continuous(model, prompts, schedule, num_beams=beams, max_new_tokens=12)
        assert [got[i] for i in range(len(prompts))] == alone
    lengths = {len(ids) for ids in alone}
    assert len(lengths) > 1  # answers end at different steps, so rows leave and join


def test_exact_mode_matches_the_slow_reference_under_eager_attention(lm, prompts):
    import functools

    from salmonn.model.runners import EXACT_ATTENTION, exact_attention

    seen: list[str] = []
    real_forward = lm.forward

    @functools.wraps(real_forward)
    def spy(*args, **kwargs):
        seen.append(lm.config._attn_implementation)
        return real_forward(*args, **kwargs)

    lm.forward = spy
    try:
        embeds, mask = _left_pad(prompts)
        exact = generate_ids(
            lm,
            embeds,
            mask,
            GenerationOptions(max_new_tokens=10),
            eos_token_id=EOS,
            embed_tokens=lm.get_input_embeddings(),
            exact=True,
        )
    finally:
        del lm.forward
    assert set(seen) == {EXACT_ATTENTION}
    assert lm.config._attn_implementation != EXACT_ATTENTION  # restored afterwards
    with exact_attention(lm):
        expected = [_slow_beam(lm, p, 10) for p in prompts]
    assert exact == expected
    assert exact == _run(lm, prompts, max_new_tokens=10)  # fast mode agrees on this model


def test_exact_attention_is_the_428_arithmetic():
    from salmonn.model.runners import _attention_428

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 32, generator=gen) for _ in range(3))
    mask = torch.zeros(2, 1, 5, 5)
    mask[0, ..., 0] = torch.finfo(torch.float32).min  # row 0's first position is padding
    out, weights = _attention_428(types.SimpleNamespace(), q, k, v, mask)
    scores = q.double() @ k.double().transpose(2, 3) / 32**0.5
    scores = scores.masked_fill(mask.bool().expand_as(scores), -float("inf"))
    expected = torch.softmax(scores, dim=-1) @ v.double()
    assert out.shape == (2, 5, 4, 32)  # [B, L, heads, d], as transformers expects
    torch.testing.assert_close(out.double(), expected.transpose(1, 2), atol=1e-5, rtol=1e-5)
    assert float(weights[0, :, :, 0].abs().max()) == 0.0
