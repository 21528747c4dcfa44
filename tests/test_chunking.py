"""Chunk planning: pure stream tests (many lengths, block sizes) and real files through ffmpeg."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import salmonn
from salmonn.audio.chunking import Chunk, chunk_stream, iter_chunks, quietest_offset
from salmonn.audio.decode import load_audio
from salmonn.config import ChunkingOptions
from salmonn.errors import AudioDecodeError, ConfigError

SR = 16_000
pytestmark = pytest.mark.ffmpeg  # run again with another ffmpeg build in CI


def blocks_of(x: np.ndarray, size: int):
    for i in range(0, len(x), size):
        yield x[i : i + size]


def check_cover(chunks: list[Chunk], x: np.ndarray, opts: ChunkingOptions) -> None:
    """Chunks start at 0, end at the end, overlap exactly as asked, carry the source's samples."""
    assert chunks[0].start == 0 and chunks[-1].end == pytest.approx(len(x) / SR)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start == pytest.approx(a.end - opts.overlap_seconds)
        assert b.start > a.start
    for c in chunks:
        assert c.samples.dtype == np.float32 and c.samples.flags["C_CONTIGUOUS"]
        assert c.end - c.start <= opts.max_seconds + 1e-9
        s, e = round(c.start * SR), round(c.end * SR)
        np.testing.assert_array_equal(c.samples[: e - s], x[s:e])
        if c.padded:
            assert len(c.samples) == round(opts.min_seconds * SR) and not c.samples[e - s :].any()
        else:
            assert len(c.samples) == e - s


@pytest.mark.parametrize("seconds", [0.2, 1.0, 29.99, 30.0, 30.5, 31.2, 59.5, 60.0, 61.0, 95.3])
@pytest.mark.parametrize("strategy", ["quiet", "fixed"])
@pytest.mark.parametrize("overlap", [0.0, 2.0])
def test_chunks_cover_everything(seconds, strategy, overlap):
    rng = np.random.default_rng(int(seconds * 10))
    x = rng.standard_normal(round(seconds * SR)) * rng.uniform(0.01, 0.5, round(seconds * SR))
    x = x.astype(np.float32)
    opts = ChunkingOptions(strategy=strategy, overlap_seconds=overlap)
    for block in (
        SR,
        7_777,
        100_000,
    ):  # the plan must not depend on how the decoder cuts its blocks
        chunks = list(chunk_stream(blocks_of(x, block), opts, "mem"))
        check_cover(chunks, x, opts)
    if seconds <= 30:
        assert len(chunks) == 1


def test_quiet_merge_avoids_a_short_tail():
    x = np.full(round(30.5 * SR), 0.1, np.float32)
    chunks = list(chunk_stream(blocks_of(x, SR), ChunkingOptions(), "mem"))
    assert len(chunks) == 2 and not chunks[-1].padded
    assert chunks[-1].end - chunks[-1].start >= 1.0


def test_fixed_short_tail_is_padded_and_logged(caplog):
    x = np.full(round(30.5 * SR), 0.1, np.float32)
    with caplog.at_level(logging.INFO, logger="salmonn"):
        chunks = list(chunk_stream(blocks_of(x, SR), ChunkingOptions(strategy="fixed"), "mem"))
    assert [(c.start, c.end, len(c.samples), c.padded) for c in chunks] == [
        (0.0, 30.0, 30 * SR, False),
        (30.0, 30.5, SR, True),
    ]
    assert "zero-padded" in caplog.text and "mem" in caplog.text


def test_pad_mode_keeps_the_original_behaviour_for_short_clips():
    x = np.full(round(0.3 * SR), 0.2, np.float32)
    (chunk,) = chunk_stream([x], ChunkingOptions(short_tail="pad"), "clip")
    assert (chunk.start, chunk.end, chunk.padded) == (0.0, 0.3, True)
    assert len(chunk.samples) == SR and not chunk.samples[len(x) :].any()


def test_quietest_offset_prefers_silence_then_lateness():
    loud = np.ones(SR, np.float32)
    region = loud.copy()
    region[4000:6000] = 0  # 125 ms of silence
    assert 4000 <= quietest_offset(region) <= 6000
    assert quietest_offset(loud) == SR  # all equal: the latest place, the limit itself
    late = loud.copy()
    late[-2400:-800] = 0  # 100 ms of silence ending 50 ms before the limit
    assert quietest_offset(late) == SR - 1600
    assert quietest_offset(np.ones(10, np.float32)) == 10


def test_smaller_max_and_overrides():
    x = np.zeros(10 * SR, np.float32)
    chunks = list(chunk_stream([x], ChunkingOptions(max_seconds=4, search_seconds=1), "m"))
    assert [(c.start, c.end) for c in chunks] == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(ConfigError):
        ChunkingOptions(max_seconds=31)
    with pytest.raises(ConfigError, match="unknown option"):
        list(iter_chunks("whatever.wav", bogus=1))


# -- real files --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """75 s of shaped noise at 44.1 kHz stereo, FLAC (lossless, so decoding is comparable)."""
    rng = np.random.default_rng(0)
    n = 75 * 44100
    x = (rng.standard_normal((n, 2)) * 0.1).astype(np.float32)
    path = tmp_path_factory.mktemp("long") / "long.flac"
    sf.write(path, x, 44100)
    return path


def test_75_seconds_gives_3_chunks_covering_0_to_75(long_file):
    whole = load_audio(long_file)
    chunks = list(salmonn.iter_chunks(str(long_file)))
    assert len(chunks) == 3
    assert chunks[0].start == 0 and chunks[-1].end == 75.0
    check_cover(chunks, whole, ChunkingOptions())
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), whole)
    assert all(c.source == str(long_file) for c in chunks)


def test_cut_lands_in_the_silent_gap(tmp_path):
    t = np.arange(40 * SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    x[round(27.7 * SR) : round(28.3 * SR)] = 0  # a pause near 28 s
    path = tmp_path / "gap.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    first, second = iter_chunks(path)
    assert 27.7 <= first.end <= 28.3 and second.start == first.end and second.end == 40.0
    fixed = list(iter_chunks(path, strategy="fixed"))
    assert fixed[0].end == 30.0


def test_overlap_on_a_real_file(long_file):
    chunks = list(iter_chunks(long_file, max_seconds=20, overlap_seconds=3, strategy="fixed"))
    assert [(c.start, c.end) for c in chunks] == [(0, 20), (17, 37), (34, 54), (51, 71), (68, 75)]
    np.testing.assert_array_equal(chunks[0].samples[17 * SR :], chunks[1].samples[: 3 * SR])


def test_channel_option_reaches_the_decoder(tmp_path):
    x = np.zeros((SR, 2), np.float32)
    x[:, 1] = 0.25
    path = tmp_path / "right.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    (mean,) = iter_chunks(path)
    (right,) = iter_chunks(path, ChunkingOptions(channel=1))
    assert np.allclose(mean.samples, 0.125) and np.allclose(right.samples, 0.25)


def test_stdin_chunks(long_file):
    code = (
        "import salmonn\n"
        "for c in salmonn.iter_chunks('-'): print(c.index, c.start, c.end, c.source)\n"
    )
    with open(long_file, "rb") as stdin:
        done = subprocess.run([sys.executable, "-c", code], stdin=stdin, capture_output=True,
                              text=True, check=True)  # fmt: skip
    lines = [line.split() for line in done.stdout.splitlines()]
    assert len(lines) == 3 and lines[0][1] == "0.0" and lines[-1][2] == "75.0"
    assert {line[3] for line in lines} == {"-"}


def test_corrupt_data_mid_file_raises_after_good_chunks(tmp_path):
    x = (np.random.default_rng(1).standard_normal(6 * SR) * 0.1).astype(np.float32)
    path = tmp_path / "cut.wav"
    sf.write(path, x, SR)  # 16-bit PCM
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3 * SR - 1])  # cut mid-sample at ~3 s
    got = []
    with pytest.raises(AudioDecodeError) as info:
        for chunk in iter_chunks(path, max_seconds=1, search_seconds=0):
            got.append(chunk)
    assert info.value.path == str(path) and info.value.reason  # ffmpeg words the cause
    assert got and not got[-1].last  # the consumer sees chunks, then the error
