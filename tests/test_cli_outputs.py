"""Where ``-o`` writes, as a new user meets it: a bad location fails before the model loads, ``--resume``
in a folder redoes an input whose output file is gone, and files get the umask's mode."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from helpers import invoke, jsonl, tone

pytestmark = pytest.mark.usefixtures("clean_salmonn_env")

FAST = ["--device", "cpu", "--max-new-tokens", "4", "--num-beams", "1", "-q"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    tone(root / "day1" / "a.wav", 1.5)
    tone(root / "day2" / "d.wav", 1.5, freq=660.0)
    return root


# -------------------------------------------------------------------- -o checked before the load

NO_WEIGHTS = ["--whisper", "/nonexistent/w", "--beats", "/nonexistent/b.pt",
              "--llm", "/nonexistent/llm", "--checkpoint", "/nonexistent/c.pth"]  # fmt: skip


@pytest.mark.parametrize("target", ["afile.txt/x.jsonl", "afile.txt/", "afile.txt/sub/x.srt"])
def test_output_under_a_file_is_a_usage_error_before_the_load(clips, tmp_path, target):
    (tmp_path / "afile.txt").write_text("not a folder\n")
    result = invoke(
        ["transcribe", clips / "day1", "-o", f"{tmp_path}/{target}", *FAST, *NO_WEIGHTS]
    )
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    assert f"{tmp_path / 'afile.txt'} is a file, not a folder" in line
    assert "/nonexistent" not in result.stderr  # the weights were never looked at


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_output_where_nothing_can_be_created_is_a_usage_error(clips):
    result = invoke(["transcribe", clips / "day1", "-o", "/proc/nope/x.jsonl", *FAST, *NO_WEIGHTS])
    assert result.exit_code == 2, result.output
    assert "-o /proc/nope/x.jsonl: cannot write in /proc/nope" in result.stderr
    assert "Traceback" not in result.output


# ------------------------------------------------------------- resume in a folder of subtitles


def test_resume_in_a_folder_redoes_a_deleted_output(clips, model_flags, tmp_path):
    out = tmp_path / "subs"
    args = ["transcribe", clips, "-o", f"{out}/", "-f", "vtt", "--resume", *FAST, *model_flags]
    assert invoke(args).exit_code == 0
    vtt = out / "day2" / "d.vtt"
    assert vtt.is_file() and (out / "day1" / "a.vtt").is_file()
    entries = jsonl((out / ".salmonn-done.jsonl").read_text())
    assert sorted(e["path"] for e in entries) == sorted(
        str(clips / d) for d in ("day1/a.wav", "day2/d.wav")
    )  # a user can tell which line is which input
    vtt.unlink()
    again = invoke(args)
    assert again.exit_code == 0, again.output
    assert vtt.is_file() and vtt.read_text().startswith("WEBVTT")
    assert len(jsonl((out / ".salmonn-done.jsonl").read_text())) == 3
    assert invoke(args).exit_code == 0  # now all done: nothing runs, nothing is added
    assert len(jsonl((out / ".salmonn-done.jsonl").read_text())) == 3


# ---------------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("fmt", ["srt", "json"])
def test_files_in_a_folder_follow_the_umask(clips, model_flags, tmp_path, fmt):
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        args = ["transcribe", clips / "day1", "-o", f"{out}/", "-f", fmt, *FAST, *model_flags]
        assert invoke(args).exit_code == 0
        written = [p for p in out.rglob("*") if p.is_file()]
        assert written
        for path in written:
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        os.umask(0o077)
        private = tmp_path / "private"
        assert invoke([*args[:3], f"{private}/", *args[4:]]).exit_code == 0
        for path in (p for p in private.rglob("*") if p.is_file()):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        os.umask(old)


def test_rewriting_a_file_keeps_its_mode(tmp_path):
    from salmonn_cli.paths import write_atomic

    target = tmp_path / "a.txt"
    target.write_text("old")
    target.chmod(0o640)
    write_atomic(target, json.dumps({"new": 1}))
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and "new" in target.read_text()
