"""What the model takes and gives, apart from the model: clips, work items, answers, encoder stages.

:class:`WorkItem` is one unit of continuous batching (a clip or a text prompt with its key),
:class:`GenerationResult` one answer, :class:`AudioStages` the intermediate tensors of the audio
path (for fidelity checks). :func:`prepare_wave` checks and pads one clip as the front end needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..constants import MIN_SAMPLES, SAMPLE_RATE, WINDOW_SAMPLES, WINDOW_SECONDS
from ..errors import ConfigError

Wave = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class GenerationResult:
    """One answer.

    ``token_ids``: generated ids after the dummy BOS, ending with EOS when one was produced;
    ``text``: those ids up to the first EOS, special tokens skipped (see docs/original-model.md, "Tokenizer").
    """

    text: str
    token_ids: list[int]


TokenCallback = Callable[[list[int]], None]
"""Receives an item's generated ids so far (see :attr:`WorkItem.on_tokens`)."""


@dataclass(frozen=True)
class WorkItem:
    """One unit of work for :meth:`SalmonnModel.generate_stream` and :class:`GenerationStream`.

    ``key``: anything hashable that identifies the item in the results; ``prompt``: the user text;
    ``wave``: a 16 kHz mono clip of at most 30 s, or ``None`` for a text-only prompt (like
    :meth:`SalmonnModel.generate_text`).

    ``on_tokens``: with one beam (greedy or sampling) in the fast mode, called after every decoding
    step of the item with its ids so far (a new list each time, one id longer than the last); the
    last call, in the step where the item finishes, gets exactly its result's ``token_ids``. Never
    called with beam search (the best hypothesis is known only at the end) nor in exact mode (one
    item runs from start to end at once). It runs in the thread that calls ``step``, so it should
    be quick; if it raises, the error is logged and the item is no longer reported (decoding goes
    on).
    """

    key: Hashable
    prompt: str
    wave: Any = None
    on_tokens: TokenCallback | None = None


@dataclass
class AudioStages:
    """Intermediate tensors of :meth:`SalmonnModel.encode_audio_stages` (to compare with the original code's).

    Shapes for B clips, official sizes: ``mel`` [B, 80, 3000]; ``whisper`` [B, 1500, 1280] (encoder
    output, before ln_speech); ``beats`` list of [N_i, 768] (before ln_audio); ``speech``
    [B, 1500, 1280] (after ln_speech); ``audio`` [B, 1500, 768] (after ln_audio, zero rows from N_i
    on); ``fused`` [B, 1500, 2048]; ``windows`` [B*88, 17, 2048]; ``qformer`` [B*88, 1, 768];
    ``projected`` [B, 88, d_llm].
    """

    mel: torch.Tensor | None = None
    whisper: torch.Tensor | None = None
    beats: list[torch.Tensor] = field(default_factory=list)
    speech: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    fused: torch.Tensor | None = None
    windows: torch.Tensor | None = None
    qformer: torch.Tensor | None = None
    projected: torch.Tensor | None = None


def as_list(values: Any, count: int, what: str) -> list[Any]:
    if isinstance(values, str):
        return [values] * count
    values = list(values)
    if len(values) == 1 and count > 1:
        return values * count
    if len(values) != count:
        raise ConfigError(
            f"got {len(values)} {what} for {count} audio clips; give one or one per clip"
        )
    return values


def prepare_wave(wave: Wave, index: int) -> np.ndarray:
    """One clip as a float64 1-D array, zero-padded to 1 s (see docs/original-model.md, "Audio front end"); over 30 s is an error."""
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(wave, dtype=np.float64)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ConfigError(
            f"clip {index}: expected mono samples [n], got shape {tuple(array.shape)}"
        )
    if array.size == 0:
        raise ConfigError(f"clip {index}: no samples")
    if array.size > WINDOW_SAMPLES:
        raise ConfigError(
            f"clip {index} is {array.size / SAMPLE_RATE:.2f} s long; the model takes at most "
            f"{WINDOW_SECONDS} s at {SAMPLE_RATE} Hz: cut it into chunks first "
            "(salmonn.iter_chunks)"
        )
    if array.size < MIN_SAMPLES:
        array = np.concatenate([array, np.zeros(MIN_SAMPLES - array.size, dtype=np.float64)])
    return array
