"""Which device and dtype a model runs on: ``--device`` / ``--dtype`` values to torch objects.

Device names are checked without torch by :func:`salmonn.config.check_device` (the CLI's early
check); here they become ``torch.device``s, and dtype names (``"fp16"``, ``"bf16"``, ...) become
``torch.dtype``s, with the defaults of a device.
"""

from __future__ import annotations

import torch

from ..config import check_device
from ..constants import DTYPE_ALIASES, DTYPE_NAMES
from ..errors import ConfigError, DeviceUnavailableError

_DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
_DTYPES.update({alias: _DTYPES[name] for alias, name in DTYPE_ALIASES.items()})
_DTYPE_CHOICES = ", ".join(DTYPE_NAMES)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> ``cuda`` when available, else ``cpu``; ``"cuda"`` becomes ``cuda:0``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, torch.device):
        device = torch.device(check_device(str(device)))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(str(device), "CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` -> float16 on CUDA, float32 elsewhere; accepts names like ``"fp16"``, ``"bf16"``."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ConfigError(f"unsupported dtype {dtype}; use {_DTYPE_CHOICES}")
        return dtype
    try:
        return _DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; use {_DTYPE_CHOICES}") from None
