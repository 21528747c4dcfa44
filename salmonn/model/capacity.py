"""How many chunks fit on the device at once: ``--batch-size auto``.

On CUDA the batch is the largest whose working memory fits the free memory: per chunk, the LLM's KV
cache (the prompt once per chunk, the generated part once per beam, as :mod:`salmonn.model.kvcache` stores
them), the next-token scores of its beams, and the encoders' activations while it joins. On
other devices ``auto`` is :data:`~salmonn.config.DEFAULT_BATCH_SIZE`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_BATCH_SIZE, GenerationOptions
from ..constants import WINDOW_SECONDS

if TYPE_CHECKING:
    import torch

AUTO = "auto"
MAX_AUTO_BATCH = 64  # beyond this a step is compute-bound and latency only grows
MEMORY_SHARE = 0.8  # of the free memory, for fragmentation and allocator slack
PROMPT_POSITIONS = 88 + 72  # audio vectors of a 30 s chunk + a long instruction, BOS included
ENCODER_BYTES_PER_CHUNK = 160 * 2**20  # Whisper large-v2 + BEATs activations of one 30 s chunk


@dataclass(frozen=True)
class LlmShape:
    """What sizes the KV cache: layers, width (heads x head_dim), vocabulary, bytes per value."""

    layers: int
    hidden: int
    vocab: int
    dtype_bytes: int = 2

    @classmethod
    def from_config(cls, config: Any, dtype: torch.dtype) -> LlmShape:
        import torch

        get: Callable[..., Any] = (
            config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        )
        return cls(
            layers=int(get("num_hidden_layers")),
            hidden=int(get("hidden_size")),
            vocab=int(get("vocab_size")) + 1,  # the [PAD] row
            dtype_bytes=torch.empty(0, dtype=dtype).element_size(),
        )

    @classmethod
    def from_folder(cls, folder: str | Path, dtype: torch.dtype) -> LlmShape:
        """From an LLM folder's ``config.json``."""
        config = json.loads((Path(folder) / "config.json").read_text())
        return cls.from_config(config, dtype)


def bytes_per_chunk(shape: LlmShape, options: GenerationOptions) -> int:
    """Working memory of one chunk in a running batch (bytes)."""
    beams = options.num_beams
    generated = _columns(options.max_new_tokens)
    per_position = shape.layers * 2 * shape.hidden * shape.dtype_bytes  # keys + values
    kv = per_position * (PROMPT_POSITIONS + beams * generated)
    scores = beams * shape.vocab * 4 * 4  # float32 logits, log-softmax, penalties, candidates
    return kv + scores + ENCODER_BYTES_PER_CHUNK


def _columns(max_new_tokens: int) -> int:
    """Generated columns the cache allocates: 32, doubled until they hold the answer."""
    columns = 32
    while columns < max_new_tokens + 1:
        columns *= 2
    return columns


def auto_batch_size(
    free_bytes: int | None,
    shape: LlmShape,
    options: GenerationOptions,
    *,
    limit: int = MAX_AUTO_BATCH,
) -> int:
    """The largest batch whose working memory fits ``MEMORY_SHARE`` of ``free_bytes``.

    ``free_bytes=None`` (no accelerator to measure) gives :data:`DEFAULT_BATCH_SIZE`.
    """
    if free_bytes is None:
        return DEFAULT_BATCH_SIZE
    fits = int(MEMORY_SHARE * free_bytes // bytes_per_chunk(shape, options))
    return max(1, min(limit, fits))


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device (what the allocator holds but does not use counts as free)."""
    import torch

    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    reserved = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + reserved)


def describe(
    device: torch.device, shape: LlmShape, options: GenerationOptions, weights: int
) -> str:
    """One line for ``salmonn doctor``: the batch ``auto`` would choose on ``device`` once the
    model's ``weights`` (bytes) are loaded."""
    free = free_memory(device)
    if free is None:
        return f"{DEFAULT_BATCH_SIZE} on {device.type} (auto picks by memory on CUDA only)"
    left = max(0, free - weights)
    size = auto_batch_size(left, shape, options)
    per = bytes_per_chunk(shape, options)
    return (
        f"{size} on {device} ({left / 2**30:.1f} GiB free after {weights / 2**30:.1f} GiB of "
        f"weights, {per / 2**20:.0f} MiB per {WINDOW_SECONDS} s chunk with {options.num_beams} beams "
        f"and {options.max_new_tokens} new tokens)"
    )


def weights_on_disk(*paths: str | Path) -> int:
    """Bytes of the weight files under ``paths`` (files or folders): what loading will take."""
    total = 0
    for path in map(Path, paths):
        files = [path] if path.is_file() else list(path.rglob("*")) if path.is_dir() else []
        total += sum(
            f.stat().st_size
            for f in files
            if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt", ".pth")
        )
    return total


def describe_components(comps: Any, device: str | None, dtype: str | None) -> str:
    """``salmonn doctor``'s auto batch line for resolved components (no model is built)."""
    from .devices import resolve_device, resolve_dtype

    dev = resolve_device(device)
    shape = LlmShape.from_folder(comps.llm, resolve_dtype(dtype, dev))
    weights = weights_on_disk(comps.whisper, comps.beats, comps.llm, comps.checkpoint)
    return describe(dev, shape, GenerationOptions(), weights)


class HeapTrimmer:
    """Give freed heap memory back to the OS every ``every`` answered chunks (glibc only).

    A batch allocates and frees hundreds of MB of encoder activations and features; glibc keeps
    much of what was freed inside the heap, in pieces, so a long run's resident memory creeps up
    with its length although no data outlives its batch. ``malloc_trim`` after each batch keeps it
    flat. Elsewhere (macOS, Windows, musl) this does nothing.
    """

    def __init__(self, every: int) -> None:
        self.every = max(1, every)
        self.pending = 0
        self._trim = _malloc_trim()

    def answered(self, chunks: int) -> None:
        self.pending += chunks
        if self._trim is not None and self.pending >= self.every:
            self.pending = 0
            self._trim(0)


def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None
