"""benchmarks/gpu_check.py --tiny: the GPU check's own code, run on CPU with the tiny model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gpu_check_tiny_writes_every_section(tmp_path, capsys):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCHMARKS))
    out = tmp_path / "check.json"
    assert gpu_check.main(["--tiny", "--out", str(out), "--clips", "3", "--new-tokens", "3"]) == 0
    report = json.loads(out.read_text())
    rows = report["throughput"]["rows"]
    modes = [r["mode"] for r in rows]
    assert modes[:2] == ["fast, batch 1", "fast, batch 2 (auto)"]  # CPU: auto = the last batch
    assert any(m.startswith("fast, continuous") for m in modes)
    assert modes[-1].startswith("original-style loop")
    assert all(r["clips_per_s"] > 0 and r["seconds"] > 0 for r in rows)
    assert [r["rows"] for r in report["decode"]["rows"]] == [2, 4]  # 1 and 2 clips x 2 beams
    agreement = report["agreement"]
    assert agreement["clips"] == 3 and 0 <= agreement["identical"] <= 3
    assert 0.0 <= agreement["mean_shared_prefix"] <= 1.0
    assert report["ratio"]["x_original_style"] > 0
    assert "CUDA" in report["quantized"]["skipped"]
    printed = capsys.readouterr().out
    assert "original-style loop" in printed and "decode step" in printed
