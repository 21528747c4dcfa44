"""salmonn.train, the library side: trainable tensors, the loss in both modes, schedule, optimizer
groups, data files, checkpoints, gradient accumulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import tone

import salmonn
from salmonn.model.checkpoint import read_checkpoint
from salmonn.train.exact import padded_beats, reduce_mask
from salmonn.train.examples import check_audio, read_data
from salmonn.train.loop import TrainConfig, Trainer
from salmonn.train.loss import audio_embeddings, batch_loss, prepare_wave
from salmonn.train.optim import make_optimizer
from salmonn.train.schedule import Schedule
from salmonn.train.state import checkpoints, latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "<Speech><SpeechHere></Speech> Describe the audio."


def _noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))).astype(
        np.float32
    )


def _examples() -> list[salmonn.TrainExample]:
    return [
        salmonn.TrainExample(_noise(1.3, 0), PROMPT, "A dog barks twice."),
        salmonn.TrainExample(
            _noise(2.2, 1), "<Speech><SpeechHere></Speech> What do you hear?", "Rain."
        ),
        salmonn.TrainExample(_noise(1.7, 2), PROMPT, "Two people talk about the weather today."),
    ]


def test_trainable_parameters_are_the_released_keys(tiny_model, tiny_paths):
    released = read_checkpoint(tiny_paths.checkpoint)
    params = tiny_model.trainable_parameters()
    assert set(params) == {k for k in released if k in dict(tiny_model.named_parameters())}
    assert any(".lora_A." in k for k in params) and "speech_query_tokens" in params
    assert all(p.dtype == torch.float32 and p.requires_grad for p in params.values())
    frozen = [n for n, p in tiny_model.named_parameters() if n not in params]
    assert frozen and not any(
        p.requires_grad for n, p in tiny_model.named_parameters() if n in frozen
    )
    lora = tiny_model.trainable_parameters(lora_only=True)
    assert lora and all(".lora_" in k for k in lora)
    assert not tiny_model.speech_llama_proj.weight.requires_grad
    tiny_model.requires_grad_(False)


def test_default_loss_is_the_token_weighted_mean_of_items_alone(tiny_model):
    examples = _examples()
    with torch.no_grad():
        batch = batch_loss(tiny_model, examples)
        alone = [batch_loss(tiny_model, [e]) for e in examples]
    assert batch.tokens == sum(a.tokens for a in alone)
    expected = sum(float(a.total) for a in alone) / batch.tokens
    assert float(batch.total) / batch.tokens == pytest.approx(expected, rel=1e-5)
    value = salmonn.training_loss(tiny_model, examples)
    assert float(value) == pytest.approx(expected, rel=1e-5)
    # the target is cut to max_text_tokens after </s> is appended
    with torch.no_grad():
        cut = batch_loss(tiny_model, examples, max_text_tokens=2)
    assert cut.tokens == 2 * len(examples)


def test_loss_has_gradients_only_for_trainable_tensors(tiny_model):
    params = tiny_model.trainable_parameters()
    loss = salmonn.training_loss(tiny_model, _examples()[:2])
    loss.backward()
    assert all(p.grad is not None for p in params.values())
    assert all(p.grad is None for n, p in tiny_model.named_parameters() if n not in params)
    tiny_model.zero_grad(set_to_none=True)
    tiny_model.requires_grad_(False)


def test_dropout_follows_the_module_mode_but_not_the_encoders(tiny_model):
    examples = _examples()[:1]
    tiny_model.train()
    try:
        with torch.no_grad():
            a = float(salmonn.training_loss(tiny_model, examples))
            b = float(salmonn.training_loss(tiny_model, examples))
        assert a != b  # Q-Former / LoRA dropout is on
        assert tiny_model.speech_encoder.training and tiny_model.beats.training
    finally:
        tiny_model.eval()
    with torch.no_grad():
        assert float(salmonn.training_loss(tiny_model, examples)) == float(
            salmonn.training_loss(tiny_model, examples)
        )


def test_exact_equals_default_for_one_item_and_differs_in_a_mixed_batch(tiny_model):
    examples = _examples()
    with torch.no_grad():
        for example in examples:
            assert float(salmonn.training_loss(tiny_model, [example], exact=True)) == pytest.approx(
                float(salmonn.training_loss(tiny_model, [example])), rel=1e-4
            )
        mixed = float(salmonn.training_loss(tiny_model, examples, exact=True))
        default = float(salmonn.training_loss(tiny_model, examples))
    assert abs(mixed - default) > 1e-3  # [PAD] inside sequences, BEATs padding, positions


def test_beats_padding_mask_reduction_drops_the_remainder():
    mask = torch.tensor([[False] * 7 + [True] * 5, [False] * 12])
    assert reduce_mask(mask, 5).tolist() == [[False] * 4 + [True], [False] * 5]  # 10 kept, pairs
    assert reduce_mask(torch.tensor([[False, True, True, True]]), 2).tolist() == [[False, True]]


def test_padded_beats_equals_beats_without_padding_and_depends_on_batch_mates(tiny_model):
    same = [prepare_wave(_noise(1.2, s)) for s in (3, 4)]
    with torch.no_grad():
        padded = padded_beats(tiny_model.beats, same)
        plain = tiny_model.beats.extract_features([torch.from_numpy(w) for w in same])
        torch.testing.assert_close(padded, torch.stack(plain), rtol=1e-4, atol=1e-4)
        short, long = prepare_wave(_noise(1.1, 5)), prepare_wave(_noise(2.5, 6))
        mixed = padded_beats(tiny_model.beats, [short, long])
        alone = tiny_model.beats.extract_features([torch.from_numpy(short)])[0]
    assert mixed.shape[1] > alone.shape[0]  # a short clip gets the batch's length
    assert not torch.allclose(mixed[0, : alone.shape[0]], alone, atol=1e-3)


def _reference_exact_loss(model, examples, max_text_tokens=300):
    """The original's batch built independently: the tokenizer's own pieces, ``[PAD]`` padding by
    hand, the peft LLM's own shifted cross-entropy (``labels=``), positions 0..L-1."""
    from salmonn.train.loss import _encoder_outputs

    waves = [prepare_wave(e.audio) for e in examples]
    whisper, beats = _encoder_outputs(model, waves, exact=True)
    audio = audio_embeddings(model, whisper, beats)
    tok = model.tokenizer
    wrapped = [f"USER: {e.prompt}\nASSISTANT:".split("<SpeechHere>") for e in examples]
    before = tok.encode(wrapped[0][0])
    afters = [tok.encode(after) for _, after in wrapped]
    targets = [(tok.encode(e.target) + [tok.eos_id])[:max_text_tokens] for e in examples]
    a_len, t_len = max(map(len, afters)), max(map(len, targets))
    embeds, masks, labels = [], [], []
    table = model.llama_model.get_input_embeddings().weight
    for i in range(len(examples)):
        after = afters[i] + [tok.pad_id] * (a_len - len(afters[i]))
        target = targets[i] + [tok.pad_id] * (t_len - len(targets[i]))
        head = table[[tok.bos_id, *before]]
        embeds.append(torch.cat([head, audio[i], table[after], table[target]]))
        prompt_len = 1 + len(before) + audio.shape[1] + a_len
        masks.append(
            [1] * (prompt_len - a_len + len(afters[i]))
            + [0] * (a_len - len(afters[i]))
            + [1] * len(targets[i])
            + [0] * (t_len - len(targets[i]))
        )
        labels.append([-100] * prompt_len + [t if t != tok.pad_id else -100 for t in target])
    length = embeds[0].shape[0]
    out = model.llama_model(
        inputs_embeds=torch.stack(embeds),
        attention_mask=torch.tensor(masks),
        position_ids=torch.arange(length).expand(len(examples), -1),
        labels=torch.tensor(labels),
        use_cache=False,
    )
    return float(out.loss)


def test_exact_mode_matches_an_independent_reference(tiny_model):
    examples = _examples()
    with torch.no_grad():
        ours = float(salmonn.training_loss(tiny_model, examples, exact=True))
        reference = _reference_exact_loss(tiny_model, examples)
        ours_cut = float(salmonn.training_loss(tiny_model, examples, exact=True, max_text_tokens=3))
        reference_cut = _reference_exact_loss(tiny_model, examples, max_text_tokens=3)
    assert ours == pytest.approx(reference, rel=1e-4)
    assert ours_cut == pytest.approx(reference_cut, rel=1e-4)


def test_audio_over_30_seconds_is_cut():
    assert prepare_wave(np.ones(16000 * 31)).size == 16000 * 30
    assert prepare_wave(np.ones(100)).size == 16000


def test_schedule_is_the_original_warmup_and_cosine():
    s = Schedule(lr=3e-5, min_lr=1e-5, warmup_steps=10, warmup_start_lr=1e-6, total_steps=100)
    assert s(0) == pytest.approx(1e-6)
    assert s(5) == pytest.approx(1e-6 + (3e-5 - 1e-6) * 0.5)
    assert s(10) == pytest.approx(1e-5 + 2e-5 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    assert s(100) == pytest.approx(1e-5)
    assert all(s(i) >= s(i + 1) for i in range(10, 100))


def test_optimizer_groups_follow_the_original(tiny_model):
    params = tiny_model.trainable_parameters()
    opt = make_optimizer(params, 1e-3, 0.05)
    names = {id(p): n for n, p in params.items()}
    decay = {names[id(p)] for p in opt.param_groups[0]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.05 and opt.param_groups[1]["weight_decay"] == 0
    assert "speech_query_tokens" in decay and "speech_llama_proj.weight" in decay
    assert any(".lora_A." in n for n in decay)
    assert not any("bias" in n or n.startswith("ln_") or "LayerNorm" in n for n in decay)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8
    tiny_model.requires_grad_(False)


def test_data_formats_and_every_bad_line(tmp_path):
    good = tone(tmp_path / "a.wav", 1.0)
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    lines = [
        {"audio": "a.wav", "prompt": "Describe it.", "target": "A tone."},
        {"audio": "a.wav", "task": "audiocaption", "target": "A tone."},
        {"audio": "a.wav", "task": "QA", "question": "Is it loud?", "target": "No."},
        {"audio": "missing.wav", "prompt": "x", "target": "y"},
        {"audio": "a.wav", "target": "y"},
        {"audio": "a.wav", "task": "no_such_task", "target": "y"},
        {"audio": "broken.wav", "prompt": "x", "target": "y"},
        {"audio": "a.wav", "task": "QA", "target": "needs a question"},
    ]
    data_file = tmp_path / "data.jsonl"
    data_file.write_text("\n".join(map(json.dumps, lines)) + "\n{oops\n", encoding="utf-8")
    data = read_data(data_file)
    bad, cut = check_audio(data)
    found = {b.line: b.reason for b in [*data.bad, *bad]}
    assert sorted(found) == [4, 5, 6, 7, 8, 9]
    assert "'prompt'" in found[5] and "no_such_task" in found[6] and "question" in found[8]
    assert "missing.wav" in found[4] and "broken.wav" in found[7] and "JSON" in found[9]
    assert [line.line for line in data.lines if line.line not in found] == [1, 2, 3]
    assert len(data.lines[1].prompts) == 7  # audiocaption's training prompts
    assert data.lines[2].example(0, 0).prompt.endswith("Is it loud?")
    assert data.lines[0].example(0, 0).prompt == "<Speech><SpeechHere></Speech> Describe it."
    assert data.lines[1].example(1, 2) == data.lines[1].example(1, 2)  # seeded per epoch
    # the original's annotation file and salmonn's own records
    annotation = tmp_path / "ann.json"
    annotation.write_text(
        json.dumps(
            {
                "annotation": [
                    {"path": str(good), "text": "hello"},
                    {"path": str(good), "text": "x", "task": "QA"},
                ]
            }
        ),
        encoding="utf-8",
    )
    ann = read_data(annotation)
    assert not ann.bad and ann.lines[0].prompts[0].endswith(
        "Can you transcribe the speech into a written format?"
    )
    records = tmp_path / "stories.jsonl"
    records.write_text(
        json.dumps(
            {
                "path": str(good),
                "task": "story",
                "prompt": PROMPT,
                "text": "Once upon a time.",
                "error": None,
                "schema_version": 1,
            }
        )
        + "\n",
        encoding="utf-8",
    )
    rec = read_data(records)
    assert rec.lines[0].example(0, 0) == salmonn.TrainExample(
        str(good), PROMPT, "Once upon a time."
    )


def _data(tmp_path, count=4):
    rows = []
    for i in range(count):
        tone(tmp_path / f"t{i}.wav", 1.0 + 0.3 * i, freq=300 + 200 * i)
        rows.append({"audio": f"t{i}.wav", "prompt": "Describe it.", "target": f"Tone {i} here."})
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(map(json.dumps, rows)) + "\n", encoding="utf-8")
    return read_data(path)


def _run(model, tiny_paths, data, out, **config):
    from salmonn.model.checkpoint import apply_checkpoint

    apply_checkpoint(model, read_checkpoint(tiny_paths.checkpoint))
    torch.manual_seed(0)
    base = dict(max_steps=2, lr=1e-3, warmup_steps=0, dropout=0.0)
    trainer = Trainer(model, data, TrainConfig(**{**base, **config}), out)
    grads, step = [], trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads.append({k: p.grad.clone() for k, p in trainer.params.items()})
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.run()
    return {k: v.detach().clone() for k, v in trainer.saved_params.items()}, grads


def test_gradient_accumulation_equals_the_same_global_batch(tiny_model, tiny_paths, tmp_path):
    data = _data(tmp_path)
    whole, whole_grads = _run(tiny_model, tiny_paths, data, tmp_path / "a", batch_size=2)
    split, split_grads = _run(
        tiny_model, tiny_paths, data, tmp_path / "b", batch_size=1, grad_accum=2
    )
    # the same gradients at every step (AdamW's first steps turn the rounding of near-zero
    # gradients into lr-sized differences, so the weights agree within a fraction of lr)
    for a, b in zip(whole_grads, split_grads, strict=True):
        scale = max(float(g.abs().max()) for g in a.values())
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-5 * scale)
    for key in whole:
        torch.testing.assert_close(whole[key], split[key], rtol=0, atol=1e-3)
    start = read_checkpoint(tiny_paths.checkpoint)
    assert not torch.equal(whole["speech_llama_proj.weight"], start["speech_llama_proj.weight"])
    saved = load_checkpoint(latest_checkpoint(tmp_path / "a"))
    assert saved["state"]["step"] == 2 and set(saved["model"]) == set(whole)
    assert [step for step, _ in checkpoints(tmp_path / "a")] == [2]
    tiny_model.requires_grad_(False)


def test_a_run_without_checkpoint_starts_from_the_original_initialisation(tiny_paths, tmp_path):
    from salmonn.train.init import initial_state, write_initial_checkpoint

    state = initial_state(64, 128, 64, 2, qformer_hidden=128, seed=1)
    lora_b = [v for k, v in state.items() if ".lora_B." in k]
    assert lora_b and all(not v.any() for v in lora_b)  # the LLM starts unchanged
    assert torch.equal(state["ln_audio.weight"], torch.ones(128))
    assert not state["speech_Qformer.bert.encoder.layer.0.attention.self.query.bias"].any()
    weight = state["speech_Qformer.bert.encoder.layer.0.crossattention.self.key.weight"]
    assert weight.std().item() == pytest.approx(0.02, rel=0.05)
    path = tmp_path / "init.pth"
    write_initial_checkpoint(path, tiny_paths.whisper, tiny_paths.beats, tiny_paths.llm)
    model = salmonn.load_model(
        tiny_paths.whisper, tiny_paths.beats, tiny_paths.llm, path, device="cpu"
    )
    assert model.speech_Qformer.config.hidden_size == 768
    with torch.no_grad():
        assert math.isfinite(float(salmonn.training_loss(model, _examples()[:1])))


def test_lora_only_and_gradient_checkpointing(tiny_model, tiny_paths, tmp_path):
    data = _data(tmp_path, count=2)
    plain, plain_grads = _run(
        tiny_model, tiny_paths, data, tmp_path / "a", batch_size=2, max_steps=1
    )
    try:
        ckpt, ckpt_grads = _run(
            tiny_model,
            tiny_paths,
            data,
            tmp_path / "b",
            batch_size=2,
            max_steps=1,
            gradient_checkpointing=True,
        )
    finally:
        tiny_model.llama_model.get_base_model().gradient_checkpointing_disable()
    for key in plain_grads[0]:  # recomputing activations gives the same gradients
        torch.testing.assert_close(plain_grads[0][key], ckpt_grads[0][key], rtol=1e-4, atol=1e-8)
    lora, lora_grads = _run(
        tiny_model, tiny_paths, data, tmp_path / "c", batch_size=2, max_steps=1, lora_only=True
    )
    start = read_checkpoint(tiny_paths.checkpoint)
    assert set(lora) == set(plain)  # the saved file still holds every tensor
    assert set(lora_grads[0]) == {k for k in plain if ".lora_" in k}
    assert torch.equal(lora["speech_llama_proj.weight"], start["speech_llama_proj.weight"])
    changed = [k for k in lora if ".lora_A." in k and not torch.equal(lora[k], start[k])]
    assert changed
    tiny_model.requires_grad_(False)


def test_cached_encoder_outputs_give_the_same_loss(tiny_model, tmp_path):
    paths = [str(tone(tmp_path / f"c{i}.wav", 1.0 + 0.5 * i, freq=300 + 100 * i)) for i in range(3)]
    examples = [salmonn.TrainExample(p, PROMPT, f"Clip {i}.") for i, p in enumerate(paths)]
    cache: dict = {}
    with torch.no_grad():
        batch_loss(tiny_model, examples[:2], encoder_cache=cache)
        assert set(cache) == set(paths[:2])
        cached = batch_loss(tiny_model, examples, encoder_cache=cache)
        fresh = batch_loss(tiny_model, examples)
    assert set(cache) == set(paths)
    assert float(cached.total) == pytest.approx(float(fresh.total), rel=1e-5)
