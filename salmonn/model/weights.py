"""The one way this package reads a ``torch.save`` file: safely, onto the CPU, memory-mapped when it can.

``weights_only=True`` refuses pickles that would run code (only tensors and plain containers load), so a
checkpoint from anywhere can be opened without trusting it. Zip-format files (every file saved by torch
1.6 and later) are memory-mapped, so parts that are never used (e.g. the optimizer state that fills two
thirds of a released SALMONN checkpoint) are never read from disk; older files are read whole.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from ..errors import CheckpointError


def load_torch_file(
    path: str | Path, error: str = "{path}: unreadable weight file ({reason})"
) -> Any:
    """Unpickle ``path`` with ``weights_only=True``, tensors on the CPU.

    Args:
        path: a file written by ``torch.save``.
        error: the message of the :class:`CheckpointError` raised when the file cannot be read, with
            ``{path}`` and ``{reason}`` (the first line of the cause, or "no such file") filled in.

    Raises:
        CheckpointError: the file is missing, not a torch file, or holds objects other than tensors and
            plain containers.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(error.format(path=path, reason="no such file"))
    try:
        return torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        raise CheckpointError(error.format(path=path, reason=reason)) from exc
