"""What a new user meets on the command line (CliRunner, the tiny model, audio made here).

Output format from ``-o``'s extension, bad inputs inside folders, and the wording of messages.
Terminal behaviour (progress bar, Ctrl-C) is tested in a real pty in ``test_cli_terminal.py``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from salmonn_cli.main import cli
from salmonn_cli.settings import ENV_VARS

SR = 16_000
FAST = ["--device", "cpu", "--max-new-tokens", "4", "--num-beams", "1", "-q"]


def tone(path: Path, seconds: float, freq: float = 440.0) -> Path:
    t = np.arange(int(SR * seconds)) / SR
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in (*ENV_VARS.values(), "SALMONN_CONFIG", "SALMONN_PROMPTS_DIR", "SALMONN_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tone(tmp_path_factory.mktemp("ux") / "clip.wav", 2.0)


def invoke(args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], **kw)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -------------------------------------------------------------------------- format from -o FILE


@pytest.mark.parametrize(
    ("name", "fmt", "check"),
    [
        ("clip.srt", None, lambda t: re.match(r"1\n00:00:00,000 --> 00:00:02,000\n", t)),
        ("clip.VTT", None, lambda t: t.startswith("WEBVTT\n")),
        ("clip.tsv", None, lambda t: t.startswith("start\tend\ttext\n")),
        ("clip.json", None, lambda t: json.loads(t)["duration"] == 2.0),
        ("clip.txt", None, lambda t: not t.startswith("{") and t.endswith("\n")),
        ("clip.out", None, lambda t: jsonl(t)[0]["duration"] == 2.0),  # other: jsonl
        ("clip.srt", "jsonl", lambda t: jsonl(t)[0]["duration"] == 2.0),  # -f wins
        ("clip.jsonl", "text", lambda t: not t.startswith("{")),
    ],
)
def test_output_format_follows_the_file_extension(clip, model_flags, tmp_path, name, fmt, check):
    target = tmp_path / name
    flags = [] if fmt is None else ["-f", fmt]
    result = invoke(["transcribe", clip, "-o", target, *flags, *FAST, *model_flags])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert check(target.read_text(encoding="utf-8")), target.read_text(encoding="utf-8")


def test_stdout_and_folders_default_to_jsonl(clip, model_flags, tmp_path):
    result = invoke(["transcribe", clip, *FAST, *model_flags])
    assert result.exit_code == 0 and jsonl(result.stdout)[0]["duration"] == 2.0
    result = invoke(["transcribe", clip, "-o", f"{tmp_path}/out/", *FAST, *model_flags])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["clip.jsonl"]


def test_resume_with_a_jsonl_extension_needs_no_format_flag(clip, model_flags, tmp_path):
    target = tmp_path / "runs.jsonl"
    for _ in range(2):
        result = invoke(["transcribe", clip, "-o", target, "--resume", *FAST, *model_flags])
        assert result.exit_code == 0, result.output
    assert len(jsonl(target.read_text(encoding="utf-8"))) == 1
    srt = tmp_path / "runs.srt"
    result = invoke(["transcribe", clip, "-o", srt, "--resume", *FAST, *model_flags])
    assert result.exit_code == 2 and "--resume" in result.stderr


# ------------------------------------------------------------------- bad inputs inside a folder


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_dangling_symlink_in_a_folder_is_one_failed_input(model_flags, tmp_path):
    folder = tmp_path / "in"
    tone(folder / "a.wav", 1.5)
    tone(folder / "sub" / "c.wav", 1.5, 300.0)
    os.symlink(tmp_path / "gone.wav", folder / "b.wav")
    result = invoke(["transcribe", folder, *FAST, *model_flags])
    assert result.exit_code == 1, result.output
    records = jsonl(result.stdout)
    assert [Path(r["path"]).name for r in records] == ["a.wav", "b.wav", "c.wav"]
    assert [r["error"] is None for r in records] == [True, False, True]
    assert "broken symbolic link" in records[1]["error"]
    assert re.search(r"^error: .*b\.wav: .*broken symbolic link", result.stderr, re.MULTILINE)
    # a broken link named on the command line stays a usage error
    named = invoke(["transcribe", folder / "b.wav", *FAST, *model_flags])
    assert named.exit_code == 2 and "broken symbolic link" in named.stderr
