"""``load_model``: resolve the four components (preset, local paths, the hub cache) and build the model.

Resolution (:mod:`salmonn.hub.resolve`) turns a preset and explicit paths into four local paths,
downloading what the cache lacks; :func:`salmonn.model.checkpoint.build_model` builds the model from
them and checks the checkpoint against them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..constants import DEFAULT_LORA_SCALING
from ..model.checkpoint import build_model
from ..model.devices import resolve_device, resolve_dtype
from ..model.footprint import cpu_default_dtype, fit_report
from ..model.llm import quantization_config
from ..model.salmonn_model import SalmonnModel
from .resolve import PRESETS, resolve_components

log = logging.getLogger(__name__)


def load_model(
    whisper: str | Path | None = None,
    beats: str | Path | None = None,
    llm: str | Path | None = None,
    checkpoint: str | Path | None = None,
    *,
    preset: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    lora_scaling: float | None = None,
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    exact: bool = False,
) -> SalmonnModel:
    """Load SALMONN: Whisper encoder, BEATs, LLM + LoRA and the SALMONN checkpoint.

    Args:
        whisper, beats, llm, checkpoint: component paths; explicit paths win over the preset's.
        preset: ``"salmonn-13b"`` or ``"salmonn-7b"`` (see ``salmonn.PRESETS``).
        device: ``None`` -> CUDA when available, else CPU.
        dtype: LLM weight / autocast dtype; ``None`` -> float16 on CUDA; on CPU float32 where the
            model fits the available memory (or ``exact``), else bfloat16 (a log line says so).
        lora_scaling: LoRA alpha / r at inference; ``None`` -> the preset's, else 4.0.
        load_in_8bit, load_in_4bit: quantize the LLM with bitsandbytes (CUDA only).
        exact: generate with the original's arithmetic and shapes by default (``model.exact``;
            one clip at a time, transformers-4.28 eager attention); the default fast mode batches
            and decodes through :mod:`salmonn.model.kvcache` (see docs/fidelity.md, "Exact and fast
            mode").
    Raises:
        CheckpointError: a component is missing or does not fit the checkpoint (says why).
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    quantization_config(load_in_8bit, load_in_4bit, dev, dt)  # fail before resolving anything
    comps = resolve_components(preset, whisper, beats, llm, checkpoint)
    if dev.type == "cpu" and not (load_in_8bit or load_in_4bit):
        if dtype is None:  # the CPU default: float32 where it fits, else bfloat16
            dt = resolve_dtype(cpu_default_dtype(comps, exact=exact), dev)
        problem = fit_report(comps, str(dt).removeprefix("torch."), dev.type)
        if problem is not None:
            log.warning("%s", problem)
        if dt == torch.float16:
            log.warning(
                "float16 on a CPU: encoding and the prompt run several times slower than with "
                "bfloat16 unless the CPU has float16 matrix units; --dtype bfloat16 takes the "
                "same memory"
            )
    if lora_scaling is None:
        spec = PRESETS.get(comps.preset) if comps.preset else None
        lora_scaling = float(getattr(spec, "lora_scaling", DEFAULT_LORA_SCALING))
    return build_model(
        comps.whisper,
        comps.beats,
        comps.llm,
        comps.checkpoint,
        preset=comps.preset,
        device=dev,
        dtype=dt,
        lora_scaling=lora_scaling,
        load_in_8bit=load_in_8bit,
        load_in_4bit=load_in_4bit,
        exact=exact,
    )
