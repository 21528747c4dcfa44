"""Whisper encoder from a Hugging Face folder, loading only the encoder weights (docs/original-model.md, "Whisper encoder").

Accepted folders: ``config.json`` plus one of ``model.safetensors``,
``model.safetensors.index.json``, ``pytorch_model.bin`` or ``pytorch_model.bin.index.json``.
Keys may be ``model.encoder.*`` (``WhisperForConditionalGeneration``, e.g. the official
``openai/whisper-large-v2``), ``encoder.*`` (``WhisperModel``) or bare encoder keys. The decoder
tensors are never read from safetensors files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ...constants import WHISPER_ENCODER_FRAMES, WHISPER_N_MELS
from ...errors import CheckpointError, key_mismatch
from ..weights import load_torch_file

__all__ = ["is_large_v2_shaped", "load_whisper_encoder", "whisper_encoder_width"]

_WEIGHT_FILES = (  # in order of preference
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# key prefixes of WhisperForConditionalGeneration, WhisperModel and a bare encoder save
_PREFIXES = ("model.encoder.", "encoder.", "")
_LARGE_V2 = {
    "d_model": 1280,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "num_mel_bins": 80,
}


def _read_config_dict(folder: Path) -> dict[str, Any]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder} is not a Whisper folder: no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_file}: unreadable JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("model_type") != "whisper":
        kind = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(
            f"{folder} is not a Whisper folder: config.json has model_type {kind!r}"
        )
    return config


def whisper_encoder_width(path: str | Path) -> int:
    """``d_model`` of the Whisper folder at ``path`` (1280 for large-v2), from its config.json."""
    return int(_read_config_dict(Path(path))["d_model"])


def is_large_v2_shaped(config: WhisperConfig | Mapping[str, Any]) -> bool:
    """True for whisper-large-v2's encoder shape: d_model 1280, 32 layers, 20 heads, 80 mels."""
    get = config.get if isinstance(config, Mapping) else lambda k: getattr(config, k, None)
    return all(get(key) == value for key, value in _LARGE_V2.items())


def _check_salmonn_compatible(config: Mapping[str, Any]) -> None:
    mels, positions = config.get("num_mel_bins", 80), config.get("max_source_positions", 1500)
    if mels != WHISPER_N_MELS or positions != WHISPER_ENCODER_FRAMES:
        raise CheckpointError(
            "SALMONN needs an 80-mel, 30 s Whisper encoder such as openai/whisper-large-v2; "
            f"got num_mel_bins={mels}, max_source_positions={positions}"
        )


def _weight_source(folder: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no Whisper weights (looked for {', '.join(_WEIGHT_FILES)})")


def _shard_map(index_file: Path) -> dict[str, Path]:
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_file}: not a sharded-checkpoint index ({exc})") from exc
    return {key: index_file.parent / shard for key, shard in weight_map.items()}


def _torch_load(file: Path) -> dict[str, torch.Tensor]:
    state = load_torch_file(file)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{file}: expected a state dict, found {type(state).__name__}")
    return dict(state)


def _pick_prefix(keys: Iterable[str], source: Path) -> str:
    keys = list(keys)
    for prefix in _PREFIXES:
        if f"{prefix}conv1.weight" in keys:
            return prefix
    raise CheckpointError(
        f"{source}: no Whisper encoder weights "
        "(no model.encoder.conv1.weight or encoder.conv1.weight)"
    )


def _read_encoder_state(folder: Path) -> dict[str, torch.Tensor]:
    """Encoder tensors only, keys without their prefix."""
    source = _weight_source(folder)
    loaded: dict[str, torch.Tensor] | None = None  # a single .bin file, read whole
    if source.name.endswith(".index.json"):
        files_of = _shard_map(source)
        keys = list(files_of)
    elif source.suffix == ".safetensors":
        with safe_open(str(source), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
        files_of = dict.fromkeys(keys, source)
    else:
        loaded = _torch_load(source)
        keys, files_of = list(loaded), dict.fromkeys(loaded, source)
    prefix = _pick_prefix(keys, source)
    wanted = [k for k in keys if k.startswith(prefix)]
    if not prefix:  # bare encoder: everything is encoder
        wanted = keys
    state: dict[str, torch.Tensor] = {}
    for file in dict.fromkeys(files_of[k] for k in wanted):
        names = [k for k in wanted if files_of[k] == file]
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                state.update((k[len(prefix) :], handle.get_tensor(k)) for k in names)
        else:
            tensors = loaded if loaded is not None else _torch_load(file)
            state.update((k[len(prefix) :], tensors[k]) for k in names)
    return state


def load_whisper_encoder(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "eager",
) -> WhisperEncoder:
    """Build transformers' ``WhisperEncoder`` from ``path/config.json``; load only its weights,
    strictly.

    ``attn_implementation="eager"`` reproduces the 4.28 attention arithmetic (q scaled before
    QK^T, plain softmax); ``"sdpa"`` is faster on GPU and differs at rounding level.

    Use: ``encoder(input_features).last_hidden_state`` with ``input_features [B, 80, 3000]`` ->
    ``[B, 1500, d]``.

    Raises:
        CheckpointError: not a Whisper folder, not an 80-mel 30 s encoder, no weights,
            missing/unexpected encoder keys, or shape mismatches.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a Whisper folder: no such directory")
    config_dict = _read_config_dict(folder)
    _check_salmonn_compatible(config_dict)
    config = WhisperConfig.from_dict(config_dict)
    config._attn_implementation = attn_implementation
    state = _read_encoder_state(folder)
    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    problems = key_mismatch(list(encoder.state_dict()), list(state), "encoder keys")
    if problems:
        raise CheckpointError(f"{folder}: {problems}")
    try:
        encoder.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise CheckpointError(
            f"{folder}: Whisper encoder weights do not fit its config.json: {detail}"
        ) from exc
    # transformers wraps PreTrainedModel.to with @wraps(nn.Module.to), which mypy types unbound
    encoder = encoder.to(device=device, dtype=dtype)  # type: ignore[call-arg]
    encoder.requires_grad_(False)
    return encoder.eval()
