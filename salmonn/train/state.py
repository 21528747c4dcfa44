"""What a run leaves on disk, written so that a kill at any moment leaves only complete files.

``DIR/checkpoint-<step>/`` holds ``salmonn.pth`` in the released format (``{"model": tensors}`` under
the released key names: it loads with ``--checkpoint`` here and in the original code),
``optimizer.pt`` (AdamW and loss-scaler states), ``rng.pt`` (every process's random generators) and
``trainer_state.json`` (the step, the run's settings). Each folder is written under a hidden temporary
name and renamed when complete; ``DIR/salmonn.pth`` is written to a temporary file and renamed.
:func:`latest_checkpoint` finds the newest complete folder for ``--resume``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..errors import CheckpointError
from ..model.weights import load_torch_file

PREFIX = "checkpoint-"
_FOLDER = re.compile(rf"^{PREFIX}(\d+)$")
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "salmonn.pth"


def released_format(params: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``{"model": {key: float32 CPU tensor}}``, keys sorted: the released checkpoints' layout."""
    return {
        "model": {k: params[k].detach().to("cpu", torch.float32).clone() for k in sorted(params)}
    }


def save_weights(path: str | Path, params: Mapping[str, torch.Tensor]) -> None:
    """Write ``salmonn.pth`` atomically (a temporary file renamed over the target)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(released_format(params), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """This process's random generators (Python, NumPy, torch CPU and CUDA)."""
    # legacy=True (the default) gives MT19937's tuple; numpy's stub types the call as the dict form
    legacy_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    kind, keys, pos, has_gauss, gauss = legacy_state
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    params: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    rng_states: list[dict[str, Any]],
    trainer_state: Mapping[str, Any],
) -> Path:
    """Write ``checkpoint-<step>/`` (under a temporary name, then renamed) and return its path."""
    out_dir = Path(out_dir)
    final = out_dir / f"{PREFIX}{step}"
    tmp = out_dir / f".{PREFIX}{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        torch.save(released_format(params), tmp / WEIGHTS_FILE)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
            },
            tmp / "optimizer.pt",
        )
        torch.save({"ranks": rng_states}, tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps(dict(trainer_state), indent=2) + "\n", "utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoint folders of a run, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for entry in out_dir.iterdir():
        match = _FOLDER.match(entry.name)
        if match and (entry / STATE_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoint-<step>/`` of a run, or ``None``."""
    found = checkpoints(out_dir)
    return found[-1][1] if found else None


def prune(out_dir: str | Path, keep: int | None) -> None:
    """Delete all but the ``keep`` newest checkpoint folders (``None``: keep all)."""
    if keep is None:
        return
    for _, folder in checkpoints(out_dir)[: -keep or None] if keep > 0 else checkpoints(out_dir):
        shutil.rmtree(folder, ignore_errors=True)


def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """``{"model", "optimizer", "scaler", "rng", "state"}`` of a checkpoint folder."""
    folder = Path(folder)
    try:
        state = json.loads((folder / STATE_FILE).read_text("utf-8"))
        weights = load_torch_file(folder / WEIGHTS_FILE, error="cannot read {path}: {reason}")
        optim = load_torch_file(folder / "optimizer.pt", error="cannot read {path}: {reason}")
        rng = load_torch_file(folder / "rng.pt", error="cannot read {path}: {reason}")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot resume from {folder}: {err}") from None
    return {
        "model": weights["model"],
        "optimizer": optim["optimizer"],
        "scaler": optim["scaler"],
        "rng": rng["ranks"],
        "state": state,
    }
