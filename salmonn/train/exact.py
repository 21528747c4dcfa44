"""The original trainer's batched arithmetic, quirks included (``training_loss(..., exact=True)``).

Two things of the original's batches make an example's loss depend on its batch mates, and both are
reproduced here on purpose:

* BEATs sees the waveforms zero-padded to the batch's longest with a sample-level padding mask, which
  BEATs reduces to fbank frames and then to patches by "drop the remainder, reshape, all()"; the
  masked patches are zeroed before the positional convolution and masked as attention keys
  (:func:`padded_beats`);
* the text after the audio is right-padded with ``[PAD]`` in the middle of the sequence (attention 0),
  the target is right-padded after it, and the position ids run ``0..L-1`` whatever the padding
  (:func:`exact_rows`).

See docs/original-model.md, "Training".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from ..audio.features import beats_fbank
from ..errors import ConfigError
from ..model.encoders.beats import _SCORE_SCALE, Beats, BeatsAttention, BeatsLayer


def reduce_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    """BEATs' padding-mask reduction: ``[B, n] -> [B, length]``, the remainder dropped, each group
    padding only when all of it is."""
    extra = mask.shape[1] % length
    if extra:
        mask = mask[:, :-extra]
    return mask.reshape(mask.shape[0], length, -1).all(-1)


def _attention(attn: BeatsAttention, x: torch.Tensor, bias: torch.Tensor | None, pad: torch.Tensor):
    """``BeatsAttention``'s reference steps with padded keys set to -inf before the position bias."""
    bsz, n, dim = x.shape
    heads, hd = attn.num_heads, attn.head_dim
    q = attn.q_proj(x) * attn.scaling * (1 / _SCORE_SCALE)
    k, v = attn.k_proj(x), attn.v_proj(x)
    q = q.view(bsz, n, heads, hd).transpose(1, 2)  # (B, H, N, d)
    k = k.view(bsz, n, heads, hd).transpose(1, 2)
    v = v.view(bsz, n, heads, hd).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2))
    scores = (scores - scores.max(dim=-1, keepdim=True)[0]) * _SCORE_SCALE
    scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    if bias is not None:
        bias = bias.unsqueeze(0)
        if attn.gru_rel_pos:
            bias = attn._gate(q * _SCORE_SCALE / attn.scaling) * bias
        scores = scores + bias
    out = torch.matmul(F.softmax(scores, dim=-1).type_as(scores), v)
    return attn.out_proj(out.transpose(1, 2).reshape(bsz, n, dim))


def padded_beats(beats: Beats, waves: Sequence[np.ndarray]) -> torch.Tensor:
    """BEATs features of a batch as the original's collater and BEATs compute them.

    Args:
        waves: float64 clips of any lengths; they are zero-padded to the longest.
    Returns:
        ``[B, N, D]`` for the longest clip's N (a shorter clip's later rows are features of its
        padding, not zeros).
    """
    longest = max(w.size for w in waves)
    padded = np.zeros((len(waves), longest), dtype=np.float64)
    mask = torch.ones(len(waves), longest, dtype=torch.bool)
    for i, wave in enumerate(waves):
        padded[i, : wave.size] = wave
        mask[i, : wave.size] = False
    device = beats.patch_embedding.weight.device
    fbank = torch.stack(beats_fbank(list(padded), device=device))  # [B, T, 128]
    mask = reduce_mask(mask, fbank.shape[1])
    x = beats.patch_embedding(fbank.unsqueeze(1))
    x = beats.layer_norm(x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2))  # [B, N, E]
    pad = reduce_mask(mask, x.shape[1]).to(device)
    if beats.post_extract_proj is not None:
        x = beats.post_extract_proj(x)
    encoder = beats.encoder
    x = x.masked_fill(pad[..., None], 0.0)
    conv = encoder.pos_conv[0](x.transpose(1, 2))[:, :, :-1]
    x = encoder.layer_norm(x + F.gelu(conv).transpose(1, 2))
    bias = encoder.position_bias(x.shape[1])
    for layer in cast(Iterable[BeatsLayer], encoder.layers):
        x = layer.self_attn_layer_norm(x * layer.alpha + _attention(layer.self_attn, x, bias, pad))
        hidden = layer.fc1(x)
        hidden = F.gelu(hidden.float()).type_as(hidden)
        x = layer.final_layer_norm(x * layer.alpha + layer.fc2(hidden))
    return x


def exact_rows(
    embed: torch.nn.Module,
    audio: torch.Tensor,
    pieces: Sequence[tuple[list[int], list[int], list[int]]],
    bos_id: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The original's batch: ``[BOS] p_before audio p_after+[PAD].. target+[PAD]..``.

    Args:
        embed: the LLM's input embedding; audio: ``[B, A, d]``;
        pieces: per item ``(p_before ids, p_after ids, target ids)``.
    Returns:
        ``(inputs_embeds, attention_mask, position_ids, labels)``, labels -100 on the prompt, the
        audio and every ``[PAD]``.
    """
    befores = {tuple(before) for before, _, _ in pieces}
    if len(befores) != 1:
        raise ConfigError(
            "exact mode needs the same text before <SpeechHere> in every prompt of a batch "
            "(the original tokenises it without padding)"
        )
    before = list(befores.pop())
    after_len = max(len(after) for _, after, _ in pieces)
    target_len = max(len(target) for _, _, target in pieces)
    device = audio.device
    rows, masks, labels = [], [], []
    for b, (_, after, target) in enumerate(pieces):
        after_pad, target_pad = after_len - len(after), target_len - len(target)
        ids_head = torch.tensor([bos_id, *before], device=device)
        ids_tail = torch.tensor(
            [*after, *[pad_id] * after_pad, *target, *[pad_id] * target_pad], device=device
        )
        head, tail = embed(ids_head), embed(ids_tail)
        rows.append(torch.cat([head, audio[b].to(head.dtype), tail]))
        prompt_len = len(ids_head) + audio.shape[1] + after_len
        masks.append(
            [1] * (len(ids_head) + audio.shape[1] + len(after))
            + [0] * after_pad
            + [1] * len(target)
            + [0] * target_pad
        )
        labels.append([-100] * prompt_len + target + [-100] * target_pad)
    embeds = torch.stack(rows)
    mask = torch.tensor(masks, device=device)
    positions = torch.arange(embeds.shape[1], device=device).expand(len(pieces), -1)
    return embeds, mask, positions, torch.tensor(labels, device=device)
