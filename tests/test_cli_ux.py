"""What a new user meets on the command line (CliRunner, the tiny model, audio made here).

Output format from ``-o``'s extension, bad inputs inside folders, and the wording of messages.
Terminal behaviour (progress bar, Ctrl-C) is tested in a real pty in ``test_cli_terminal.py``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from helpers import invoke, jsonl, nest_past_path_max, tone

FAST = ["--device", "cpu", "--max-new-tokens", "4", "--num-beams", "1", "-q"]
pytestmark = pytest.mark.usefixtures("clean_salmonn_env")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tone(tmp_path_factory.mktemp("ux") / "clip.wav", 2.0)


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
    assert (
        result.exit_code == 2
        and "--resume with -o FILE needs the jsonl format, not srt" in result.stderr
    )


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


@pytest.mark.parametrize(
    "how",
    [
        "path too long",  # a real failure to list, as root too
        pytest.param(
            "chmod 000",
            marks=pytest.mark.skipif(os.geteuid() == 0, reason="root lists every folder"),
        ),
    ],
)
def test_unreadable_sub_folder_is_one_failed_input(how, model_flags, tmp_path):
    folder = tmp_path / "in"
    tone(folder / "a.wav", 1.5)
    tone(folder / "z.wav", 1.5, 300.0)
    (folder / "sub").mkdir()
    if how == "chmod 000":
        locked, cause = str(folder / "sub"), "a folder that cannot be listed: Permission denied"
        os.chmod(locked, 0)
    else:
        locked, cause = nest_past_path_max(folder / "sub"), "File name too long"
    try:
        result = invoke(["transcribe", folder, *FAST, *model_flags])
    finally:
        os.chmod(folder / "sub", 0o755)
    assert result.exit_code == 1, result.output[-3000:]
    records = jsonl(result.stdout)
    assert [r["path"] for r in records] == [str(folder / "a.wav"), locked, str(folder / "z.wav")]
    assert [r["error"] for r in records] == [None, cause, None]
    assert result.stderr.count(f"error: {locked}: {cause}\n") == 1
    # the folder named itself on the command line stays a usage error
    if how == "chmod 000":
        os.chmod(locked, 0)
        try:
            named = invoke(["transcribe", locked, *FAST, *model_flags])
        finally:
            os.chmod(locked, 0o755)
        assert named.exit_code == 2 and "Permission denied" in named.stderr


# ----------------------------------------------------------------------------- where inputs come from


def test_files_from_alone_or_with_paths(clip, model_flags, tmp_path):
    other = tone(tmp_path / "other.wav", 1.5, 300.0)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my files\n{clip}\n\n{other}\n")
    alone = invoke(["transcribe", "--files-from", listing, *FAST, *model_flags])
    assert alone.exit_code == 0, alone.output
    assert [Path(r["path"]).name for r in jsonl(alone.stdout)] == ["clip.wav", "other.wav"]
    # cat list.txt | salmonn transcribe --files-from -
    piped = invoke(
        ["transcribe", "--files-from", "-", *FAST, *model_flags], input=listing.read_text()
    )
    assert piped.exit_code == 0, piped.output
    assert [Path(r["path"]).name for r in jsonl(piped.stdout)] == ["clip.wav", "other.wav"]
    both = invoke(["transcribe", other, "--files-from", listing, *FAST, *model_flags])
    assert [Path(r["path"]).name for r in jsonl(both.stdout)] == ["other.wav", "clip.wav"]
    asked = invoke(["ask", "--files-from", listing, "what is it?", *FAST, *model_flags])
    assert asked.exit_code == 0 and len(jsonl(asked.stdout)) == 2


def test_no_inputs_at_all_is_a_usage_error():
    for args in (["transcribe"], ["caption", "-q"], ["prompt", "--text", "hi"]):
        result = invoke(args)
        assert result.exit_code == 2, result.output
        assert "no inputs: give PATH..." in result.stderr and "--files-from" in result.stderr


# ---------------------------------------------------------------------------------------- --resume


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    from salmonn.model.tiny import write_tiny_model

    paths = write_tiny_model(tmp_path_factory.mktemp("tiny-other"), seed=1)
    return ["--whisper", paths.whisper, "--beats", paths.beats, "--llm", paths.llm,
            "--checkpoint", paths.checkpoint]  # fmt: skip


def test_resume_exits_1_while_error_records_remain(clip, model_flags, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    out = tmp_path / "out.jsonl"
    args = ["transcribe", clip, bad, "-o", out, "--resume", *FAST[:-1], *model_flags]
    first = invoke(args)
    assert first.exit_code == 1
    again = invoke(args)
    assert again.exit_code == 1, again.output
    assert "2 of 2 inputs already done (1 of them failed" in again.stderr
    assert "1 input failed in an earlier run" in again.stderr
    assert len(jsonl(out.read_text())) == 2  # nothing run again
    # fixed and its error record deleted: the next --resume runs it, and the run is clean
    tone(bad, 1.0)
    out.write_text(
        "".join(line + "\n" for line in out.read_text().splitlines() if "bad.wav" not in line)
    )
    fixed = invoke(args)
    assert fixed.exit_code == 0, fixed.output
    assert [r["error"] for r in jsonl(out.read_text())] == [None, None]


def test_resume_key_includes_the_model(clip, model_flags, other_model, tmp_path):
    out = tmp_path / "out.jsonl"
    args = ["transcribe", clip, "-o", out, "--resume", *FAST]
    assert invoke([*args, *model_flags]).exit_code == 0
    assert invoke([*args, *model_flags]).exit_code == 0
    assert len(jsonl(out.read_text())) == 1  # same model: done
    other = invoke([*args[:-1], *other_model])
    assert other.exit_code == 0, other.output
    assert "1 inputs done with another model are run again" in other.stderr
    records = jsonl(out.read_text())
    assert len(records) == 2 and records[0]["model"]["llm"] != records[1]["model"]["llm"]
    assert invoke([*args, *other_model]).exit_code == 0
    assert len(jsonl(out.read_text())) == 2  # now done with both models
    scaled = invoke([*args, *model_flags, "--lora-scaling", "2"])  # other LoRA scaling: run again
    assert scaled.exit_code == 0 and len(jsonl(out.read_text())) == 3
    assert invoke([*args, *model_flags, "--lora-scaling", "4"]).exit_code == 0
    assert len(jsonl(out.read_text())) == 3  # 4 is the default: the first record matches


def test_resume_in_a_folder_of_subtitles_knows_the_model(clip, model_flags, other_model, tmp_path):
    out = f"{tmp_path}/subs/"
    args = ["transcribe", clip, "-o", out, "-f", "srt", "--resume", *FAST]
    assert invoke([*args, *model_flags]).exit_code == 0
    manifest = Path(out) / ".salmonn-done.jsonl"
    assert len(manifest.read_text().splitlines()) == 1
    assert invoke([*args, *model_flags]).exit_code == 0
    assert len(manifest.read_text().splitlines()) == 1
    assert invoke([*args, *other_model]).exit_code == 0
    assert len(manifest.read_text().splitlines()) == 2


# ----------------------------------------------------------------------- messages in user's words


def test_messages_name_flags_and_variables(clip, monkeypatch):
    chunk = invoke(["transcribe", clip, "--chunk-seconds", "40"])
    assert chunk.exit_code == 2 and "--chunk-seconds must be in (0, 30], got 40" in chunk.stderr
    assert "max_seconds" not in chunk.stderr
    beams = invoke(["transcribe", clip, "--num-beams", "0"])
    assert beams.exit_code == 2 and "--num-beams must be >= 1" in beams.stderr
    monkeypatch.setenv("SALMONN_DEVICE", "foo")
    device = invoke(["transcribe", clip])
    assert device.exit_code == 2
    assert "env SALMONN_DEVICE: unknown device 'foo'; use cpu, cuda or cuda:N" in device.stderr
    monkeypatch.delenv("SALMONN_DEVICE")
    flag = invoke(["transcribe", clip, "--device", "gpu"])
    assert flag.exit_code == 2 and "--device: unknown device 'gpu'" in flag.stderr


def test_sampling_flags_warning_grammar(clip, monkeypatch):
    monkeypatch.setenv("SALMONN_WHISPER", "/nonexistent/whisper")  # stop after the warning
    one = invoke(["transcribe", clip, "--temperature", "0.5"])
    assert "warning: --temperature only matters with --do-sample" in one.stderr
    three = invoke(["transcribe", clip, "--temperature", "0.5", "--top-k", "3", "--top-p", "0.5"])
    assert "--temperature, --top-k and --top-p only matter with --do-sample" in three.stderr


def test_ask_with_the_question_first_says_where_it_goes(clip):
    result = invoke(["ask", "who is angry?", clip])
    assert result.exit_code == 2
    assert "the question goes last, after the audio: salmonn ask" in result.stderr
    assert result.stderr.rstrip().endswith("'who is angry?'")
    forgot = invoke(["ask", clip])
    assert forgot.exit_code == 2 and "missing the QUESTION after the audio" in forgot.stderr


def test_empty_folder_is_reported_once(clip, model_flags, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    alone = invoke(["transcribe", empty])
    assert alone.exit_code == 2
    assert alone.stderr.count("no audio or video files found") == 1
    mixed = invoke(["transcribe", empty, clip, *FAST[:-1], *model_flags])
    assert mixed.exit_code == 0
    assert mixed.stderr.count(f"{empty}: no audio or video files found") == 1


def test_unknown_template_exits_2_everywhere(clip):
    listed = invoke(["prompts", "nope"])
    ran = invoke(["prompt", "--template", "nope", clip])
    assert listed.exit_code == ran.exit_code == 2
    assert "unknown prompt template 'nope'" in listed.stderr
    assert "unknown prompt template 'nope'" in ran.stderr


def test_missing_template_variable_suggests_var(clip):
    result = invoke(["prompt", "-t", "eval.QA", clip])
    assert result.exit_code == 2
    assert "missing variable(s) question" in result.stderr
    assert "give it with --var question=VALUE" in result.stderr


@pytest.mark.ffmpeg
def test_piped_mp4_that_cannot_be_demuxed_says_to_pass_the_path(model_flags, tmp_path):
    from salmonn.audio.decode import find_ffmpeg

    wav = tone(tmp_path / "long.wav", 40.0)
    mp4 = tmp_path / "long.mp4"
    import subprocess

    subprocess.run(
        [find_ffmpeg(), "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "aac",
         "-b:a", "192k", str(mp4)],
        check=True,
    )  # fmt: skip
    result = invoke(["transcribe", "-", *FAST, *model_flags], input=mp4.read_bytes())
    (record,) = jsonl(result.stdout)
    if record["error"] is None:  # its index at the end did not stop this ffmpeg on a pipe
        pytest.skip("this ffmpeg reads the mp4 from a pipe")
    assert result.exit_code == 1
    assert "pass the file's path instead of piping it" in record["error"]
    by_path = invoke(["transcribe", mp4, *FAST, *model_flags])
    assert by_path.exit_code == 0 and jsonl(by_path.stdout)[0]["error"] is None
