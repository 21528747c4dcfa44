"""The server's model worker without HTTP: merging, isolation, no wait for a lone request, and
continuous batching over the tiny model giving each call what it gets alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest

from salmonn.config import GenerationOptions
from salmonn.serve.batcher import AUDIO, TEXT, Batcher, ServerClosing

GREEDY = GenerationOptions(num_beams=1, max_new_tokens=6)
BEAMS = GenerationOptions(num_beams=2, max_new_tokens=6)
SAMPLED = GenerationOptions(num_beams=1, do_sample=True, seed=3, max_new_tokens=6)


@dataclass
class Result:
    text: str
    token_ids: list


class FakeModel:
    """Answers ``prompt:options``; records each call; fails a call holding the prompt ``bad``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, list[str], GenerationOptions]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def _answer(self, kind, prompts, options):
        with self.lock:
            self.calls.append((kind, list(prompts), options))
        time.sleep(self.delay)
        if "bad" in prompts:
            raise RuntimeError("this prompt breaks the model")
        return [Result(f"{p}:{options.num_beams}", [1, 2]) for p in prompts]

    def generate(self, waves, prompts, options):
        assert len(waves) == len(prompts)
        return self._answer(AUDIO, prompts, options)

    def generate_text(self, prompts, options):
        return self._answer(TEXT, prompts, options)


def run_requests(batcher, jobs):
    """Each job ``(kind, prompts, options)`` is one request in its own thread, all at once."""
    barrier = threading.Barrier(len(jobs))

    def one(job):
        kind, prompts, options = job
        request = batcher.open_request()
        try:
            barrier.wait()
            waves = [np.zeros(1600, np.float32)] * len(prompts) if kind == AUDIO else None
            try:
                return [r.text for r in batcher.submit(request, kind, prompts, options, waves)]
            except Exception as exc:  # noqa: BLE001 - the test looks at it
                return exc
        finally:
            batcher.close_request(request)

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(one, jobs))


def test_calls_that_decode_alike_are_merged():
    model = FakeModel(delay=0.05)
    batcher = Batcher(model, max_batch_size=8, wait_s=2.0)
    jobs = [
        (AUDIO, ["a", "b"], GREEDY),
        (AUDIO, ["c"], GREEDY),
        (AUDIO, ["d"], BEAMS),
        (TEXT, ["e"], GREEDY),
        (AUDIO, ["f", "g"], GREEDY),
    ]
    results = run_requests(batcher, jobs)
    batcher.close()
    assert results == [["a:1", "b:1"], ["c:1"], ["d:2"], ["e:1"], ["f:1", "g:1"]]
    merged = sorted((kind, sorted(prompts)) for kind, prompts, _ in model.calls)
    assert merged == [(AUDIO, ["a", "b", "c", "f", "g"]), (AUDIO, ["d"]), (TEXT, ["e"])]


def test_batch_size_limit_and_sampled_calls_merged():
    model = FakeModel(delay=0.05)
    batcher = Batcher(model, max_batch_size=3, wait_s=2.0)
    other_seed = SAMPLED.with_overrides(seed=4)
    jobs = [(AUDIO, [p], GREEDY) for p in "abcde"] + [(AUDIO, [p], SAMPLED) for p in "xy"]
    jobs.append((AUDIO, ["z"], other_seed))
    results = run_requests(batcher, jobs)
    batcher.close()
    assert results == [[f"{p}:1"] for p in "abcdexyz"]
    sizes = sorted(len(prompts) for _, prompts, options in model.calls if not options.do_sample)
    assert sum(sizes) == 5 and max(sizes) <= 3 and len(sizes) == 2
    sampled = sorted(sorted(prompts) for _, prompts, options in model.calls if options.do_sample)
    # equal sampling options share a call (each item draws from its own seeded generator)
    assert sampled == [["x", "y"], ["z"]]


def test_a_failing_call_fails_alone():
    model = FakeModel()
    batcher = Batcher(model, max_batch_size=8, wait_s=2.0)
    results = run_requests(batcher, [(AUDIO, ["a"], GREEDY), (AUDIO, ["bad"], GREEDY)])
    assert results[0] == ["a:1"]
    assert isinstance(results[1], RuntimeError)
    assert [len(p) for _, p, _ in model.calls] == [2, 1, 1]  # merged, then retried call by call
    batcher.close()
    with pytest.raises(ServerClosing):
        batcher.open_request()


def test_a_lone_request_does_not_wait():
    batcher = Batcher(FakeModel(), max_batch_size=8, wait_s=30.0)
    start = time.perf_counter()
    assert run_requests(batcher, [(TEXT, ["solo"], GREEDY)]) == [["solo:1"]]
    assert time.perf_counter() - start < 10
    batcher.close()


def test_sampled_calls_share_a_stream_and_answer_as_alone(tiny_paths):
    import salmonn

    model = salmonn.load_model(
        tiny_paths.whisper, tiny_paths.beats, tiny_paths.llm, tiny_paths.checkpoint, device="cpu"
    )
    options = SAMPLED.with_overrides(temperature=1.5, top_k=0, max_new_tokens=8)
    rng = np.random.default_rng(1)
    waves = [rng.normal(0, 0.1, 16000 * s).astype(np.float32) for s in (1, 2, 3, 2, 1)]
    reports = []
    batcher = Batcher(model, max_batch_size=3, wait_s=2.0, on_batch=reports.append)
    barrier = threading.Barrier(len(waves))

    def one(i):
        request = batcher.open_request()
        try:
            barrier.wait()
            return batcher.submit(request, AUDIO, ["Describe."], options, [waves[i]])
        finally:
            batcher.close_request(request)

    with ThreadPoolExecutor(len(waves)) as pool:
        got = list(pool.map(one, range(len(waves))))
    batcher.close()
    alone = [model.generate([w], ["Describe."], options)[0].token_ids for w in waves]
    assert [r[0].token_ids for r in got] == alone
    joined = [r for r in reports if r.items]
    assert sum(r.items for r in joined) == 5
    assert max(r.requests for r in joined) > 1  # sampled requests shared a prefill


def test_continuous_batching_equals_alone(tiny_paths):
    import salmonn

    model = salmonn.load_model(
        tiny_paths.whisper, tiny_paths.beats, tiny_paths.llm, tiny_paths.checkpoint, device="cpu"
    )
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, 16000 * s).astype(np.float32) for s in (1, 2, 3, 2)]
    reports = []
    batcher = Batcher(model, max_batch_size=3, wait_s=2.0, on_batch=reports.append)
    assert batcher._streams is not None  # SalmonnModel offers open_stream

    barrier = threading.Barrier(4)

    def one(i):
        request = batcher.open_request()
        try:
            barrier.wait()
            options = GREEDY if i % 2 == 0 else BEAMS
            if i == 3:
                return batcher.submit(request, TEXT, ["Say something."], options)
            return batcher.submit(request, AUDIO, ["Describe."] * 1, options, [waves[i]])
        finally:
            batcher.close_request(request)

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(one, range(4)))
    batcher.close()
    for i, results in enumerate(got):
        options = GREEDY if i % 2 == 0 else BEAMS
        if i == 3:
            alone = model.generate_text(["Say something."], options)
        else:
            alone = model.generate([waves[i]], ["Describe."], options)
        assert [r.token_ids for r in results] == [r.token_ids for r in alone]
    joined = [r for r in reports if r.items]
    assert sum(r.items for r in joined) == 4
    assert len(joined) < 4  # items of concurrent requests joined together
