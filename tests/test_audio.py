"""salmonn.audio.decode against the real ffmpeg on files generated here (soundfile and ffmpeg lavfi)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from salmonn.audio.decode import (
    AudioInfo,
    channels_from_layout,
    find_ffmpeg,
    load_audio,
    probe,
    stream_audio,
)
from salmonn.errors import AudioDecodeError, AudioError, FFmpegNotFoundError

SR = 16_000
pytestmark = pytest.mark.ffmpeg  # run again with another ffmpeg build in CI


def ff(*args: str) -> None:
    """Run the real ffmpeg (argument list) to make a fixture."""
    cmd = [find_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    subprocess.run(cmd, check=True, capture_output=True)


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * SR / len(x))


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """2 s of a 440 Hz tone (lavfi's amplitude, 1/8) in every container/codec the issue names."""
    d = tmp_path_factory.mktemp("media")
    src = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=2"]
    ff(*src, str(d / "tone.wav"))
    ff(*src, "-c:a", "libmp3lame", "-b:a", "96k", str(d / "tone.mp3"))
    ff(*src, "-c:a", "flac", str(d / "tone.flac"))
    ff(*src, "-c:a", "libvorbis", str(d / "tone.ogg"))
    ff(*src, "-ar", "48000", "-c:a", "libopus", "-b:a", "64k", str(d / "tone.opus"))
    ff(*src, "-c:a", "aac", "-b:a", "96k", str(d / "tone.m4a"))
    video = ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=2"]
    ff(*video, *src, "-shortest", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
       str(d / "clip.mp4"))  # fmt: skip
    ff(*video, "-c:v", "libx264", "-preset", "ultrafast", str(d / "silent_video.mp4"))
    return d


# -- find_ffmpeg -------------------------------------------------------------------------------


def test_env_override_wins(monkeypatch, tmp_path):
    fake = tmp_path / "my-ffmpeg"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("SALMONN_FFMPEG", str(fake))
    assert find_ffmpeg() == str(fake)


def test_env_override_to_missing_file_is_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SALMONN_FFMPEG", str(tmp_path / "nope"))
    with pytest.raises(FFmpegNotFoundError) as info:
        find_ffmpeg()
    assert "SALMONN_FFMPEG" in str(info.value) and "\n" not in str(info.value)


def test_ffmpeg_on_path_then_imageio(monkeypatch, tmp_path):
    monkeypatch.delenv("SALMONN_FFMPEG", raising=False)
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_ffmpeg() == str(fake)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    import imageio_ffmpeg

    assert find_ffmpeg() == imageio_ffmpeg.get_ffmpeg_exe()


def test_no_ffmpeg_anywhere(monkeypatch, tmp_path):
    monkeypatch.delenv("SALMONN_FFMPEG", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails
    with pytest.raises(FFmpegNotFoundError) as info:
        find_ffmpeg()
    message = str(info.value)
    assert "pip install imageio-ffmpeg" in message and "\n" not in message


def test_missing_ffmpeg_surfaces_when_decoding(monkeypatch, media):
    monkeypatch.setenv("SALMONN_FFMPEG", "/nonexistent/ffmpeg")
    with pytest.raises(FFmpegNotFoundError):
        load_audio(media / "tone.wav")


# -- probe and decode --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tone.wav", "tone.mp3", "tone.flac", "tone.ogg", "tone.opus",
                                  "tone.m4a", "clip.mp4"])  # fmt: skip
def test_every_format_decodes_to_16k_mono_float32(media, name):
    info = probe(media / name)
    assert info.has_audio and info.channels == 1
    assert info.duration == pytest.approx(2.0, abs=0.1)
    audio = load_audio(media / name)
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.flags["C_CONTIGUOUS"]
    # lossy codecs may differ by a few ms (AAC priming differs between ffmpeg versions)
    assert len(audio) == pytest.approx(2 * SR, abs=0.05 * SR)
    body = audio[SR // 4 : -SR // 4]
    assert peak_hz(body) == pytest.approx(440, abs=2)
    assert np.sqrt(np.mean(body**2)) == pytest.approx(0.125 / np.sqrt(2), rel=0.1)  # lossy codecs


def test_probe_reports_native_rate_and_codec(media):
    assert probe(media / "tone.opus").sample_rate == 48000
    info = probe(media / "clip.mp4")
    assert (info.sample_rate, info.codec) == (44100, "aac")


def test_8khz_is_resampled(tmp_path):
    path = tmp_path / "phone.wav"
    sf.write(path, sine(1000, 1.5, 8000), 8000)
    assert probe(path) == AudioInfo(1.5, 8000, 1, True, "pcm_s16le")
    audio = load_audio(path)
    assert len(audio) == int(1.5 * SR)
    assert peak_hz(audio) == pytest.approx(1000, abs=2)


def test_stereo_default_is_mean_and_channel_picks_one(tmp_path):
    x = sine(300, 1.0, 48000, amp=0.4)
    path = tmp_path / "opposite.wav"
    sf.write(path, np.stack([x, -x], axis=1), 48000, subtype="FLOAT")
    assert probe(path).channels == 2
    mixed = load_audio(path)
    assert len(mixed) == SR and np.max(np.abs(mixed)) < 1e-6  # L=+x, R=-x: the mean is silence
    left, right = load_audio(path, channel=0), load_audio(path, channel=1)
    assert np.max(np.abs(left)) == pytest.approx(0.4, rel=0.02)
    np.testing.assert_allclose(right, -left, atol=1e-6)
    with pytest.raises(AudioError, match="channel 2 requested but the audio has 2"):
        load_audio(path, channel=2)


def test_96khz_six_channels_mean_weights_every_channel_equally(tmp_path):
    # ffmpeg's own 5.1 -> mono down-mix drops LFE and weights the centre: not this mean.
    gains = np.array([0.1, 0.2, 0.3, 0.4, -0.5, 0.6], np.float32)
    x = sine(440, 1.0, 96000, amp=1.0)
    path = tmp_path / "surround.wav"
    sf.write(path, x[:, None] * gains[None, :], 96000, subtype="FLOAT")
    info = probe(path)
    assert (info.sample_rate, info.channels) == (96000, 6)
    mixed = load_audio(path)
    expected = sine(440, 1.0, SR, amp=float(gains.mean()))
    np.testing.assert_allclose(mixed[800:-800], expected[800:-800], atol=2e-3)
    np.testing.assert_allclose(load_audio(path, channel=4)[800:-800], -0.5 / gains.mean()
                               * expected[800:-800], atol=2e-3)  # fmt: skip


def test_video_file_uses_its_audio_track(media):
    assert probe(media / "silent_video.mp4").has_audio is False
    with pytest.raises(AudioDecodeError) as info:
        load_audio(media / "silent_video.mp4")
    assert info.value.path == str(media / "silent_video.mp4")
    assert info.value.reason == "no audio stream in the file"


def test_stream_is_windowed(media):
    blocks = list(stream_audio(media / "tone.wav", block_seconds=0.5))
    assert [len(b) for b in blocks] == [8000, 8000, 8000, 8000]
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(media / "tone.wav"))


def test_closing_the_stream_stops_ffmpeg(media):
    psutil = pytest.importorskip("psutil")
    me = psutil.Process()
    before = {p.pid for p in me.children()}
    stream = stream_audio(media / "tone.wav", block_seconds=0.1)
    next(stream)
    assert {p.pid for p in me.children()} - before  # ffmpeg is running
    stream.close()
    assert not ({p.pid for p in me.children()} - before)


def test_standard_input_through_a_real_pipe(media):
    code = (
        "from salmonn.audio.decode import load_audio; a = load_audio('-'); print(len(a), a.dtype)"
    )
    with open(media / "tone.flac", "rb") as stdin:
        done = subprocess.run([sys.executable, "-c", code], stdin=stdin, capture_output=True,
                              text=True, check=True)  # fmt: skip
    assert done.stdout.split() == [str(2 * SR), "float32"]


@pytest.mark.parametrize("how", ["pipe", "file"])
def test_empty_standard_input_is_called_empty(tmp_path, how):
    code = (
        "from salmonn.audio.decode import load_audio\n"
        "try:\n    load_audio('-')\nexcept Exception as err:\n    print(err)"
    )
    if how == "file":
        (tmp_path / "empty").write_bytes(b"")
        with open(tmp_path / "empty", "rb") as stdin:
            done = subprocess.run([sys.executable, "-c", code], stdin=stdin, capture_output=True,
                                  text=True, check=True)  # fmt: skip
    else:
        done = subprocess.run([sys.executable, "-c", code], input="", capture_output=True,
                              text=True, check=True)  # fmt: skip
    assert "empty input" in done.stdout and "seekable" not in done.stdout


def test_standard_input_without_a_descriptor(media, monkeypatch):
    data = (media / "tone.flac").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))  # fileno() is unsupported
    audio = load_audio("-")
    np.testing.assert_array_equal(audio, load_audio(media / "tone.flac"))


def test_standard_input_of_text_only_is_an_audio_error(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("not audio"))  # no .buffer, no bytes
    with pytest.raises(AudioError, match="text stream"):
        load_audio("-")


def test_probe_refuses_stdin():
    with pytest.raises(AudioError, match="standard input cannot be probed"):
        probe("-")


def test_odd_file_names_are_not_options_or_protocols(tmp_path):
    path = tmp_path / "-x:y.wav"
    sf.write(path, sine(440, 0.5, SR), SR)
    assert len(load_audio(path)) == SR // 2
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert len(load_audio("-x:y.wav")) == SR // 2
        assert probe("-x:y.wav").duration == pytest.approx(0.5)
    finally:
        os.chdir(cwd)


def test_layout_names():
    assert [channels_from_layout(n) for n in ["mono", "stereo", "5.1(side)", "7.1", "quad",
            "6 channels", "22.2", "weird"]] == [1, 2, 6, 8, 4, 6, 24, None]  # fmt: skip


# -- bad inputs: a typed error with the path and a one-line cause ------------------------------


def _bad_inputs(d: Path, media: Path) -> dict[str, tuple[Path, type[AudioError], str | None]]:
    (d / "empty.wav").write_bytes(b"")
    (d / "text.wav").write_text("this is not audio\n" * 20)
    ff("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0", str(d / "zero.wav"))
    wav = (media / "tone.wav").read_bytes()
    (d / "truncated.wav").write_bytes(wav[: len(wav) // 2 + 1])  # shorter than its header says
    m4a = (media / "tone.m4a").read_bytes()
    (d / "truncated.m4a").write_bytes(m4a[: len(m4a) // 2])
    (d / "folder.wav").mkdir()
    # the cause is ours to word, or None where ffmpeg words it (each build in its own way)
    return {
        "empty": (d / "empty.wav", AudioDecodeError, "empty file"),
        "text": (d / "text.wav", AudioDecodeError, None),
        "zero-seconds": (d / "zero.wav", AudioDecodeError, "no audio samples"),
        "truncated-wav": (d / "truncated.wav", AudioDecodeError, None),
        "truncated-m4a": (d / "truncated.m4a", AudioDecodeError, None),
        "no-audio": (media / "silent_video.mp4", AudioDecodeError, "no audio stream"),
        "directory": (d / "folder.wav", AudioError, "is a directory"),
        "missing": (d / "missing.mp3", AudioError, "no such file or directory"),
    }


@pytest.fixture(scope="module")
def bad(tmp_path_factory, media):
    return _bad_inputs(tmp_path_factory.mktemp("bad"), media)


@pytest.mark.parametrize("kind", ["empty", "text", "zero-seconds", "truncated-wav", "truncated-m4a",
                                  "no-audio", "directory", "missing"])  # fmt: skip
def test_bad_input_gives_typed_error(bad, kind):
    path, error_type, cause = bad[kind]
    with pytest.raises(error_type) as info:
        load_audio(path)
    reason = info.value.reason
    assert info.value.path == str(path)
    assert reason.strip() and "\n" not in str(info.value)
    assert cause is None or cause in reason
    assert str(info.value) == f"{path}: {reason}"
    assert path.name not in reason and "file:" not in reason  # the path is named once


def test_lenient_mode_decodes_past_corrupt_data_and_warns(media, tmp_path, caplog):
    wav = (media / "tone.wav").read_bytes()
    header = wav.index(b"data") + 8
    path = tmp_path / "odd.wav"
    path.write_bytes(wav[: header + (len(wav) - header) // 4 * 2 + 1])  # half, then half a sample
    with pytest.raises(AudioDecodeError):
        load_audio(path)
    blocks = list(stream_audio(path, strict=False))
    assert 0.9 * SR < sum(map(len, blocks)) < 1.1 * SR  # the half before the cut
    assert "decoding errors" in caplog.text and str(path) in caplog.text


def test_named_pipe_input(media, tmp_path):
    import threading

    fifo = tmp_path / "pipe.flac"
    os.mkfifo(fifo)
    data = (media / "tone.flac").read_bytes()

    def writer() -> None:
        with open(fifo, "wb") as handle:
            handle.write(data)

    thread = threading.Thread(target=writer)
    thread.start()
    audio = load_audio(fifo)
    thread.join()
    np.testing.assert_array_equal(audio, load_audio(media / "tone.flac"))
