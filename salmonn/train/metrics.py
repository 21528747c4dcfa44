"""``metrics.jsonl`` (one JSON line per logged step or evaluation) and TensorBoard event files.

A resumed run first drops the lines written after its checkpoint (and a line torn by a kill), so
the file reads as if the run had never stopped. TensorBoard files go to ``tensorboard/`` when
tensorboard is installed (the ``train`` extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """The metrics of one run folder."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / METRICS_FILE
        self._board: Any = None  # None: not tried yet; False: tensorboard is not installed

    def write(
        self,
        step: int,
        split: str,
        loss: float,
        lr: float,
        examples_per_s: float,
        accuracy: float | None,
        extra: dict[str, Any],
    ) -> None:
        entry: dict[str, Any] = {"step": step, "loss": loss}
        if split == "eval":
            entry.update(split="eval", accuracy=accuracy)
        else:
            entry.update(lr=lr, examples_per_s=examples_per_s, **extra)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")
        board = self._tensorboard()
        if board is not None:
            for key, value in entry.items():
                if key not in ("step", "split") and isinstance(value, (int, float)):
                    board.add_scalar(f"{split}/{key}", value, step)
            board.flush()

    def trim(self, step: int) -> None:
        """Keep the lines of steps up to ``step`` (a resume from that step's checkpoint)."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text("utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(f"{line}\n" for line in kept), "utf-8")

    def _tensorboard(self) -> Any:
        if self._board is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._board = False
            else:
                self._board = SummaryWriter(str(self.path.parent / "tensorboard"))
        return self._board or None
