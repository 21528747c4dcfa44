"""How much memory a model will take before it is loaded, and the CPU dtype that fits.

The resident size of each component is worked out from what is on disk without loading it: the LLM
and the Whisper encoder from their ``config.json`` (parameter counts, times the bytes of the dtype
they load in), BEATs and the SALMONN checkpoint from their tensors' shapes (memory-mapped, nothing
read). The frozen encoders, the Q-Former side and LoRA are float32 whatever ``--dtype`` says; only
the LLM takes ``--dtype``. A SALMONN-7B at float32 needs about 30 GB, at bfloat16 about 16 GB.

On a CPU without ``--dtype``, :func:`cpu_default_dtype` keeps float32 (the original's arithmetic on
CPU) where it fits the available memory, and takes bfloat16 where only that fits, so that a default
run is not killed by the kernel in the middle of the load.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

logger = logging.getLogger(__name__)

GiB = 2**30
RUNTIME_BYTES = 1 * GiB  # activations, the KV cache of a small batch, the Python runtime
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def llm_parameters(config: dict[str, Any]) -> int:
    """Parameters of a LLaMA-shaped causal LM from its ``config.json`` (embeddings, layers, head)."""
    hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    vocab, inter = int(config["vocab_size"]), int(config["intermediate_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o; k, v
    per_layer = attention + 3 * hidden * inter + 2 * hidden  # + the MLP and two norms
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return embeddings + layers * per_layer + hidden


def whisper_encoder_parameters(config: dict[str, Any]) -> int:
    """Parameters of the Whisper encoder (only the encoder is loaded) from its ``config.json``."""
    width, layers = int(config["d_model"]), int(config["encoder_layers"])
    ffn, mels = int(config["encoder_ffn_dim"]), int(config.get("num_mel_bins", 80))
    positions = int(config.get("max_source_positions", 1500))
    convs = mels * width * 3 + width * width * 3 + 2 * width
    per_layer = 4 * width * width + 3 * width + 2 * width * ffn + ffn + width + 4 * width
    return convs + positions * width + layers * per_layer + 2 * width


def _tensor_bytes_float32(path: str | Path, key: str | None) -> int:
    """float32 bytes of the tensors of a ``torch.save`` file (its ``key`` dict), memory-mapped."""
    import torch

    from .weights import load_torch_file

    raw = load_torch_file(path, error="cannot read {path}: {reason}")
    state = raw.get(key, {}) if key is not None and isinstance(raw, dict) else raw
    return 4 * sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))


@dataclass(frozen=True)
class Footprint:
    """Estimated resident bytes of each component, the LLM at ``dtype``."""

    dtype: str
    whisper: int
    beats: int
    llm: int
    checkpoint: int

    @property
    def total(self) -> int:
        return self.whisper + self.beats + self.llm + self.checkpoint + RUNTIME_BYTES

    def describe(self) -> str:
        parts = ", ".join(
            f"{name} {getattr(self, name) / GiB:.1f}"
            for name in ("whisper", "beats", "llm", "checkpoint")
        )
        return f"about {self.total / GiB:.1f} GiB with the LLM as {self.dtype} ({parts} GiB)"


def estimate(comps: Any, dtype: str) -> Footprint:
    """The footprint of resolved components (``whisper``, ``beats``, ``llm``, ``checkpoint`` paths)."""
    paths = tuple(str(getattr(comps, name)) for name in ("whisper", "beats", "llm", "checkpoint"))
    whisper, beats, llm_params, checkpoint = _sizes(paths, tuple(map(_stamp, paths)))
    return Footprint(dtype, whisper, beats, DTYPE_BYTES[dtype] * llm_params, checkpoint)


def _stamp(path: str) -> tuple[int, int]:
    """Size and modification time of ``path`` (of its ``config.json`` for a folder): a changed
    file is read again."""
    target = Path(path) / "config.json" if os.path.isdir(path) else Path(path)
    try:
        info = target.stat()
    except OSError:
        return (-1, -1)
    return (info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sizes(
    paths: tuple[str, ...], stamps: tuple[tuple[int, int], ...]
) -> tuple[int, int, int, int]:
    """float32 bytes of Whisper, BEATs and the checkpoint, and the LLM's parameter count, read once
    per set of files (a load asks for several dtypes)."""
    del stamps  # part of the cache key only
    whisper, beats, llm, checkpoint = map(Path, paths)
    return (
        4 * _from_config(whisper / "config.json", whisper_encoder_parameters),
        _tensor_bytes_float32(beats, "model"),
        _from_config(llm / "config.json", llm_parameters),
        _tensor_bytes_float32(checkpoint, "model"),
    )


def _from_config(path: Path, count: Callable[[dict[str, Any]], int]) -> int:
    """``count(config)`` for the ``config.json`` at ``path``; a file that cannot give it is a
    :class:`CheckpointError` naming the file and the field."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON config ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    try:
        return count(config)
    except KeyError as exc:
        raise CheckpointError(f"{path}: no {exc.args[0]!r} field") from exc
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: a size field is not a whole number ({exc})") from exc


def available_memory() -> int | None:
    """Bytes the system can give a new process now (``MemAvailable``), ``None`` when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_default_dtype(comps: Any, *, exact: bool, available: int | None = None) -> str:
    """The LLM dtype of a CPU run without ``--dtype``: float32 where it fits (or ``exact`` asks for
    the original's arithmetic), else bfloat16, said in a log line."""
    if exact:
        return "float32"
    available = available_memory() if available is None else available
    full = estimate(comps, "float32")
    if available is None or full.total <= available:
        return "float32"
    logger.warning(
        "float32 needs %s, %.1f GiB is available: loading the LLM as bfloat16 (%.1f GiB in all; "
        "--dtype float32 to insist)",
        full.describe(),
        available / GiB,
        estimate(comps, "bfloat16").total / GiB,
    )
    return "bfloat16"


def fit_report(
    comps: Any, dtype: str, device_type: str, available: int | None = None
) -> str | None:
    """``None`` when the model fits the memory it loads into (CPU: the system's available memory),
    else one line saying what does not fit and what would."""
    if device_type != "cpu":
        return None  # CUDA memory: --batch-size auto and the load itself say
    available = available_memory() if available is None else available
    need = estimate(comps, dtype)
    if available is None or need.total <= available:
        return None
    half = estimate(comps, "bfloat16")
    would = (
        f"--dtype bfloat16 would take {half.total / GiB:.1f} GiB"
        if dtype == "float32" and half.total <= available
        else "use a smaller preset, a machine with more memory, or 8-bit on CUDA"
    )
    return (
        f"the model needs {need.describe()}, but {available / GiB:.1f} GiB is available: the "
        f"kernel may stop the run while it loads; {would}"
    )
