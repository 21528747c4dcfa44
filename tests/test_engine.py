"""The batching engine with a fake model and a fake chunk source (real Prefetcher in the last tests)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from salmonn.config import ChunkingOptions, GenerationOptions
from salmonn.errors import AudioDecodeError, ConfigError
from salmonn.jobs.engine import pending_items, planned_resume_key, process, select_shard
from salmonn.jobs.records import Record
from salmonn.jobs.spec import ProgressEvent, TaskSpec

BAD = -1.0  # a chunk whose samples are all BAD makes the fake model raise


class FakeModel:
    """Answers ``"m<marker>"`` for a wave filled with ``marker``; logs every call."""

    def __init__(self) -> None:
        self.identity = {"preset": "fake", "device": "cpu", "dtype": "float32"}
        self.batches: list[list[float]] = []
        self.text_prompts: list[str] = []

    def generate(self, waves, prompts, options):
        markers = [float(w[0]) for w in waves]
        self.batches.append(markers)
        assert len(prompts) == len(waves) and isinstance(options, GenerationOptions)
        if BAD in markers:
            raise RuntimeError("CUDA error: device-side assert\nsecond line")
        return [SimpleNamespace(text=f"m{m:g}", token_ids=[]) for m in markers]

    def generate_text(self, prompts, options):
        self.text_prompts.extend(prompts)
        return [SimpleNamespace(text=f"summary of {p.count(chr(10)) + 1} parts") for p in prompts]

    context_length = 10_000  # no summary prompt of these tests comes near it

    def count_tokens(self, text):
        return len(text.split())


class FakeSource:
    """Plays FileChunks for ``plan``: path -> list of (marker, seconds) or an error after some chunks."""

    def __init__(self, plan: dict[str, list]) -> None:
        self.plan, self.produced, self.closed = plan, 0, False

    def play(self, *paths):
        """The FileChunk stream of ``paths`` (default: the plan's, in order); closing it marks the
        source closed."""
        self.paths = list(paths or self.plan)
        return self._iter(self.paths)

    def _iter(self, paths):
        try:
            for i, path in enumerate(paths):
                t = 0.0
                steps = self.plan[path]
                for j, step in enumerate(steps):
                    last = j == len(steps) - 1
                    self.produced += 1
                    if step == "error":
                        yield SimpleNamespace(
                            file_index=i,
                            source=path,
                            chunk=None,
                            last=True,
                            error=AudioDecodeError(path, "Invalid data found"),
                        )
                        break
                    marker, seconds = step
                    chunk = SimpleNamespace(
                        index=j,
                        start=t,
                        end=t + seconds,
                        source=path,
                        samples=np.full(160, marker, np.float32),
                        padded=False,
                    )
                    t += seconds
                    yield SimpleNamespace(
                        file_index=i, source=path, chunk=chunk, error=None, last=last
                    )
        finally:
            self.closed = True


def items(*paths):
    return [SimpleNamespace(path=p, root=".", relpath=p) for p in paths]


def summary_spec(**kw):
    return TaskSpec(
        "caption",
        "<Speech><SpeechHere></Speech> Describe.",
        join="summary",
        summary_prompt=lambda segs: "\n".join(f"{s.start}-{s.end} {s.text}" for s in segs),
        **kw,
    )


CONCAT = TaskSpec("transcribe", "<Speech><SpeechHere></Speech> Transcribe.")


def test_batches_span_files_and_records_come_in_input_order():
    model = FakeModel()
    source = FakeSource(
        {"a": [(1, 30.0)], "b": [(2, 30.0), (3, 30.0), (4, 15.0)], "c": [(5, 10.0), (6, 2.0)]}
    )
    records = list(process(model, items("a", "b", "c"), CONCAT, batch_size=4, chunks=source.play()))
    assert model.batches == [[1, 2, 3, 4], [5, 6]]
    assert [r.path for r in records] == ["a", "b", "c"]
    b = records[1]
    assert b.text == "m2 m3 m4" and b.error is None and b.duration == 75.0
    assert [(s.start, s.end, s.text) for s in b.segments] == [
        (0, 30, "m2"),
        (30, 60, "m3"),
        (60, 75, "m4"),
    ]
    assert records[2].task == "transcribe" and records[2].model["preset"] == "fake"
    assert records[2].options["generation"]["num_beams"] == GenerationOptions().num_beams
    assert set(records[0].timings) >= {"model_s", "total_s"}
    assert source.closed


def test_summary_pass_for_long_files_only_and_per_chunk():
    model = FakeModel()
    plan = {"long": [(1, 30.0), (2, 30.0), (3, 15.0)], "short": [(4, 5.0)]}
    records = list(
        process(
            model,
            items("long", "short"),
            summary_spec(),
            batch_size=8,
            chunks=FakeSource(plan).play(),
        )
    )
    assert model.text_prompts == ["0.0-30.0 m1\n30.0-60.0 m2\n60.0-75.0 m3"]
    assert records[0].text == "summary of 3 parts" and len(records[0].segments) == 3
    assert records[1].text == "m4" and records[1].segments[0].text == "m4"

    model = FakeModel()
    records = list(
        process(
            model, items("long"), summary_spec(per_chunk=True), chunks=FakeSource(plan).play("long")
        )
    )
    assert model.text_prompts == []
    assert records[0].text.splitlines() == [
        "[00:00-00:30] m1",
        "[00:30-01:00] m2",
        "[01:00-01:15] m3",
    ]
    assert records[0].options["per_chunk"] is True


class SmallContextModel(FakeModel):
    """A fake LLM with a small context: one token per word, 20 positions."""

    context_length = 20

    def count_tokens(self, text):
        return len(text.split())

    def generate_text(self, prompts, options):
        first = len(self.text_prompts)
        self.text_prompts.extend(prompts)
        return [SimpleNamespace(text=f"s{first + i}") for i in range(len(prompts))]


def test_summary_of_a_long_file_is_reduced_in_stages_to_fit_the_context():
    model = SmallContextModel()
    plan = {"long": [(i, 30.0) for i in range(1, 11)]}  # 10 chunks = 20 words; budget 20 - 1 - 8
    gen = GenerationOptions(max_new_tokens=1, num_beams=1)
    records = list(
        process(
            model, items("long"), summary_spec(), generation=gen, chunks=FakeSource(plan).play()
        )
    )
    groups, final = model.text_prompts[:-1], model.text_prompts[-1]
    assert [len(g.splitlines()) for g in groups] == [5, 5]
    assert final.splitlines() == ["0.0-150.0 s0", "150.0-300.0 s1"]
    assert all(model.count_tokens(p) <= 20 - 1 - 8 for p in model.text_prompts)
    assert records[0].error is None and records[0].text == "s2"
    assert len(records[0].segments) == 10  # the record keeps every chunk answer


def test_decode_error_gives_an_error_record_and_drops_partial_chunks():
    model = FakeModel()
    plan = {"a": [(1, 3.0)], "bad": [(7, 30.0), "error"], "c": [(2, 3.0)]}
    records = list(
        process(model, items("a", "bad", "c"), CONCAT, batch_size=8, chunks=FakeSource(plan).play())
    )
    assert [r.path for r in records] == ["a", "bad", "c"]
    assert (
        records[1].error == "Invalid data found"
        and records[1].text is None
        and records[1].segments == []
    )
    assert all(
        7 not in batch for batch in model.batches
    )  # the failed file's chunk never reached the model
    assert records[0].text == "m1" and records[2].text == "m2"


def test_model_failure_is_retried_one_by_one():
    model = FakeModel()
    plan = {"a": [(1, 3.0)], "b": [(BAD, 3.0)], "c": [(3, 3.0), (4, 3.0)]}
    records = list(
        process(model, items("a", "b", "c"), CONCAT, batch_size=8, chunks=FakeSource(plan).play())
    )
    assert model.batches[0] == [1, BAD, 3, 4] and sorted(map(len, model.batches[1:])) == [
        1,
        1,
        1,
        1,
    ]
    assert records[0].text == "m1" and records[2].text == "m3 m4"
    assert records[1].error == "RuntimeError: second line"


def test_records_are_yielded_as_soon_as_a_file_is_done():
    source = FakeSource({"a": [(1, 3.0)], "b": [(2, 3.0)], "c": [(3, 3.0)]})
    gen = process(FakeModel(), items("a", "b", "c"), CONCAT, batch_size=1, chunks=source.play())
    first = next(gen)
    assert first.path == "a" and source.produced == 1
    gen.close()  # --fail-fast: closing stops the source
    assert source.closed


def test_pending_items_skip_done_inputs_and_progress_events():
    model = FakeModel()
    plan = {"a": [(1, 3.0)], "b": [(2, 3.0), (3, 3.0)]}
    done = {planned_resume_key(items("a")[0], CONCAT)}
    todo = pending_items(items("a", "b"), CONCAT, done)
    assert [i.path for i in todo] == ["b"]
    events: list[ProgressEvent] = []
    records = list(
        process(
            model,
            todo,
            CONCAT,
            batch_size=1,
            on_progress=events.append,
            chunks=FakeSource(plan).play("b"),
        )
    )
    assert [r.path for r in records] == ["b"]
    assert records[0].resume_key() not in done
    assert events[0].kind == "start" and events[0].files_total == 1
    assert [e.kind for e in events[1:]] == ["batch", "batch", "record"]
    last = events[-1]
    assert last.kind == "record" and last.files_done == 1 and last.chunks_done == 2
    assert last.audio_seconds == 6.0 and last.record is records[0]
    # a key read back from JSON equals the key computed before the run
    assert Record.from_json(records[0].to_json()).resume_key() == planned_resume_key(
        items("b")[0], CONCAT
    )


def test_resume_key_depends_on_settings():
    item = items("a")[0]
    base = planned_resume_key(item, CONCAT)
    assert planned_resume_key(item, CONCAT, generation=GenerationOptions(num_beams=1)) != base
    assert planned_resume_key(item, CONCAT, chunking=ChunkingOptions(max_seconds=10)) != base
    assert planned_resume_key(item, TaskSpec("transcribe", "other")) != base
    assert planned_resume_key(items("b")[0], CONCAT) != base


def test_select_shard_partitions_deterministically():
    xs = list(range(10))
    shards = [select_shard(xs, k, 3) for k in (1, 2, 3)]
    assert shards[0] == [0, 3, 6, 9] and shards[1] == [1, 4, 7]
    assert sorted(x for shard in shards for x in shard) == xs
    for bad in ((0, 3), (4, 3), (1, 0)):
        with pytest.raises(ConfigError):
            select_shard(xs, *bad)


def test_spec_and_batch_size_validation():
    with pytest.raises(ConfigError):
        TaskSpec("caption", "x", join="summary")
    with pytest.raises(ConfigError):
        TaskSpec("x", "x", join="bogus")
    with pytest.raises(ConfigError):
        list(process(FakeModel(), items("a"), CONCAT, batch_size=0, chunks=FakeSource({}).play()))


def test_real_prefetcher_long_file_and_corrupt_file(tmp_path):
    """Real decoding: a 75 s file gives 3 chunks covering it, a corrupt file an error, batches span files."""
    import soundfile as sf

    from salmonn.audio.inputs import expand_inputs

    sr = 16_000
    t = np.arange(75 * sr) / sr
    sf.write(tmp_path / "a_long.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)
    (tmp_path / "b_bad.wav").write_bytes(b"RIFF....WAVEjunk")
    sf.write(tmp_path / "c_short.wav", np.zeros(sr // 2, np.float32), sr)

    class Model(FakeModel):
        def generate(self, waves, prompts, options):
            self.batches.append([len(w) for w in waves])
            return [SimpleNamespace(text=f"n{len(w)}") for w in waves]

    model = Model()
    records = list(process(model, expand_inputs([tmp_path]), CONCAT, batch_size=4))
    long, bad, short = records
    assert [len(b) for b in model.batches] == [
        4
    ]  # 3 chunks of one file + 1 of another, in one call
    assert len(long.segments) == 3 and long.duration == 75.0
    assert long.segments[0].start == 0.0 and long.segments[-1].end == 75.0
    assert all(a.end == b.start for a, b in itertools.pairwise(long.segments))
    assert bad.error and bad.text is None and "\n" not in bad.error
    assert short.duration == 0.5 and short.text == f"n{sr}"  # padded to 1 s for the model
