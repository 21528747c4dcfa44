"""Prefetcher: order, per-file errors, bounded queue, clean shutdown; real ffmpeg.."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import soundfile as sf

from salmonn.audio.chunking import iter_chunks
from salmonn.audio.inputs import InputItem
from salmonn.audio.prefetch import FileChunk, Prefetcher
from salmonn.errors import AudioDecodeError, AudioError, ConfigError, FFmpegNotFoundError

SR = 16_000
pytestmark = pytest.mark.ffmpeg  # run again with another ffmpeg build in CI


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefetch")
    rng = np.random.default_rng(3)
    for name, seconds in [("a.wav", 5.0), ("c.flac", 2.5), ("long.wav", 12.0)]:
        sf.write(d / name, (rng.standard_normal(int(seconds * SR)) * 0.1).astype(np.float32), SR)
    (d / "bad.wav").write_text("not audio")
    data = (d / "long.wav").read_bytes()
    (d / "cut.wav").write_bytes(data[: len(data) // 2 + 1])  # ~6 s of good audio, then corrupt
    return d


def summary(items: list[FileChunk]) -> list[tuple]:
    return [(i.file_index, i.chunk.index if i.chunk else None, type(i.error).__name__ if i.error
             else None, i.last) for i in items]  # fmt: skip


def test_order_and_one_error_item_per_bad_file(files):
    sources = [
        str(files / "a.wav"),
        str(files / "bad.wav"),
        InputItem(str(files / "c.flac"), "", ""),
    ]
    with Prefetcher(sources, max_seconds=2, search_seconds=0) as prefetcher:
        items = list(prefetcher)
    assert summary(items) == [
        (0, 0, None, False), (0, 1, None, False), (0, 2, None, True),
        (1, None, "AudioDecodeError", True),
        (2, 0, None, False), (2, 1, None, True),
    ]  # fmt: skip
    assert items[3].error.path == str(files / "bad.wav") and items[3].source == str(
        files / "bad.wav"
    )
    expected = list(iter_chunks(files / "a.wav", max_seconds=2, search_seconds=0))
    for got, want in zip(items[:3], expected, strict=True):
        assert (got.chunk.start, got.chunk.end) == (want.start, want.end)
        np.testing.assert_array_equal(got.chunk.samples, want.samples)


def test_failure_mid_file_comes_after_its_chunks(files):
    with Prefetcher([files / "cut.wav", files / "c.flac"], max_seconds=1, search_seconds=0) as pf:
        items = list(pf)
    first = [i for i in items if i.file_index == 0]
    assert len(first) > 2 and all(i.chunk is not None and not i.last for i in first[:-1])
    assert isinstance(first[-1].error, AudioDecodeError) and first[-1].last
    assert "corrupt" in first[-1].error.reason
    assert [i.last for i in items if i.file_index == 1] == [False, False, True]


def test_queue_is_bounded_and_decoding_runs_ahead(files):
    prefetcher = Prefetcher([files / "long.wav"], max_chunks=2, max_seconds=1, search_seconds=0)
    try:
        deadline = time.monotonic() + 10
        while prefetcher._queue.qsize() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the producer would overfill here if the queue were not bounded
        assert prefetcher._queue.qsize() == 2 and prefetcher._thread.is_alive()
        items = list(prefetcher)
        assert len(items) == 12 and items[-1].last
    finally:
        prefetcher.close()


def test_close_stops_thread_and_ffmpeg(files):
    psutil = pytest.importorskip("psutil")
    me = psutil.Process()
    before = {p.pid for p in me.children()}
    with Prefetcher(
        [files / "long.wav"] * 3, max_chunks=1, max_seconds=1, search_seconds=0.5
    ) as prefetcher:
        first = next(prefetcher)
        assert first.chunk is not None
    assert not prefetcher._thread.is_alive()
    assert not ({p.pid for p in me.children()} - before)
    assert list(prefetcher) == []
    assert "salmonn-prefetch" not in [t.name for t in threading.enumerate()]


def test_missing_ffmpeg_is_fatal_not_per_file(files, monkeypatch):
    monkeypatch.setenv("SALMONN_FFMPEG", "/nonexistent/ffmpeg")
    with Prefetcher([files / "a.wav", files / "c.flac"]) as prefetcher:
        with pytest.raises(FFmpegNotFoundError):
            list(prefetcher)


def test_missing_file_is_a_per_file_error(files):
    with Prefetcher([files / "nope.wav", files / "c.flac"]) as prefetcher:
        items = list(prefetcher)
    assert (
        isinstance(items[0].error, AudioError)
        and items[0].error.reason == "no such file or directory"
    )
    assert items[1].chunk is not None and items[1].last


def test_bad_max_chunks():
    with pytest.raises(ConfigError):
        Prefetcher([], max_chunks=0)
    assert list(Prefetcher([])) == []


def test_get_says_when_no_chunk_is_ready_yet(tmp_path, monkeypatch):
    from helpers import FfmpegGate, tone, wait_until

    first, held = tone(tmp_path / "a.wav", 1.0), tone(tmp_path / "b.wav", 1.0, 600)
    gate = FfmpegGate(tmp_path / "gate", hold="b.wav")
    for name, value in gate.env.items():
        monkeypatch.setenv(name, value)
    with Prefetcher([first, held]) as chunks:
        item = chunks.get(60)
        assert item is not None and item.file_index == 0 and item.last
        wait_until(gate.held, 60, "b.wav's decoding held")
        assert chunks.get(0) is None  # b.wav has no chunk yet: no wait, no chunk
        assert chunks.get(0.05) is None
        gate.open()
        item = chunks.get(60)
        assert item is not None and item.file_index == 1 and item.last and item.error is None
        with pytest.raises(StopIteration):
            chunks.get(60)
        with pytest.raises(StopIteration):
            next(chunks)
