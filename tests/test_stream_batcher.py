"""Continuous batching in the engine: StreamBatcher over the tiny SALMONN gives the static answers."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from salmonn.audio.inputs import expand_inputs
from salmonn.audio.prefetch import Prefetcher
from salmonn.config import GenerationOptions
from salmonn.jobs.batcher import Batcher, StreamBatcher, make_batcher
from salmonn.jobs.engine import process
from salmonn.jobs.spec import TaskSpec

GREEDY = GenerationOptions(max_new_tokens=10, num_beams=1)
BEAM = GenerationOptions(max_new_tokens=8, num_beams=3)
SPEC = TaskSpec("transcribe", "Recognize the speech and give me the transcription.")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


class _Static:
    """The model without ``open_stream``: the engine falls back to the static Batcher."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        if name == "open_stream":
            raise AttributeError(name)
        return getattr(self._model, name)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(3)
    sr = 16_000
    for name, seconds in (("a.wav", 40), ("b.wav", 4), ("c.wav", 12), ("d.wav", 31)):
        t = np.arange(seconds * sr) / sr
        wave = 0.2 * np.sin(2 * np.pi * (150 + 40 * seconds) * t) + 0.05 * rng.standard_normal(
            t.size
        )
        sf.write(root / name, wave.astype(np.float32), sr)
    return root


@pytest.mark.parametrize("options", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_continuous_engine_gives_the_static_records(model, folder, options):
    items = expand_inputs([folder])
    assert isinstance(make_batcher(model, "p", options, 2, lambda w: []), StreamBatcher)
    assert isinstance(make_batcher(_Static(model), "p", options, 2, lambda w: []), Batcher)
    continuous = list(process(model, items, SPEC, generation=options, batch_size=2))
    static = list(process(_Static(model), items, SPEC, generation=options, batch_size=2))
    assert [r.path for r in continuous] == [str(i.path) for i in items]
    assert [(r.text, r.segments) for r in continuous] == [(r.text, r.segments) for r in static]
    assert sum(len(r.segments) for r in continuous) == 2 + 1 + 1 + 2
    assert all(r.error is None and r.timings["model_s"] > 0 for r in continuous)


class _Stalling:
    """A chunk source (``get`` as :class:`~salmonn.audio.prefetch.Prefetcher` has) whose next chunk is
    ready only at every third look without waiting: the engine decodes while it stalls."""

    def __init__(self, chunks):
        self._chunks, self._looks, self.stalls = iter(chunks), 0, 0

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._chunks)

    def get(self, timeout=None):
        if timeout is not None:
            self._looks += 1
            if self._looks % 3:
                self.stalls += 1
                return None
        return next(self._chunks)


@pytest.mark.parametrize("options", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_decoding_while_the_source_stalls_gives_the_same_records(model, folder, options):
    items = expand_inputs([folder])
    with Prefetcher([str(i.path) for i in items]) as decoded:
        chunks = list(decoded)
    source = _Stalling(chunks)
    stalled = list(process(model, items, SPEC, generation=options, batch_size=2, chunks=source))
    static = list(process(_Static(model), items, SPEC, generation=options, batch_size=2))
    assert source.stalls > 0
    assert [(r.path, r.text, r.segments) for r in stalled] == [
        (r.path, r.text, r.segments) for r in static
    ]
    assert all(r.error is None and r.timings["model_s"] > 0 for r in stalled)


def test_failure_in_flight_is_retried_chunk_by_chunk(model):
    stream = model.open_stream(GREEDY, batch_size=2)
    calls = []

    def answer(waves):
        calls.append(len(waves))
        if len(waves[0]) == 16_000 * 2:
            raise RuntimeError("bad chunk")
        return [f"ok{len(w)}" for w in waves]

    batcher = StreamBatcher(stream, "Describe the audio.", answer, 2)
    real_step = stream.step
    stream.step = lambda: (_ for _ in ()).throw(RuntimeError("decode failed"))
    for key, seconds in enumerate((1, 2, 3)):
        batcher.add("f" if seconds != 3 else "g", key, np.zeros(16_000 * seconds, np.float32))
    answers = batcher.flush()
    assert calls == [1, 1, 1]
    by_key = {a.key: a for a in answers}
    assert by_key[0].text == "ok16000" and by_key[2].text == "ok48000"
    assert by_key[1].text is None and "bad chunk" in by_key[1].error
    assert not stream.busy
    stream.step = real_step
    batcher.add("h", 0, np.zeros(16_000, np.float32))
    (only,) = batcher.flush()
    assert (
        only.file == "h"
        and only.error is None
        and only.text
        == model.generate([np.zeros(16_000, np.float32)], "Describe the audio.", GREEDY)[0].text
    )
