"""SalmonnModel on the tiny random SALMONN: shapes, prompts, generation, batching, ablations."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch

from salmonn import GenerationOptions
from salmonn.errors import ConfigError, PromptError
from salmonn.model.prompt import split_prompt, wrap_prompt

PROMPT = "Please describe the audio."
SHORT = GenerationOptions(max_new_tokens=12, num_beams=1)
BEAM = GenerationOptions(max_new_tokens=12, num_beams=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def sp(tiny_paths):
    return sentencepiece.SentencePieceProcessor(
        model_file=str(Path(tiny_paths.llm) / "tokenizer.model")
    )


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(7)
    t = np.arange(16000 * 7) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return [
        (0.2 * rng.standard_normal(9600)).astype(np.float32),  # 0.6 s: padded to 1 s
        tone[: 16000 * 3],
        (0.1 * rng.standard_normal(16000 * 7) + tone).astype(np.float32),
    ]


def _ids(results):
    return [r.token_ids for r in results]


@pytest.fixture(scope="module")
def greedy(model, clips):
    return model.generate(clips, PROMPT, SHORT)


@pytest.fixture(scope="module")
def beam(model, clips):
    return model.generate(clips, PROMPT, BEAM)


def test_encode_audio_shape_and_stages(model, clips):
    d_llm = model.llama_model.get_input_embeddings().weight.shape[1]
    audio = model.encode_audio(clips)
    assert audio.shape == (3, 88, d_llm) and audio.dtype == torch.float32
    st = model.encode_audio_stages(clips)
    torch.testing.assert_close(st.projected, audio)
    assert st.mel.shape == (3, 80, 3000)
    assert st.fused.shape[:2] == (3, 1500) and st.windows.shape == (3 * 88, 17, st.fused.shape[2])
    assert st.qformer.shape == (3 * 88, 1, model.speech_Qformer.config.hidden_size)
    w_width = st.speech.shape[2]
    for b, beats in enumerate(st.beats):  # ln_audio rows, then exact zeros up to 1500
        n = beats.shape[0]
        assert n == 8 * ((1 + (max(len(clips[b]), 16000) - 400) // 160) // 16)
        torch.testing.assert_close(st.fused[b, :n, w_width:], model.ln_audio(beats))
        assert torch.count_nonzero(st.fused[b, n:, w_width:]) == 0
    torch.testing.assert_close(st.fused[:, :, :w_width], model.ln_speech(st.whisper))
    torch.testing.assert_close(st.windows[88 + 3], st.fused[1, 51:68])


def test_short_clip_is_padded_and_long_clip_refused(model, clips):
    padded = np.concatenate([clips[0], np.zeros(16000 - len(clips[0]), np.float32)])
    torch.testing.assert_close(model.encode_audio([clips[0]]), model.encode_audio([padded]))
    as_tensor = model.encode_audio(torch.from_numpy(padded))  # one 1-D tensor = one clip
    torch.testing.assert_close(as_tensor, model.encode_audio([padded]))
    with pytest.raises(ConfigError, match="at most 30 s.*chunk"):
        model.encode_audio([np.zeros(16000 * 30 + 1, np.float32)])
    with pytest.raises(ConfigError, match="mono"):
        model.encode_audio([np.zeros((16000, 2), np.float32)])


def test_prompt_pieces_are_tokenised_on_their_own(model, sp):
    before, after = split_prompt(PROMPT)
    assert (
        before == "USER: <Speech>" and after == "</Speech> Please describe the audio.\nASSISTANT:"
    )
    ids_before, ids_after = model.prompt_ids(PROMPT)
    assert ids_before == sp.encode(before) and ids_after == sp.encode(after)
    assert sp.id_to_piece(ids_after[0]).startswith("\u2581")  # each piece has its own dummy prefix
    assert ids_before + ids_after != sp.encode(before + after)
    assert 1 not in ids_before  # BOS is added as an embedding, not by the tokenizer
    custom = "<Speech><SpeechHere></Speech>Transcribe  "
    assert wrap_prompt(custom) == f"USER: {custom}\nASSISTANT:"
    assert wrap_prompt("  hi ") == "USER: <Speech><SpeechHere></Speech> hi\nASSISTANT:"
    with pytest.raises(PromptError):
        wrap_prompt("<SpeechHere><SpeechHere>")


def test_llm_input_layout(model, clips):
    audio = model.encode_audio(clips[:2])
    embeds, mask = model.build_inputs(audio, [PROMPT, "Hi"])
    table = model.llama_model.get_input_embeddings().weight
    for b, prompt in enumerate([PROMPT, "Hi"]):
        before, after = model.prompt_ids(prompt)
        length = 1 + len(before) + 88 + len(after)
        assert int(mask[b].sum()) == length and mask[b, -length:].all()  # left-padded
        row = embeds[b, -length:]
        torch.testing.assert_close(row[0], table[1])
        torch.testing.assert_close(row[1 : 1 + len(before)], table[before])
        torch.testing.assert_close(row[1 + len(before) : 1 + len(before) + 88], audio[b])
        torch.testing.assert_close(row[-len(after) :], table[after])


def test_first_logits_match_the_first_greedy_token(model, clips, greedy):
    embeds, mask = model.build_inputs(model.encode_audio(clips), [PROMPT] * len(clips))
    logits = model.first_logits(embeds, mask)
    assert logits.shape == (3, model.tokenizer.vocab_size + 1)
    assert logits[:, model.tokenizer.pad_id].abs().max() == 0  # the zero [PAD] row
    assert logits.argmax(-1).tolist() == [r.token_ids[0] for r in greedy]
    alone = model.first_logits(*model.build_inputs(model.encode_audio(clips[1:2]), [PROMPT]))
    torch.testing.assert_close(alone[0], logits[1], rtol=1e-4, atol=1e-4)


def test_pad_row_is_zero(model, sp):
    lm = model.llama_model
    vocab = sp.get_piece_size()
    assert lm.get_input_embeddings().weight.shape[0] == vocab + 1
    assert torch.count_nonzero(lm.get_input_embeddings().weight[vocab]) == 0
    assert torch.count_nonzero(lm.get_output_embeddings().weight[vocab]) == 0
    assert (
        lm.state_dict()[
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
        ].dtype
        == torch.float32
    )


def test_generation_is_deterministic_and_decoded(model, clips, sp, greedy, beam):
    assert _ids(model.generate(clips, PROMPT, SHORT)) == _ids(greedy)
    for result in greedy + beam:
        ids = result.token_ids
        assert 0 < len(ids) <= 12 and 2 not in ids[:-1]
        assert result.text == sp.decode([i for i in ids if i != 2])
    assert _ids(greedy) != _ids(beam)
    assert len({tuple(r.token_ids) for r in greedy}) > 1  # the audio matters


def test_batched_equals_one_at_a_time(model, clips):
    prompts = [PROMPT, "Listen to the speech and translate it into German.", "Hi"]
    for options in (SHORT, BEAM):
        batched = model.generate(clips, prompts, options)
        alone = [model.generate([c], p, options)[0] for c, p in zip(clips, prompts, strict=True)]
        assert _ids(batched) == _ids(alone)
        assert [r.text for r in batched] == [r.text for r in alone]


def test_generate_text(model):
    one = model.generate_text(["Summarize: a dog barks.", "Hi"], SHORT)
    assert _ids(one) == _ids(model.generate_text(["Summarize: a dog barks."], SHORT)) + _ids(
        model.generate_text("Hi", SHORT)
    )
    with pytest.raises(ConfigError):
        model.generate(clips_two := [np.zeros(16000, np.float32)] * 2, ["a", "b", "c"], SHORT)
    assert len(clips_two) == 2


@contextlib.contextmanager
def _patched(module: torch.nn.Module, **values: float):
    saved = {k: getattr(module, k).detach().clone() for k in values}
    with torch.no_grad():
        for k, v in values.items():
            getattr(module, k).fill_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                getattr(module, k).copy_(v)


def test_every_component_is_live(model, clips, greedy, monkeypatch):
    """Ablations change the answers: LoRA, ln_speech, ln_audio and the BEATs stream are all used."""
    base = _ids(greedy)
    model.lora_scaling = 0.0
    try:
        assert _ids(model.generate(clips, PROMPT, SHORT)) != base
    finally:
        model.lora_scaling = 4.0
    assert model.identity["lora_scaling"] == 4.0
    with _patched(model.ln_speech, weight=1.0, bias=0.0):
        assert _ids(model.generate(clips, PROMPT, SHORT)) != base
    with _patched(model.ln_audio, weight=1.0, bias=0.0):
        assert _ids(model.generate(clips, PROMPT, SHORT)) != base
    real = model.beats.extract_features
    monkeypatch.setattr(
        model.beats, "extract_features", lambda waves: [torch.zeros_like(x) for x in real(waves)]
    )
    assert _ids(model.generate(clips, PROMPT, SHORT)) != base


def test_identity(model, tiny_paths):
    ident = model.identity
    assert ident["device"] == "cpu" and ident["dtype"] == "float32"
    assert ident["checkpoint"] == str(tiny_paths.checkpoint) and ident["lora_scaling"] == 4.0
    assert model.device == torch.device("cpu") and model.dtype == torch.float32


def test_generate_stream_equals_one_at_a_time(model, clips):
    from salmonn.model.work import WorkItem

    prompts = [PROMPT, "Listen to the speech and translate it into German.", "Hi"]
    too_long = np.zeros(16000 * 31, np.float32)
    pairs = list(enumerate(zip(clips, prompts, strict=True)))
    work = [WorkItem(("clip", i), p, c) for i, (c, p) in pairs]
    work.insert(1, WorkItem("text", "Summarize: a dog barks."))
    work.insert(3, WorkItem("bad", PROMPT, too_long))
    for options in (SHORT, BEAM):
        got = dict(model.generate_stream(iter(work * 2), options, batch_size=2))
        assert isinstance(got.pop("bad"), ConfigError)  # the others go on
        alone = {("clip", i): model.generate([c], p, options)[0] for i, (c, p) in pairs}
        alone["text"] = model.generate_text("Summarize: a dog barks.", options)[0]
        assert {k: v.token_ids for k, v in got.items()} == {
            k: v.token_ids for k, v in alone.items()
        }
    with pytest.raises(ConfigError):
        next(model.generate_stream(work, SHORT, batch_size=0))


@pytest.mark.parametrize("beams", [1, 2], ids=["sample", "beam-sample"])
def test_seeded_sampling_is_batch_invariant(model, clips, beams):
    """With a seed, every item draws from its own generator: a clip's sampled answer is the same
    alone, in a batch, and joining a running decode at any point."""
    from salmonn.model.work import WorkItem

    options = GenerationOptions(
        max_new_tokens=12, num_beams=beams, do_sample=True, seed=5, temperature=1.5, top_k=0
    )
    alone = [_ids(model.generate([c], PROMPT, options)) for c in clips]
    plain = _ids(model.generate(clips, PROMPT, options.with_overrides(do_sample=False)))
    assert [ids for (ids,) in alone] != plain  # it does sample
    assert _ids(model.generate(clips, PROMPT, options)) == [ids for (ids,) in alone]
    assert _ids(model.generate(clips[::-1], PROMPT, options)) == [ids for (ids,) in alone[::-1]]
    work = [WorkItem(i, PROMPT, clips[i % 3]) for i in range(7)]  # joins at different steps
    got = dict(model.generate_stream(work, options, batch_size=2))
    assert {k: v.token_ids for k, v in got.items()} == {i: alone[i % 3][0] for i in range(7)}
    text = model.generate_text(["Hi", "Summarize: a dog barks."], options)
    assert _ids(text) == _ids(model.generate_text("Hi", options)) + _ids(
        model.generate_text("Summarize: a dog barks.", options)
    )
    other = options.with_overrides(seed=6)
    assert [_ids(model.generate([c], PROMPT, other)) for c in clips] != alone  # the seed matters


def test_exact_mode(model, clips, greedy, beam):
    """Exact mode runs one clip at a time (each Q-Former call sees one clip's windows); on this
    float32 model it agrees with the fast mode, which encodes the clips together."""
    windows = []  # windows per Q-Former call, seen through a forward hook (no private method)
    hook = model.speech_Qformer.register_forward_hook(
        lambda module, args, out: windows.append(out.shape[0])
    )
    try:
        assert _ids(model.generate(clips, PROMPT, SHORT, exact=True)) == _ids(greedy)
        one_clip = windows[0]
        assert windows == [one_clip] * len(clips)
        model.exact = True
        try:
            windows.clear()
            assert _ids(model.generate(clips, PROMPT, BEAM)) == _ids(beam)
            assert windows == [one_clip] * len(clips)
        finally:
            model.exact = False
        windows.clear()
        assert _ids(model.generate(clips, PROMPT, SHORT)) == _ids(greedy)
        assert windows == [one_clip * len(clips)]
    finally:
        hook.remove()


def _stream_reporting(model, clips, options):
    """Run clips and a text prompt through one stream with ``on_tokens`` callbacks; returns what
    each callback saw as ``(step, ids)``, the results, and the step each item ended in."""
    from salmonn.model.stream import GenerationStream
    from salmonn.model.work import WorkItem

    seen: dict = {}
    step = [0]

    def record(key):
        return lambda ids: seen.setdefault(key, []).append((step[0], ids))

    def broken(ids):
        raise RuntimeError("the client left")

    work = [WorkItem(("clip", i), PROMPT, c, record(("clip", i))) for i, c in enumerate(clips)]
    work.append(WorkItem("text", "Summarize: a dog barks.", None, record("text")))
    work.append(WorkItem("broken", PROMPT, clips[0], broken))
    work.append(WorkItem("quiet", PROMPT, clips[1]))
    stream = GenerationStream(model, options, batch_size=3)  # items join as others finish
    for item in work:
        stream.put(item)
    results, ended = {}, {}
    while stream.busy:
        step[0] += 1
        for key, result in stream.step():
            results[key], ended[key] = result, step[0]
    assert set(results) == {item.key for item in work}
    return seen, results, ended


def test_on_tokens_reports_every_step(model, clips, caplog):
    """``WorkItem.on_tokens`` sees each item's ids after every step, ending with its result's ids;
    never with beams; a failing callback harms nobody; the results do not change."""
    sampled = GenerationOptions(max_new_tokens=12, num_beams=1, do_sample=True, seed=3)
    for options in (SHORT, sampled):
        seen, results, ended = _stream_reporting(model, clips, options)
        assert set(seen) == {("clip", 0), ("clip", 1), ("clip", 2), "text"}
        for key, calls in seen.items():
            final = results[key].token_ids
            assert calls[-1][1] == final
            assert [ids for _, ids in calls] == [final[:n] for n in range(1, len(final) + 1)]
            steps = [s for s, _ in calls]  # one call per step, from its first to its last
            assert steps == list(range(steps[0], ended[key] + 1))
    # the callbacks change nothing: the ids equal a lone generate's
    seen, results, _ = _stream_reporting(model, clips, SHORT)
    alone = [model.generate([c], PROMPT, SHORT)[0].token_ids for c in clips]
    assert [results[("clip", i)].token_ids for i in range(3)] == alone
    assert results["broken"].token_ids == alone[0] and results["quiet"].token_ids == alone[1]
    assert "on_tokens of item 'broken' failed" in caplog.text
    seen, results, _ = _stream_reporting(model, clips, BEAM)  # beams: known only at the end
    assert seen == {}
    assert results[("clip", 0)].token_ids == model.generate([clips[0]], PROMPT, BEAM)[0].token_ids


def test_fast_mode_uses_fused_encoder_attention(model, clips, greedy, monkeypatch):
    """Fast mode runs BEATs through its fused attention (and Whisper through SDPA); exact mode
    and the public ``encode_audio`` keep the original's steps."""
    from salmonn.model.encoders.beats import BeatsAttention

    fused = []
    real = BeatsAttention._fast
    monkeypatch.setattr(
        BeatsAttention, "_fast", lambda self, x, bias: fused.append(x.shape) or real(self, x, bias)
    )
    config = model.speech_encoder.config
    with model.encoder_attention(False):
        assert model.beats.fast_attention and config._attn_implementation == "sdpa"
    with model.encoder_attention(True):
        assert not model.beats.fast_attention and config._attn_implementation == "eager"
    assert not model.beats.fast_attention and config._attn_implementation == "eager"
    model.generate(clips[:1], PROMPT, SHORT, exact=True)
    model.encode_audio(clips[:1])
    assert fused == []
    assert _ids(model.generate(clips, PROMPT, SHORT)) == _ids(greedy)
    assert len(fused) == 2 * 3  # 2 layers x 3 clips of different lengths
    exact = model.encode_audio(clips)
    with model.encoder_attention(False):
        fast = model.encode_audio(clips)
    # rounding only (2e-6 measured on values up to 3.6); a wrong mask or scale moves it by > 1e-2
    assert 0 < (fast - exact).abs().max().item() < 1e-3
