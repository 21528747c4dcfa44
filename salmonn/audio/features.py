"""Audio front ends of the two encoders, numerically faithful to the original SALMONN.

* :func:`whisper_log_mel` re-implements the transformers 4.28 ``WhisperFeatureExtractor``
  (docs/original-model.md, "Audio front end"): numpy, float64 framing and FFT rounded to complex64, librosa-style Slaney mel filters,
  ``log10`` with the "max - 8" floor. Later transformers versions agree with it only to about 1e-5.
* :func:`beats_fbank` re-implements torchaudio 2.0.2 ``compliance.kaldi.fbank`` as BEATs calls it
  (docs/original-model.md, "BEATs encoder"), in float64 on the waveform scaled to the 16-bit range, then normalised and cast to
  float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import overload

import numpy as np
import torch

from ..constants import (
    BEATS_FBANK_MEAN,
    BEATS_FBANK_STD,
    BEATS_FFT_SIZE,
    BEATS_FRAME_LENGTH,
    BEATS_FRAME_SHIFT,
    BEATS_MEL_BINS,
    BEATS_PATCH,
    SAMPLE_RATE,
    WHISPER_HOP,
    WHISPER_MEL_FRAMES,
    WHISPER_N_FFT,
    WHISPER_N_MELS,
    WINDOW_SAMPLES,
)
from ..errors import ConfigError

__all__ = [
    "beats_fbank",
    "beats_n_frames",
    "beats_n_tokens",
    "whisper_log_mel",
    "whisper_mel_filters",
]

# --------------------------------------------------------------------------------------------------
# Whisper (transformers 4.28 numpy algorithm)
# --------------------------------------------------------------------------------------------------

_WHISPER_FMAX = 8000.0  # Hz, top of the mel filterbank (= Nyquist at 16 kHz)
_LOG_FLOOR = 1e-10  # mel energies are clipped here before log10
_DYNAMIC_RANGE = 8.0  # log10 units kept below each example's maximum

# Slaney mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above.
_SLANEY_F_SP = 200.0 / 3  # Hz per mel in the linear part
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP  # 15 mel
_SLANEY_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_slaney_mel(hz: float) -> float:
    if hz < _SLANEY_MIN_LOG_HZ:
        return hz / _SLANEY_F_SP
    return _SLANEY_MIN_LOG_MEL + math.log(hz / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP


def _slaney_mel_to_hz(mels: np.ndarray) -> np.ndarray:
    freqs = _SLANEY_F_SP * mels
    log_part = mels >= _SLANEY_MIN_LOG_MEL
    freqs[log_part] = _SLANEY_MIN_LOG_HZ * np.exp(
        _SLANEY_LOGSTEP * (mels[log_part] - _SLANEY_MIN_LOG_MEL)
    )
    return freqs


@lru_cache(maxsize=4)
def whisper_mel_filters(n_mels: int = WHISPER_N_MELS) -> np.ndarray:
    """Slaney mel filterbank of the 4.28 extractor (= librosa ``mel(16000, 400, htk=False)``).

    The triangles are computed in float64 and stored in a float32 array; the Slaney area
    normalisation is then applied in place (a float64 product stored as float32 again), exactly as
    librosa does.

    Returns:
        ``[n_mels, 201]`` float32 (read-only; shared between calls).
    """
    fft_freqs = np.fft.rfftfreq(n=WHISPER_N_FFT, d=1.0 / SAMPLE_RATE)  # (201,) Hz
    mels = np.linspace(0.0, _hz_to_slaney_mel(_WHISPER_FMAX), n_mels + 2)
    mel_f = _slaney_mel_to_hz(mels)  # (n_mels + 2,) band edges in Hz
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)  # (n_mels + 2, 201)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper)).astype(np.float32)
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, None]  # float64 product, stored float32 (in place, as librosa)
    weights.flags.writeable = False
    return weights


@lru_cache(maxsize=1)
def _periodic_hann() -> np.ndarray:
    # numpy's hanning(N + 1) without its last point == the periodic Hann window, float64.
    return np.hanning(WHISPER_N_FFT + 1)[:-1]


def _as_float32_wave(wave: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to("cpu").numpy()
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ConfigError(f"expected a 1-D mono waveform, got shape {tuple(wave.shape)}")
    return wave.astype(np.float32, copy=False)


def _one_log_mel(wave: np.ndarray) -> np.ndarray:
    """``(n,)`` float32 -> ``[80, 3000]`` float32 log-mel of the first 30 s (zero-padded)."""
    padded = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    n = min(len(wave), WINDOW_SAMPLES)
    padded[:n] = wave[:n]
    half = WHISPER_N_FFT // 2
    # Centred frames with reflect padding (== torch.stft(center=True, pad_mode="reflect")). The 4.28
    # code's iterated reflection differs only in sample 0 of frame 0, which the window zeroes.
    signal = np.pad(padded, half, mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(signal, WHISPER_N_FFT)
    frames = windows[::WHISPER_HOP]  # (3001, 400) float32 views
    windowed = frames * _periodic_hann()  # float64
    n_bins = WHISPER_N_FFT // 2 + 1
    spectrum = np.fft.fft(windowed, axis=1)[:, :n_bins].astype(np.complex64)  # (3001, 201)
    power = np.abs(spectrum[:-1]).T ** 2  # (201, 3000) float32; the last frame is dropped
    mel = whisper_mel_filters() @ power  # (80, 3000) float32
    log_spec = np.log10(np.maximum(mel, np.float32(_LOG_FLOOR)))
    log_spec = np.maximum(log_spec, log_spec.max() - np.float32(_DYNAMIC_RANGE))
    return (log_spec + np.float32(4.0)) / np.float32(4.0)


def whisper_log_mel(waves: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
    """Whisper log-mel features of 16 kHz mono waveforms, each padded or cut to 30 s.

    Args:
        waves: B waveforms, 1-D float arrays (float64 input is cast to float32 first, as 4.28 does).

    Returns:
        ``[B, 80, 3000]`` float32 CPU tensor.
    """
    if len(waves) == 0:
        raise ConfigError("whisper_log_mel needs at least one waveform")
    feats = np.stack([_one_log_mel(_as_float32_wave(w)) for w in waves])
    assert feats.shape[1:] == (WHISPER_N_MELS, WHISPER_MEL_FRAMES)
    return torch.from_numpy(feats)


# --------------------------------------------------------------------------------------------------
# BEATs (torchaudio 2.0.2 Kaldi fbank, float64)
# --------------------------------------------------------------------------------------------------

_INT16_SCALE = 2**15  # BEATs scales [-1, 1) waves to the 16-bit integer range
_PREEMPHASIS = 0.97
_POVEY_POWER = 0.85
_KALDI_LOW_HZ = 20.0
_FLOAT32_EPS = torch.finfo(torch.float32).eps  # log floor, also for float64 input


def beats_n_frames(n_samples: int) -> int:
    """Fbank frames of a wave of ``n_samples`` (snip_edges: partial frames are dropped)."""
    if n_samples < BEATS_FRAME_LENGTH:
        return 0
    return 1 + (n_samples - BEATS_FRAME_LENGTH) // BEATS_FRAME_SHIFT


def beats_n_tokens(n_samples: int) -> int:
    """BEATs output vectors of a wave of ``n_samples`` (1 s -> 48, 30 s -> 1496).

    One vector per 16x16 fbank patch, time-major: 8 frequency patches per 16 frames.
    """
    return (beats_n_frames(n_samples) // BEATS_PATCH) * (BEATS_MEL_BINS // BEATS_PATCH)


@overload
def _kaldi_mel(hz: torch.Tensor) -> torch.Tensor: ...
@overload
def _kaldi_mel(hz: float) -> float: ...


def _kaldi_mel(hz: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(hz, torch.Tensor):
        return 1127.0 * (1.0 + hz / 700.0).log()
    return 1127.0 * math.log(1.0 + hz / 700.0)


@lru_cache(maxsize=1)
def _kaldi_mel_banks() -> torch.Tensor:
    """``[128, 257]`` float32 triangular Kaldi mel banks (20 Hz .. Nyquist), last column zero.

    Built in float32 with torchaudio 2.0.2's operation order; the caller casts them to the wave
    dtype.
    """
    n_fft_bins = BEATS_FFT_SIZE // 2  # 256
    bin_width = SAMPLE_RATE / BEATS_FFT_SIZE  # Hz
    mel_low = _kaldi_mel(_KALDI_LOW_HZ)
    mel_high = _kaldi_mel(SAMPLE_RATE / 2)
    mel_delta = (mel_high - mel_low) / (BEATS_MEL_BINS + 1)
    band = torch.arange(BEATS_MEL_BINS).unsqueeze(1)  # (128, 1) int64
    left = mel_low + band * mel_delta  # float32
    center = mel_low + (band + 1.0) * mel_delta
    right = mel_low + (band + 2.0) * mel_delta
    mel = _kaldi_mel(bin_width * torch.arange(float(n_fft_bins))).unsqueeze(0)  # (1, 256) float32
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(up, down))  # (128, 256)
    return torch.nn.functional.pad(banks, (0, 1))  # (128, 257)


def _one_kaldi_fbank(wave: torch.Tensor) -> torch.Tensor:
    """``(n,)`` float64 wave in the int16 range -> ``[T, 128]`` float64 log mel energies."""
    frames = wave.unfold(0, BEATS_FRAME_LENGTH, BEATS_FRAME_SHIFT)  # (T, 400), snip_edges
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove DC per frame
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # replicate the first sample
    frames = frames - _PREEMPHASIS * previous
    povey = torch.hann_window(
        BEATS_FRAME_LENGTH, periodic=False, dtype=wave.dtype, device=wave.device
    ).pow(_POVEY_POWER)
    frames = frames * povey.unsqueeze(0)
    frames = torch.nn.functional.pad(frames, (0, BEATS_FFT_SIZE - BEATS_FRAME_LENGTH))  # (T, 512)
    power = torch.fft.rfft(frames).abs().pow(2.0)  # (T, 257)
    banks = _kaldi_mel_banks().to(device=wave.device, dtype=wave.dtype)
    energies = torch.mm(power, banks.T)  # (T, 128)
    floor = torch.tensor(_FLOAT32_EPS, device=wave.device, dtype=wave.dtype)
    return torch.max(energies, floor).log()


def beats_fbank(
    waves: Sequence[np.ndarray | torch.Tensor], device: torch.device | str | None = None
) -> list[torch.Tensor]:
    """Normalised BEATs input features, one per waveform (no padding between items).

    Each wave is taken in float64 (as the reference keeps it), scaled by 2^15, passed through the
    Kaldi fbank in float64, normalised with BEATs' mean/std and cast to float32.

    Args:
        waves: B 1-D 16 kHz waveforms of at least 400 samples.
        device: where to compute (default: each tensor's own device, CPU for numpy arrays).

    Returns:
        list of B float32 tensors ``[T_i, 128]``, ``T_i = 1 + (n_i - 400) // 160``.
    """
    out = []
    for wave in waves:
        w = torch.as_tensor(wave)
        if device is not None:
            w = w.to(device)
        w = w.to(torch.float64)
        if w.ndim != 1:
            raise ConfigError(f"expected a 1-D mono waveform, got shape {tuple(w.shape)}")
        if w.numel() < BEATS_FRAME_LENGTH:
            raise ConfigError(
                f"BEATs needs at least {BEATS_FRAME_LENGTH} samples (25 ms), got {w.numel()}"
            )
        fbank = _one_kaldi_fbank(w * _INT16_SCALE)
        fbank = (fbank - BEATS_FBANK_MEAN) / (2 * BEATS_FBANK_STD)
        out.append(fbank.to(torch.float32))
    return out
