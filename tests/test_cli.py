"""The ``salmonn`` command through Click's CliRunner, with the tiny model and audio generated here."""

from __future__ import annotations

import functools
import itertools
import json
import re
from pathlib import Path

import helpers
import numpy as np
import pytest
import soundfile as sf
from helpers import invoke, jsonl

from salmonn_cli.paths import output_names
from salmonn_cli.sources import resolve

FAST = ["--device", "cpu", "--max-new-tokens", "4", "--num-beams", "1", "-q"]


pytestmark = pytest.mark.usefixtures("clean_salmonn_env")
tone = functools.partial(helpers.tone, wobble_hz=0.2)  # the clips these tests were written with


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """in/a.wav (2 s), in/bad.wav (not audio), in/sub/a.wav (3 s); long.wav (75 s) beside."""
    root = tmp_path_factory.mktemp("audio")
    tone(root / "in" / "a.wav", 2.0)
    tone(root / "in" / "sub" / "a.wav", 3.0, 300.0)
    (root / "in" / "bad.wav").write_text("this is not audio")
    tone(root / "long.wav", 75.0, 200.0)
    return root


# ---------------------------------------------------------------------------------------------- runs


def test_folder_with_a_corrupt_file(tree, model_flags):
    result = invoke(["transcribe", tree / "in", *model_flags, *FAST])
    assert result.exit_code == 1, result.output
    records = jsonl(result.stdout)
    assert [Path(r["path"]).relative_to(tree / "in").as_posix() for r in records] == [
        "a.wav",
        "bad.wav",
        "sub/a.wav",
    ]
    good = [r for r in records if r["error"] is None]
    assert len(good) == 2 and all(
        isinstance(r["text"], str) and len(r["segments"]) == 1 for r in good
    )
    assert good[0]["duration"] == 2.0 and good[1]["segments"][0]["end"] == 3.0
    bad = records[1]
    assert bad["text"] is None and bad["segments"] == [] and "\n" not in bad["error"]
    assert bad["model"]["checkpoint"] and bad["options"]["generation"]["max_new_tokens"] == 4
    assert re.search(r"^error: .*bad\.wav: .+$", result.stderr, re.MULTILINE)
    assert result.stderr.count("\n") == 1  # -q: that one line only


def test_fail_fast_stops_at_the_first_failure(tree, model_flags):
    result = invoke(
        ["transcribe", tree / "in", *model_flags, *FAST, "--fail-fast", "--batch-size", "1"]
    )
    assert result.exit_code == 1
    assert [r["error"] is None for r in jsonl(result.stdout)] == [True, False]


def test_long_file_is_cut_in_three_chunks_covering_it(tree, model_flags):
    result = invoke(["transcribe", tree / "long.wav", *model_flags, *FAST])
    assert result.exit_code == 0, result.output
    (record,) = jsonl(result.stdout)
    segs = record["segments"]
    assert len(segs) == 3 and record["duration"] == 75.0
    assert segs[0]["start"] == 0.0 and segs[-1]["end"] == 75.0
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(segs))
    assert all(s["end"] - s["start"] <= 30.0 + 1e-6 for s in segs)
    assert record["text"] == " ".join(s["text"].strip() for s in segs if s["text"].strip())


def test_long_caption_has_a_summary_pass_unless_per_chunk(tree, model_flags):
    two_chunks = [tree / "in" / "sub" / "a.wav", "--chunk-seconds", "1.5", *model_flags, *FAST]
    result = invoke(["caption", *two_chunks])
    (record,) = jsonl(result.stdout)
    assert result.exit_code == 0 and len(record["segments"]) == 2
    assert record["timings"]["summary_s"] > 0 and record["options"]["join"] == "summary"

    result = invoke(["caption", "--per-chunk", "-f", "text", *two_chunks])
    lines = result.stdout.splitlines()
    assert result.exit_code == 0 and len(lines) == 2
    assert re.match(r"\[00:00-00:0[12]\] ", lines[0]) and re.match(r"\[00:0[12]-00:03\] ", lines[1])


def srt_blocks(text: str) -> list[list[str]]:
    return [b.splitlines() for b in text.strip().split("\n\n") if b.strip()]


def test_every_command_and_format(tree, model_flags, tmp_path):
    one = tree / "in" / "sub" / "a.wav"
    srt = invoke(["transcribe", one, "-f", "srt", *model_flags, *FAST])
    blocks = srt_blocks(srt.stdout)
    assert srt.exit_code == 0 and len(blocks) == 1
    for n, block in enumerate(blocks, 1):
        assert block[0] == str(n)
        assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", block[1])
    assert blocks[0][1].startswith("00:00:00,000 --> ")

    vtt = invoke(
        ["translate", tree / "in" / "a.wav", "--to", "de", "-f", "vtt", *model_flags, *FAST]
    )
    assert vtt.exit_code == 0 and vtt.stdout.startswith("WEBVTT\n\n")
    assert re.search(r"^00:00:00\.000 --> 00:00:02\.000$", vtt.stdout, re.MULTILINE)

    tsv = invoke(["caption", "--music", tree / "in" / "a.wav", "-f", "tsv", *model_flags, *FAST])
    rows = tsv.stdout.splitlines()
    assert tsv.exit_code == 0 and rows[0] == "start\tend\ttext" and rows[1].startswith("0\t2000\t")

    js = invoke(
        [
            "ask",
            tree / "in" / "a.wav",
            tree / "in" / "sub" / "a.wav",
            "who is angry?",
            "-f",
            "json",
            *model_flags,
            *FAST,
        ]
    )
    data = json.loads(js.stdout)
    assert js.exit_code == 0 and len(data) == 2 and data[0]["task"] == "ask"
    assert data[0]["prompt"].endswith("who is angry?")

    text = invoke(
        [
            "story",
            tree / "in" / "a.wav",
            "-f",
            "text",
            "-o",
            tmp_path / "story.txt",
            *model_flags,
            *FAST,
        ]
    )
    assert (
        text.exit_code == 0
        and text.stdout == ""
        and (tmp_path / "story.txt").read_text().endswith("\n")
    )

    for args, task, needle in (
        (["reason"], "reason", "reasoning"),
        (["reason", "--question", "Is it raining?"], "reason", "Is it raining?"),
        (["prompt", "--template", "eval.keywords"], "eval.keywords", "three keywords"),
        (["prompt", "--text", "Count the {beeps}."], "prompt", "Count the {beeps}."),
        (["translate", "--to", "fr"], "translate", "French"),
    ):
        result = invoke([*args, tree / "in" / "a.wav", *model_flags, *FAST])
        (record,) = jsonl(result.stdout)
        assert result.exit_code == 0, result.output
        assert record["task"] == task and needle in record["prompt"]
        assert record["prompt"].startswith("<Speech><SpeechHere></Speech> ")


def test_default_beam_search_with_batching(tree, model_flags):
    args = [
        "transcribe",
        tree / "in" / "a.wav",
        tree / "in" / "sub" / "a.wav",
        *model_flags,
        "--device",
        "cpu",
        "--max-new-tokens",
        "4",
        "--batch-size",
        "2",
    ]
    result = invoke(args)
    records = jsonl(result.stdout)
    assert result.exit_code == 0 and records[0]["options"]["generation"]["num_beams"] == 4
    alone = jsonl(invoke([*args[:2], *args[3:]]).stdout)[0]
    assert alone["text"] == records[0]["text"]  # batching does not change an item's answer


@pytest.mark.parametrize(
    "task, question", [(["prompt", "--text", "Describe the audio."], []), (["ask"], ["Who?"])]
)
def test_seeded_sampling_does_not_depend_on_the_batch_size(tree, model_flags, task, question):
    """Every chunk (and the whole-recording pass) draws from its own generator seeded with
    --seed, so a sampled run gives the same records whatever --batch-size."""
    files = [tree / "long.wav", tree / "in" / "a.wav"]  # 3 chunks + 1
    sampled = [*FAST, "--max-new-tokens", "6", "--do-sample", "--temperature", "1.5"]

    def records(*flags):
        result = invoke([*task, *model_flags, *sampled, *flags, *files, *question])
        assert result.exit_code == 0, result.output
        return [(r["text"], r["segments"]) for r in jsonl(result.stdout)]

    one = records("--seed", "3", "--batch-size", "1")
    assert len(one[0][1]) == 3 and all(text for text, _ in one)
    assert records("--seed", "3", "--batch-size", "4") == one


def test_output_dir_mirrors_the_tree_and_resume(tree, model_flags, tmp_path):
    out = tmp_path / "out"
    result = invoke(["transcribe", tree / "in", "-o", f"{out}/", *model_flags, *FAST])
    assert result.exit_code == 1 and result.stdout == ""
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["a.jsonl", "bad.jsonl", "sub/a.jsonl"]
    assert jsonl((out / "bad.jsonl").read_text())[0]["error"]
    assert jsonl((out / "sub" / "a.jsonl").read_text())[0]["duration"] == 3.0

    (out / "sub" / "a.jsonl").unlink()
    again = invoke(
        ["transcribe", tree / "in", "-o", f"{out}/", "--resume", *model_flags, *FAST[:-1]]
    )
    # bad.wav's error record is still there: the run is not clean (exit 1, and it says so)
    assert again.exit_code == 1 and "2 of 3 inputs already done (1 of them failed" in again.stderr
    assert "1 input failed in an earlier run" in again.stderr
    assert (out / "sub" / "a.jsonl").is_file()

    srt_out, srt_in = tmp_path / "srt", [tree / "in" / "sub" / "a.wav", tree / "in" / "bad.wav"]
    invoke(["transcribe", *srt_in, "-o", f"{srt_out}/", "-f", "srt", *model_flags, *FAST])
    assert [p.name for p in srt_out.rglob("*.srt")] == [
        "a.srt"
    ]  # no subtitle file for the failed input
    redo = invoke(
        [
            "transcribe",
            *srt_in,
            "-o",
            f"{srt_out}/",
            "-f",
            "srt",
            "--resume",
            *model_flags,
            *FAST[:-1],
        ]
    )
    assert redo.exit_code == 1 and "2 of 2 inputs already done" in redo.stderr
    assert "1 input failed in an earlier run" in redo.stderr


def test_resume_a_jsonl_file_cut_mid_line(tree, model_flags, tmp_path):
    out = tmp_path / "all.jsonl"
    first = invoke(["transcribe", tree / "in", "-o", out, *model_flags, *FAST])
    assert first.exit_code == 1
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][:25])  # killed while writing the second record
    again = invoke(["transcribe", tree / "in", "-o", out, "--resume", *model_flags, *FAST])
    records = jsonl(out.read_text())
    assert again.exit_code == 1  # bad.wav is done again and fails again
    assert sorted(r["path"] for r in records) == sorted(json.loads(x)["path"] for x in lines)
    assert out.read_text().startswith(lines[0])


def test_shards_partition_the_inputs(tree, model_flags):
    seen = []
    for k in (1, 2):
        result = invoke(["transcribe", tree / "in", "--shard", f"{k}/2", *model_flags, *FAST])
        seen.append([r["path"] for r in jsonl(result.stdout)])
    assert len(seen[0]) == 2 and len(seen[1]) == 1
    assert sorted(seen[0] + seen[1]) == sorted(
        str(tree / "in" / n) for n in ("a.wav", "bad.wav", "sub/a.wav")
    )


def test_output_names_never_collide():
    class Item:
        def __init__(self, path, relpath):
            self.path, self.relpath = path, relpath

    items = [
        Item("x/a.wav", "a.wav"),
        Item("y/a.wav", "a.wav"),
        Item("d/b.wav", "b.wav"),
        Item("d/b.mp3", "b.mp3"),
        Item("d/s/c.flac", "s/c.flac"),
        Item("-", "-"),
    ]
    names = output_names(items, ".jsonl")
    assert names == [
        "x/a.jsonl",
        "y/a.jsonl",
        "b.wav.jsonl",
        "b.mp3.jsonl",
        "s/c.jsonl",
        "stdin.jsonl",
    ]


# ---------------------------------------------------------------------------------------- settings


def test_settings_precedence_flag_env_file_default(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        'whisper = "w_file"\nbeats = "/abs/b_file"\nllm = "l_file"\nbatch_size = 3\nfoo = 1\n'
    )
    env = {"SALMONN_BEATS": "b_env", "SALMONN_LLM": "l_env"}
    warnings = []
    s = resolve({"llm": "l_flag"}, env=env, config_file=config, warn=warnings.append)
    assert (s["llm"].value, s["llm"].origin) == ("l_flag", "flag")
    assert (s["beats"].value, s["beats"].origin) == ("b_env", "env SALMONN_BEATS")
    assert s["whisper"].value == str(tmp_path / "w_file") and s["whisper"].origin.startswith(
        "config"
    )
    assert (
        s["batch_size"].value == 3
        and s["model"].value == "salmonn-7b"
        and s["model"].origin == "default"
    )
    assert s["checkpoint"].value is None and "foo" in warnings[0]


def test_config_file_and_env_give_the_model(tree, tiny_paths, tmp_path, monkeypatch):
    config = tmp_path / "xdg" / "salmonn" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        f'whisper = "{tiny_paths.whisper}"\nllm = "{tiny_paths.llm}"\ndevice = "cpu"\n'
        f'checkpoint = "/nonexistent.pth"\nbatch_size = 2\n'
    )
    monkeypatch.setenv("SALMONN_BEATS", tiny_paths.beats)
    monkeypatch.setenv("SALMONN_CHECKPOINT", tiny_paths.checkpoint)  # env beats the file
    doctor = invoke(["doctor"])
    assert doctor.exit_code == 0, doctor.output
    assert re.search(r"beats .*\[env SALMONN_BEATS\]", doctor.stdout)
    assert re.search(r"whisper .*\[config .*config.toml\]", doctor.stdout)
    assert re.search(r"match +ok", doctor.stdout) and re.search(r"ffmpeg +ok", doctor.stdout)
    result = invoke(
        ["transcribe", tree / "in" / "a.wav", "--max-new-tokens", "4", "--num-beams", "1"]
    )
    (record,) = jsonl(result.stdout)
    assert result.exit_code == 0 and record["model"]["checkpoint"] == tiny_paths.checkpoint

    monkeypatch.setenv("SALMONN_CHECKPOINT", "/nonexistent/salmonn.pth")
    failed = invoke(["transcribe", tree / "in" / "a.wav", "--max-new-tokens", "4"])
    assert (
        failed.exit_code == 1 and failed.stderr.count("\n") == 1 and "nonexistent" in failed.stderr
    )
    monkeypatch.setenv("SALMONN_DEBUG", "1")
    with pytest.raises(Exception, match="nonexistent"):
        invoke(
            ["transcribe", tree / "in" / "a.wav", "--max-new-tokens", "4"], catch_exceptions=False
        )


# ------------------------------------------------------------------------------ helpers and usage


def test_prompts_list_show_and_validation(tmp_path, monkeypatch, tree):
    listed = invoke(["prompts"])
    assert listed.exit_code == 0
    for name in (
        "transcribe.en",
        "translate.any",
        "caption.music",
        "ask",
        "reason.question",
        "summary.ask",
    ):
        assert re.search(rf"^{re.escape(name)} ", listed.stdout, re.MULTILINE)
    shown = invoke(["prompts", "transcribe.zh"])
    assert "请将语音中的内容写下来。" in shown.stdout

    user = tmp_path / "prompts"
    user.mkdir()
    (user / "mine.json").write_text(
        json.dumps(
            {"task": "mine", "templates": {"mine.twice": {"text": "<SpeechHere> and <SpeechHere>"}}}
        )
    )
    monkeypatch.setenv("SALMONN_PROMPTS_DIR", str(user))
    broken = invoke(["prompts"])
    assert (  # a broken template file is a usage error everywhere (exit 2), as for the tasks
        broken.exit_code == 2 and "mine.twice" in broken.stderr and "<SpeechHere>" in broken.stderr
    )
    run = invoke(["transcribe", tree / "in" / "a.wav"])
    assert run.exit_code == 2 and "mine.twice" in run.stderr

    (user / "mine.json").write_text(
        json.dumps(
            {
                "task": "mine",
                "templates": {
                    "mine.emotion": {"text": "<Speech><SpeechHere></Speech> How does {who} feel?"}
                },
            }
        )
    )
    assert "mine.emotion" in invoke(["prompts"]).stdout
    missing = invoke(["prompt", "--template", "mine.emotion", tree / "in" / "a.wav"])
    assert missing.exit_code == 2 and "missing variable(s) who" in missing.stderr
    unknown = invoke(["prompt", "--template", "transcribe", tree / "in" / "a.wav"])
    assert unknown.exit_code == 2 and "did you mean" in unknown.stderr
    text_kind = invoke(["prompt", "--template", "summary.ask", tree / "in" / "a.wav"])
    assert text_kind.exit_code == 2 and "text template" in text_kind.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["transcribe", "/nonexistent/x.wav"], "nonexistent"),
        (["transcribe"], "no inputs: give PATH... (files, folders, globs, - for standard input)"),
        (["ask", "{in}"], "missing the QUESTION after the audio"),
        (["transcribe", "{in}", "--shard", "3/2"], "K <= N"),
        (["transcribe", "{in}", "--num-beams", "0"], "--num-beams must be >= 1"),
        (["transcribe", "{in}", "--resume"], "--resume needs -o"),
        (["transcribe", "{in}", "--resume", "-o", "x.txt", "-f", "text"], "--format jsonl"),
        (["prompt", "{in}"], "exactly one of"),
        (["transcribe", "{in}", "--load-in-8bit", "--load-in-4bit"], "choose one"),
        (["transcribe", "{empty}"], "no audio or video files"),
        (["transcribe", "{in}", "--model", "salmonn-1b"], "unknown model 'salmonn-1b' (flag)"),
    ],
)
def test_usage_errors_exit_2(args, needle, tree, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [a.format(**{"in": tree / "in", "empty": tmp_path / "empty"}) for a in args]
    result = invoke(args)
    assert result.exit_code == 2 and needle in result.stderr and result.stdout == ""


def test_dev_tiny_model_writes_a_loadable_model(tmp_path, tree):
    result = invoke(["dev", "tiny-model", tmp_path / "tiny", "--seed", "1"])
    assert result.exit_code == 0, result.output
    paths = json.loads(result.stdout)
    assert all(Path(paths[k]).exists() for k in ("whisper", "beats", "llm", "checkpoint"))
    run = invoke(
        [
            "caption",
            tree / "in" / "a.wav",
            *FAST,
            "--whisper",
            paths["whisper"],
            "--beats",
            paths["beats"],
            "--llm",
            paths["llm"],
            "--checkpoint",
            paths["checkpoint"],
        ]
    )
    assert run.exit_code == 0 and jsonl(run.stdout)[0]["error"] is None


def test_progress_bar_renders_on_a_terminal(tmp_path):
    import io

    from rich.console import Console

    from salmonn.jobs.spec import ProgressEvent
    from salmonn_cli.progress import Reporter

    clip = tmp_path / "a.wav"
    sf.write(clip, np.zeros(16_000 * 120, np.float32), 16_000)
    buffer = io.StringIO()
    reporter = Reporter(console=Console(file=buffer, force_terminal=True, width=160))
    with reporter:
        reporter.expect([str(clip)] * 4)
        reporter._durations._thread.join(timeout=30)
        reporter.status("running")
        reporter(
            ProgressEvent(
                "batch", files_total=4, files_done=1, chunks_done=3, audio_seconds=90.0, elapsed=3.0
            )
        )
        reporter.error("x.wav: broken")
    out = buffer.getvalue()
    assert "1:30/8:00 audio  1/4 files 30.0x  ETA 0:13" in out  # (480 - 90) s at 30 audio s/s
    assert "error: x.wav: broken" in out
    assert out.rstrip().endswith("done: 1 file, 1:30 of audio in 0:03 (30.0x real time)")


def test_bad_environment_value_is_a_usage_error(tree, monkeypatch):
    monkeypatch.setenv("SALMONN_BATCH_SIZE", "many")
    result = invoke(["transcribe", tree / "in" / "a.wav"])
    assert result.exit_code == 2 and "env SALMONN_BATCH_SIZE" in result.stderr
    config = Path(str(tree)).parent / "cfg.toml"
    config.write_text("batch_size = [")
    monkeypatch.delenv("SALMONN_BATCH_SIZE")
    monkeypatch.setenv("SALMONN_CONFIG", str(config))
    broken = invoke(["doctor"])
    assert broken.exit_code == 2 and "cfg.toml" in broken.stderr
