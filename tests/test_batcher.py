"""The engine's units alone: the chunk Batcher and the SummaryPass, with scripted model calls."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from salmonn.config import GenerationOptions
from salmonn.jobs.batcher import Batcher
from salmonn.jobs.records import Segment
from salmonn.jobs.summary import SUMMARY_MARGIN_TOKENS, SummaryPass


class Script:
    """Answers ``"t<wave>"``; a call holding a wave in ``bad`` raises."""

    def __init__(self, bad=()):
        self.bad, self.calls = set(bad), []

    def __call__(self, waves):
        self.calls.append(list(waves))
        if self.bad & set(waves):
            raise RuntimeError(f"boom\nwave {sorted(self.bad & set(waves))[0]} broke")
        return [f"t{w}" for w in waves]


def test_batch_of_chunks_from_several_files_in_one_call():
    script = Script()
    batcher = Batcher(script, batch_size=3)
    batcher.add("a", 0, 1)
    batcher.add("b", 0, 2)
    assert not batcher.full
    batcher.add("b", 1, 3)
    assert batcher.full
    answers = batcher.flush()
    assert script.calls == [[1, 2, 3]]
    assert [(a.file, a.key, a.text, a.error) for a in answers] == [
        ("a", 0, "t1", None),
        ("b", 0, "t2", None),
        ("b", 1, "t3", None),
    ]
    assert len({a.model_s for a in answers}) == 1  # the call's time is shared evenly
    assert batcher.flush() == [] and script.calls == [[1, 2, 3]]  # nothing queued: no call


def test_failing_batch_is_answered_chunk_by_chunk_and_a_failed_file_is_not_retried():
    script = Script(bad={2})
    batcher = Batcher(script, batch_size=8)
    for file, key, wave in (("a", 0, 1), ("b", 0, 2), ("b", 1, 3), ("c", 0, 4)):
        batcher.add(file, key, wave)
    answers = {(a.file, a.key): a for a in batcher.flush()}
    assert script.calls == [[1, 2, 3, 4], [1], [2], [4]]  # b's second chunk is not tried again
    assert answers["a", 0].text == "t1" and answers["c", 0].text == "t4"
    assert answers["b", 0].error == "RuntimeError: wave 2 broke" and answers["b", 0].text is None
    assert answers["b", 1].error == answers["b", 0].error and answers["b", 1].model_s == 0.0


def test_discard_and_a_wrong_number_of_answers():
    calls = []

    def short(waves):
        calls.append(list(waves))
        return ["only one"] if len(waves) > 1 else [f"t{waves[0]}"]

    batcher = Batcher(short, batch_size=4)
    batcher.add("a", 0, 1)
    batcher.add("x", 0, 9)
    batcher.add("b", 0, 2)
    batcher.discard("x")
    answers = batcher.flush()
    assert calls == [[1, 2], [1], [2]]  # the short answer list counts as a failed call
    assert [a.text for a in answers] == ["t1", "t2"]


class TextModel:
    """A text-only LLM: one token per word, ``context`` positions; answers ``s<n>`` in call order."""

    def __init__(self, context=1000, fail_batches=False):
        self.context_length, self.fail_batches, self.prompts = context, fail_batches, []

    def count_tokens(self, text):
        return len(text.split())

    def generate_text(self, prompts, options):
        if self.fail_batches and len(prompts) > 1:
            raise RuntimeError("out of memory")
        if any("poison" in p for p in prompts):
            raise RuntimeError("bad prompt")
        first = len(self.prompts)
        self.prompts.extend(prompts)
        return [SimpleNamespace(text=f"s{first + i}") for i in range(len(prompts))]


def render(segments):
    return "\n".join(f"{s.start:g}-{s.end:g} {s.text}" for s in segments)


def segs(*texts, seconds=30.0):
    return [Segment(i * seconds, (i + 1) * seconds, t) for i, t in enumerate(texts)]


def test_summary_pass_answers_each_file_and_isolates_failures():
    model = TextModel(fail_batches=True)  # the batched call fails: file by file
    answers = SummaryPass(model, render, GenerationOptions()).run(
        [segs("a", "b"), segs("poison", "c"), segs("d", "e")]
    )
    assert [a.text for a in answers] == ["s0", None, "s1"]
    assert answers[1].error == "summary pass: RuntimeError: bad prompt"
    assert model.prompts == ["0-30 a\n30-60 b", "0-30 d\n30-60 e"]


@pytest.mark.parametrize("context", [40, 25])
def test_fit_context_groups_answers_until_the_prompt_fits(context):
    options = GenerationOptions(max_new_tokens=2)
    budget = context - 2 - SUMMARY_MARGIN_TOKENS
    model = TextModel(context=context)
    segments = segs(*"abcdefghijkl")  # 12 segments of 2 words each: 24 tokens
    fitted = SummaryPass(model, render, options).fit_context(segments)
    assert model.count_tokens(render(fitted)) <= budget
    assert all(model.count_tokens(p) <= budget for p in model.prompts)
    assert fitted[0].start == 0.0 and fitted[-1].end == 360.0  # the groups cover the recording
    assert all(a.end == b.start for a, b in zip(fitted, fitted[1:], strict=False))
    untouched = SummaryPass(TextModel(context=1000), render, options).fit_context(segments)
    assert untouched == segments


def test_a_batch_time_is_shared_by_audio_length():
    import time

    import numpy as np

    def slow(waves):
        time.sleep(0.2)
        return ["x"] * len(waves)

    batcher = Batcher(slow, batch_size=3)
    for file, seconds in (("a", 1.0), ("b", 3.0), ("c", 30.0)):
        batcher.add(file, 0, np.zeros(int(16_000 * seconds), np.float32))
    began = time.perf_counter()
    answers = batcher.flush()
    took = time.perf_counter() - began
    shares = [a.model_s for a in answers]
    assert shares[1] == pytest.approx(3 * shares[0]) and shares[2] == pytest.approx(30 * shares[0])
    assert 0.2 <= sum(shares) <= took  # the batch's time once, not once per file
