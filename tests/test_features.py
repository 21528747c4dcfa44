"""Whisper log-mel and BEATs fbank against independent computations of the same formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from salmonn.audio.features import (
    beats_fbank,
    beats_n_frames,
    beats_n_tokens,
    whisper_log_mel,
    whisper_mel_filters,
)
from salmonn.errors import ConfigError

SR = 16_000


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    t = np.arange(int(SR * 7.3)) / SR
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)  # syllable-rate modulation
    speechy = envelope * np.convolve(rng.standard_normal(len(t)), np.ones(8) / 8, mode="same")
    return {
        "speech_like_noise": (0.3 * speechy).astype(np.float32),
        "sine": (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(SR * 4) / SR)).astype(np.float32),
        "silence": np.zeros(SR * 2, dtype=np.float32),
        "longer_than_30s": (0.05 * rng.standard_normal(SR * 31)).astype(np.float32),
    }


# ---------------------------------------------------------------------------------- Whisper log-mel


def _reference_log_mel_428(wave: np.ndarray) -> np.ndarray:
    """The transformers 4.28 numpy algorithm, frame by frame (code independent of salmonn's)."""
    n_fft, hop, n_samples = 400, 160, 480_000
    x = np.zeros(n_samples, dtype=np.float32)
    x[: min(len(wave), n_samples)] = wave[:n_samples]
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * i / n_fft) for i in range(n_fft)])
    half = n_fft // 2
    columns = []
    for centre in range(0, n_samples + 1, hop):
        lo, hi = centre - half, centre + half
        if lo < 0:
            frame = np.pad(x[0:hi], (-lo, 0), mode="reflect")
        elif hi > n_samples:
            frame = np.pad(x[lo:n_samples], (0, hi - n_samples), mode="reflect")
        else:
            frame = x[lo:hi]
        buf = np.empty(n_fft, dtype=np.float64)
        np.multiply(frame, window, out=buf)
        columns.append(np.fft.fft(buf)[: n_fft // 2 + 1].astype(np.complex64))
    stft = np.stack(columns, axis=1)  # (201, 3001)
    power = np.abs(stft[:, :-1]) ** 2
    # librosa-style Slaney filters, band by band
    mel_max = 15.0 + math.log(8000.0 / 1000.0) / (math.log(6.4) / 27.0)
    mels = np.linspace(0.0, mel_max, 82)
    hz = np.where(
        mels < 15.0, mels * 200.0 / 3, 1000.0 * np.exp(math.log(6.4) / 27.0 * (mels - 15.0))
    )
    fft_hz = np.arange(201) * (SR / n_fft)
    filters = np.zeros((80, 201), dtype=np.float32)
    for m in range(80):
        rising = (fft_hz - hz[m]) / (hz[m + 1] - hz[m])
        falling = (hz[m + 2] - fft_hz) / (hz[m + 2] - hz[m + 1])
        filters[m] = np.maximum(0.0, np.minimum(rising, falling))
        filters[m] *= 2.0 / (hz[m + 2] - hz[m])
    log_spec = np.log10(np.clip(filters @ power, 1e-10, None))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def test_whisper_log_mel_shapes_and_padding():
    sig = _signals()
    feats = whisper_log_mel([sig["sine"], sig["longer_than_30s"], sig["silence"]])
    assert feats.shape == (3, 80, 3000) and feats.dtype == torch.float32
    # silence: every mel is at the 1e-10 floor -> (log10(1e-10) + 4) / 4 = -1.5, up to float32
    # rounding of 1e-10 and of log10 (the last bit differs between CPUs' vector math)
    assert torch.allclose(feats[2], torch.full_like(feats[2], -1.5), rtol=0, atol=1e-6)
    # beyond 30 s is ignored; zero padding to 30 s equals explicit zeros
    cut = sig["longer_than_30s"][:480_000]
    # (batch of 1 against batch of 3: vectorised kernels may round the last bit differently)
    torch.testing.assert_close(whisper_log_mel([cut])[0], feats[1], rtol=0, atol=1e-5)
    short = sig["sine"][:SR]
    assert torch.equal(whisper_log_mel([short])[0], whisper_log_mel([np.pad(short, (0, SR))])[0])


def test_whisper_log_mel_float64_input_is_cast_to_float32_first():
    wave64 = 0.1 * np.random.default_rng(5).standard_normal(
        3 * SR
    )  # float64 with more bits than f32
    wave = wave64.astype(np.float32)
    assert torch.equal(whisper_log_mel([wave64])[0], whisper_log_mel([wave])[0])
    assert torch.equal(whisper_log_mel([torch.from_numpy(wave)])[0], whisper_log_mel([wave])[0])


def test_whisper_mel_filters_match_the_428_construction():
    filters = whisper_mel_filters()
    assert filters.shape == (80, 201) and filters.dtype == np.float32
    # 4.28 hard-codes the top of the mel range as this literal: our derived value must equal it
    from salmonn.audio.features import _hz_to_slaney_mel

    assert _hz_to_slaney_mel(8000.0) == 45.245640471924965
    assert (filters > 0).sum(axis=1).min() >= 1  # no empty band


@pytest.mark.parametrize("name", ["speech_like_noise", "sine", "silence", "longer_than_30s"])
def test_whisper_log_mel_equals_framewise_428_reference(name):
    wave = _signals()[name]
    ours = whisper_log_mel([wave])[0].numpy()
    ref = _reference_log_mel_428(wave)
    assert np.abs(ours - ref).max() <= 1e-6


def test_whisper_log_mel_close_to_transformers_extractor():
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=80)
    worst = 0.0
    for wave in _signals().values():
        ours = whisper_log_mel([wave])[0].numpy()
        theirs = extractor(wave, sampling_rate=SR, return_tensors="np").input_features[0]
        worst = max(worst, float(np.abs(ours - theirs).max()))
    # transformers >= 4.3x uses a float32 torch STFT; 4.28's numpy path differs at the ~1e-5 level
    assert worst <= 1e-4, f"max |diff| vs transformers = {worst:.3g}"


def test_whisper_log_mel_rejects_bad_input():
    with pytest.raises(ConfigError):
        whisper_log_mel([])
    with pytest.raises(ConfigError):
        whisper_log_mel([np.zeros((2, 100), dtype=np.float32)])


# --------------------------------------------------------------------------------------- BEATs fban


def _reference_kaldi_fbank(wave: np.ndarray) -> np.ndarray:
    """Kaldi fbank as BEATs calls it, float64 throughout, frame by frame (banks in float64 too)."""
    x = np.asarray(wave, dtype=np.float64) * 32768.0
    frame_len, shift, n_fft, n_mels = 400, 160, 512, 128
    n_frames = 1 + (len(x) - frame_len) // shift
    povey = np.array(
        [
            (0.5 - 0.5 * math.cos(2 * math.pi * i / (frame_len - 1))) ** 0.85
            for i in range(frame_len)
        ]
    )

    def mel(f: float) -> float:
        return 1127.0 * math.log(1.0 + f / 700.0)

    lo, hi = mel(20.0), mel(8000.0)
    delta = (hi - lo) / (n_mels + 1)
    banks = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        for k in range(n_fft // 2):
            mk = mel(k * SR / n_fft)
            banks[m, k] = max(
                0.0, min((mk - left) / (centre - left), (right - mk) / (right - centre))
            )
    out = np.empty((n_frames, n_mels))
    for t in range(n_frames):
        frame = x[t * shift : t * shift + frame_len].copy()
        frame -= frame.sum() / frame_len
        emphasised = frame.copy()
        emphasised[1:] = frame[1:] - 0.97 * frame[:-1]
        emphasised[0] = frame[0] - 0.97 * frame[0]
        buf = np.zeros(n_fft)
        buf[:frame_len] = emphasised * povey
        spectrum = np.fft.rfft(buf)
        power = spectrum.real**2 + spectrum.imag**2
        out[t] = np.log(np.maximum(banks @ power, np.finfo(np.float32).eps))
    return (out - 15.41663) / (2 * 6.55582)


def test_beats_fbank_matches_independent_float64_computation():
    rng = np.random.default_rng(7)
    t = np.arange(int(SR * 1.37)) / SR
    wave = 0.3 * np.sin(2 * np.pi * 300 * t) + 0.05 * rng.standard_normal(len(t))
    wave[5000:6000] = 0.0  # a silent stretch: exercises the epsilon floor
    (ours,) = beats_fbank([wave])
    ref = _reference_kaldi_fbank(wave)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape == (
        beats_n_frames(len(wave)),
        128,
    )
    assert np.abs(ours.numpy().astype(np.float64) - ref).max() < 2e-5


def test_beats_fbank_lengths_and_token_counts():
    assert beats_n_frames(SR) == 98 and beats_n_tokens(SR) == 48
    assert beats_n_frames(30 * SR) == 2998 and beats_n_tokens(30 * SR) == 1496
    assert beats_n_tokens(10 * SR) == 496
    assert beats_n_frames(399) == 0 and beats_n_frames(400) == 1 and beats_n_frames(559) == 1
    waves = [np.zeros(SR), np.full(30 * SR, 0.01), np.ones(400) * 0.1]
    assert [f.shape for f in beats_fbank(waves)] == [(98, 128), (2998, 128), (1, 128)]


def test_beats_fbank_keeps_float64_precision_of_the_wave():
    rng = np.random.default_rng(3)
    wave64 = 0.1 * rng.standard_normal(SR)
    from_numpy = beats_fbank([wave64])[0]
    from_tensor = beats_fbank([torch.from_numpy(wave64)])[0]
    assert torch.equal(from_numpy, from_tensor)
    # a float32 tensor is widened, not computed in float32
    wave32 = torch.from_numpy(wave64.astype(np.float32))
    assert torch.equal(beats_fbank([wave32])[0], beats_fbank([wave32.double()])[0])


def test_beats_fbank_rejects_too_short_or_multichannel():
    with pytest.raises(ConfigError):
        beats_fbank([np.zeros(399)])
    with pytest.raises(ConfigError):
        beats_fbank([np.zeros((2, SR))])
