"""An official BEATs file (``torch.save`` of ``{"cfg", "model"}``): read it, check it, load it.

:func:`read_beats_file` is the one BEATs validator: it checks the file's keys and shapes against the
state-dict layout of the model its ``cfg`` describes (built on the meta device, so nothing is
allocated), and :func:`load_beats` loads a checked file strictly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ...errors import CheckpointError, key_mismatch, name_some
from ..weights import load_torch_file
from .beats import Beats
from .beats_config import BeatsConfig


def _legacy_weight_norm_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept new-style ``parametrizations.weight.original0/1`` as ``weight_g`` / ``weight_v``."""
    renames = {
        "parametrizations.weight.original0": "weight_g",
        "parametrizations.weight.original1": "weight_v",
    }
    out = {}
    for key, value in state.items():
        for new, old in renames.items():
            if key.endswith(new):
                key = key[: -len(new)] + old
        out[key] = value
    return out


def read_beats_file(path: str | Path) -> tuple[BeatsConfig, dict[str, torch.Tensor]]:
    """Open and check a BEATs file without building the model: the one BEATs validator.

    The file must be a ``torch.save`` dict whose ``cfg`` is a configuration this port supports and
    whose ``model`` holds exactly the keys and shapes of the model that ``cfg`` describes (new-style
    weight-norm names are mapped to the official ones). Tensors are memory-mapped, so checking a
    released file reads little of it.

    Returns:
        the configuration and the state dict (official key names).

    Raises:
        CheckpointError: ``"{path} is not a BEATs checkpoint: {reason}"`` on one line.
    """
    path = Path(path)

    def fail(reason: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a BEATs checkpoint: {reason}")

    ckpt = load_torch_file(path, error="{path} is not a BEATs checkpoint: {reason}")
    model_state = ckpt.get("model") if isinstance(ckpt, Mapping) else None
    if isinstance(model_state, Mapping) and "speech_query_tokens" in model_state:
        raise fail("it is a SALMONN checkpoint (it goes in the checkpoint component)")
    if not isinstance(ckpt, Mapping) or not {"cfg", "model"} <= set(ckpt):
        found = sorted(map(str, ckpt))[:5] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise fail(f"expected keys 'cfg' and 'model', found {found}")
    if not isinstance(ckpt["cfg"], Mapping) or not isinstance(model_state, Mapping):
        raise fail("'cfg' and 'model' must be dicts")
    cfg = BeatsConfig.from_dict(ckpt["cfg"])
    try:
        with torch.device("meta"):
            expected = Beats(cfg).state_dict()  # checks that the configuration is supported
    except CheckpointError as err:
        raise fail(str(err)) from None
    state = _legacy_weight_norm_names(dict(model_state))
    problems = key_mismatch(list(expected), list(state))
    if problems:
        raise fail(problems)
    wrong = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(tensor.shape)})"
        for key, tensor in expected.items()
        if not isinstance(state[key], torch.Tensor) or state[key].shape != tensor.shape
    ]
    if wrong:
        raise fail(f"wrong shape of {name_some(wrong)}")
    return cfg, state


def load_beats(path: str | Path, device: torch.device | str = "cpu") -> Beats:
    """Load an official BEATs checkpoint (a ``torch.save`` dict with ``cfg`` and ``model``),
    strictly (checked by :func:`read_beats_file`).

    Returns:
        a float32 :class:`Beats` on ``device``, in eval mode, with gradients off.

    Raises:
        CheckpointError: the file is missing, unreadable, not a BEATs dict, or its keys or shapes
        differ.
    """
    cfg, state = read_beats_file(path)
    with torch.device("meta"):
        model = Beats(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device=device, dtype=torch.float32)
    model.requires_grad_(False)
    return model.eval()
