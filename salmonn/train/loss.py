"""``training_loss``: the teacher-forced cross-entropy of one batch, as the original computes it.

Each example becomes ``[BOS] p_before audio p_after target``, the prompt wrapped as
``USER: ...\\nASSISTANT:`` and the target ``text + </s>`` cut to ``max_text_tokens`` (after ``</s>``
is appended, as the original cuts it). Labels cover the target alone; the loss is the mean over
every target token of the batch. The frozen encoders run without gradients and in inference mode
whatever the module's mode; the Q-Former, projector, LayerNorms and LoRA run in the module's mode
(dropout in ``model.train()``).

The default mode makes each example's loss independent of its batch mates: every clip is encoded as
it is alone, rows are right-padded at their end only, and positions come from the mask. ``exact``
reproduces the original's batch instead (:mod:`salmonn.train.exact`). The last hidden states are
projected to the vocabulary only at target positions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import MIN_SAMPLES, WINDOW_SAMPLES
from ..model.qformer import split_windows
from .examples import TrainExample, load_wave

IGNORE = -100


@dataclass
class BatchLoss:
    """Summed token cross-entropy of a batch (with its graph), its token count and how many target
    tokens the argmax predicted."""

    total: torch.Tensor
    tokens: int
    correct: int


def prepare_wave(wave: np.ndarray) -> np.ndarray:
    """float64 samples cut to the first 30 s and zero-padded to 1 s, as the original's dataset."""
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)[:WINDOW_SAMPLES]
    if wave.size < MIN_SAMPLES:
        wave = np.concatenate([wave, np.zeros(MIN_SAMPLES - wave.size)])
    return wave


@contextlib.contextmanager
def _inference_mode_of(*modules: torch.nn.Module) -> Iterator[None]:
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


def _encoder_outputs(
    model: Any, waves: list[np.ndarray], exact: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Whisper ``[B, 1500, Dw]`` and BEATs (one ``[N_i, Db]`` per clip), no gradients."""
    from ..audio.features import whisper_log_mel

    encoders = (model.speech_encoder, model.beats)
    with torch.no_grad(), _inference_mode_of(*encoders), model.encoder_attention(exact):
        mel = whisper_log_mel([w.astype(np.float32) for w in waves]).to(model.device)
        whisper = model.speech_encoder(mel).last_hidden_state
        if exact:
            from .exact import padded_beats

            beats = list(padded_beats(model.beats, waves))
        else:
            beats = model.beats.extract_features(
                [torch.from_numpy(w).to(model.device) for w in waves]
            )
    return whisper, beats


def _cached_outputs(
    model: Any, examples: Sequence[TrainExample], waves: list[np.ndarray], cache: MutableMapping
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Like :func:`_encoder_outputs` (default mode), keeping each path's outputs in ``cache``."""
    keys = [e.audio if isinstance(e.audio, str) else None for e in examples]
    todo = [i for i, key in enumerate(keys) if key is None or key not in cache]
    fresh = {}
    if todo:
        whisper, beats = _encoder_outputs(model, [waves[i] for i in todo], exact=False)
        fresh = {i: (whisper[j], beats[j]) for j, i in enumerate(todo)}
        cache.update((keys[i], fresh[i]) for i in todo if keys[i] is not None)
    outputs = [fresh[i] if i in fresh else cache[key] for i, key in enumerate(keys)]
    return torch.stack([w for w, _ in outputs]), [b for _, b in outputs]


def audio_embeddings(model: Any, whisper: torch.Tensor, beats: list[torch.Tensor]) -> torch.Tensor:
    """The trainable part of the audio path: LayerNorms, windows, Q-Former, projector.

    Returns ``[B, windows, d_llm]``; BEATs rows are zero-padded to Whisper's frames after
    ``ln_audio`` (see docs/original-model.md, "BEATs encoder").
    """
    speech = model.ln_speech(whisper)
    frames = speech.shape[1]
    rows = []
    for item in beats:
        normed = model.ln_audio(item)[:frames]
        rows.append(
            torch.cat([normed, normed.new_zeros(frames - normed.shape[0], normed.shape[1])])
        )
    fused = torch.cat([speech, torch.stack(rows)], dim=-1)
    windows = split_windows(fused)
    query = model.speech_query_tokens.expand(windows.shape[0], -1, -1)
    projected = model.speech_llama_proj(model.speech_Qformer(query, windows))
    return projected.reshape(whisper.shape[0], -1, projected.shape[-1])


def _pieces(
    model: Any, examples: Sequence[TrainExample], max_text_tokens: int
) -> list[tuple[list[int], list[int], list[int]]]:
    tokenizer = model.tokenizer
    out = []
    for example in examples:
        before, after = model.prompt_ids(example.prompt)
        target = [*tokenizer.encode(example.target), tokenizer.eos_id][:max_text_tokens]
        out.append((before, after, target))
    return out


def _default_rows(
    model: Any, audio: torch.Tensor, pieces: list[tuple[list[int], list[int], list[int]]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One unpadded row per example, right-padded at its end (zeros, mask 0), positions 0.."""
    device = audio.device
    rows, labels = [], []
    for b, (before, after, target) in enumerate(pieces):
        head = model.embed_tokens(torch.tensor([model.tokenizer.bos_id, *before], device=device))
        tail = model.embed_tokens(torch.tensor([*after, *target], device=device))
        rows.append(torch.cat([head, audio[b].to(head.dtype), tail]))
        labels.append([IGNORE] * (len(rows[-1]) - len(target)) + target)
    length = max(len(r) for r in rows)
    embeds = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
    label_t = torch.full((len(rows), length), IGNORE, dtype=torch.long, device=device)
    for b, row in enumerate(rows):
        embeds[b, : len(row)] = row
        mask[b, : len(row)] = 1
        label_t[b, : len(row)] = torch.tensor(labels[b], device=device)
    positions = torch.arange(length, device=device).expand(len(rows), -1)
    return embeds, mask, positions, label_t


def batch_loss(
    model: Any,
    examples: Sequence[TrainExample],
    *,
    max_text_tokens: int = 300,
    exact: bool = False,
    encoder_cache: MutableMapping | None = None,
) -> BatchLoss:
    """The summed target-token cross-entropy of a batch (see :func:`training_loss`).

    ``encoder_cache`` (default mode only): a dict that keeps each audio path's encoder outputs, so
    that later epochs skip Whisper and BEATs.
    """
    if not examples:
        raise ValueError("an empty batch")
    if max_text_tokens < 1:
        raise ValueError(f"max_text_tokens must be >= 1, got {max_text_tokens}")
    waves = [prepare_wave(load_wave(e.audio)) for e in examples]
    pieces = _pieces(model, examples, max_text_tokens)
    with model.precision():
        if encoder_cache is not None and not exact:
            whisper, beats = _cached_outputs(model, examples, waves, encoder_cache)
        else:
            whisper, beats = _encoder_outputs(model, waves, exact)
        audio = audio_embeddings(model, whisper, beats)
        if exact:
            from .exact import exact_rows

            tok = model.tokenizer
            rows = exact_rows(model.embed_tokens, audio, pieces, tok.bos_id, tok.pad_id)
        else:
            rows = _default_rows(model, audio, pieces)
        embeds, mask, positions, labels = rows
        lm = model.llama_model.get_base_model()
        hidden = lm.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
        ).last_hidden_state
        wanted = labels[:, 1:] != IGNORE
        targets = labels[:, 1:][wanted]
        logits = lm.lm_head(hidden[:, :-1][wanted]).float()
    total = F.cross_entropy(logits, targets, reduction="sum")
    correct = int((logits.detach().argmax(-1) == targets).sum())
    return BatchLoss(total, int(targets.numel()), correct)


def training_loss(
    model: Any,
    examples: Sequence[TrainExample],
    *,
    max_text_tokens: int = 300,
    exact: bool = False,
) -> torch.Tensor:
    """The scalar loss of one batch: the mean cross-entropy over all target tokens of the batch.

    Args:
        model: a :class:`~salmonn.SalmonnModel` (``model.train()`` turns on the Q-Former and LoRA
            dropout; the encoders always run as in inference).
        examples: :class:`~salmonn.TrainExample` items; audio over 30 s is cut to its first 30 s.
        max_text_tokens: target tokens kept per example, ``</s>`` included.
        exact: the original's batched arithmetic, quirks included (docs/original-model.md,
            "Training"); by default each example's loss is independent of its batch mates.
    """
    loss = batch_loss(model, examples, max_text_tokens=max_text_tokens, exact=exact)
    return loss.total / loss.tokens
