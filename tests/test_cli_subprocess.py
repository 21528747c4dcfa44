"""The installed ``salmonn`` console script in real subprocesses: start-up without torch, kill -9 + --resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FfmpegGate, cli_env, jsonl, line_count, salmonn_command, tone, wait_until

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
from salmonn_cli.main import cli
try:
    cli.main(sys.argv[1:], prog_name="salmonn")
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "transformers", "numpy", "peft") if m in sys.modules)
print("@@" + json.dumps({"code": code, "heavy": heavy, "seconds": time.perf_counter() - t0}), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args, code",
    [
        (["--help"], 0),
        (["transcribe", "--help"], 0),
        (["prompts"], 0),
        (["prompts", "ask"], 0),
        (["transcribe", "/nonexistent/x.wav"], 2),
        (["transcribe", "x.wav", "--num-beams", "0"], 2),
        (["ask", "x.wav"], 2),
        (["transcribe", "x.wav", "--model", "salmonn-1b"], 2),
        (["translate", "x.wav"], 2),
        (["prompt", "--template", "nope", "x.wav"], 2),
    ],
)
def test_help_prompts_and_usage_errors_do_not_import_torch(args, code):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    report = json.loads(out.stderr.rsplit("@@", 1)[1])
    assert report["code"] == code, out.stderr
    assert report["heavy"] == [], f"{args} imported {report['heavy']}"


def test_console_script_help_is_fast():
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        out = subprocess.run(
            [*salmonn_command(), "--help"],
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=60,
            check=False,
        )
        best = min(best, time.perf_counter() - t0)
        assert out.returncode == 0 and "transcribe" in out.stdout and out.stderr == ""
    assert best < 3.0, f"salmonn --help took {best:.2f} s"


@pytest.fixture()
def six_files(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(5):
        tone(folder / f"c{i}.wav", 1.5 + 0.25 * i, 200 + 90 * i)
    (folder / "c2_broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    return folder


def test_kill_9_mid_run_then_resume_gives_one_record_per_input(six_files, model_flags, tmp_path):
    out = tmp_path / "out.jsonl"
    args = [
        *salmonn_command(),
        "transcribe",
        str(six_files),
        "-o",
        str(out),
        "--batch-size",
        "1",
        *model_flags,
        "--device",
        "cpu",
        "--max-new-tokens",
        "4",
        "--num-beams",
        "1",
    ]
    # c2.wav's decoding waits at the gate, so the kill lands mid-run however loaded the machine is
    # (polling for a first record, then killing, raced the end of the run): records of inputs before
    # c2 may be written meanwhile, none after it can be
    gate = FfmpegGate(tmp_path / "gate", hold="c2.wav")
    log = tmp_path / "first.err"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=stderr, env=cli_env(**gate.env)
        )
    try:
        wait_until(
            lambda: gate.held() and line_count(out) >= 1,
            300,
            "a first record with the run held at c2.wav",
            alive=lambda: proc.poll() is None,
        )
    except AssertionError as err:
        proc.kill()
        proc.wait(timeout=60)
        raise AssertionError(f"{err}: {log.read_text(errors='replace')[-2000:]}") from None
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    first = out.read_text(encoding="utf-8")
    assert first.endswith("\n")  # only whole lines
    before = [Path(json.loads(line)["path"]).name for line in first.splitlines()]
    assert before in (["c0.wav"], ["c0.wav", "c1.wav"])

    done = subprocess.run(
        [*args, "--resume"], capture_output=True, text=True, env=cli_env(), timeout=300, check=False
    )
    assert done.returncode == 1, done.stderr  # the broken file fails, the others succeed
    assert done.stdout == ""
    assert (
        f"resume: {len(before)} of 6 inputs already done" in done.stderr
        and "c2_broken.wav" in done.stderr
    )
    records = jsonl(out.read_text(encoding="utf-8"))
    names = [Path(r["path"]).name for r in records]
    assert sorted(names) == sorted(
        p.name for p in six_files.iterdir()
    )  # exactly one record per input
    assert [r["error"] is not None for r in records].count(True) == 1
    assert out.read_text(encoding="utf-8").startswith(first)


def test_a_finished_file_is_written_while_the_next_input_is_still_decoding(model_flags, tmp_path):
    # first.wav's one chunk cannot fill a batch of 8; the run decodes it while second.wav's ffmpeg
    # is held, so first.wav's record is on disk before the next input has a single chunk (it once
    # waited for a full batch or the end of the inputs: an interrupt there lost a finished answer)
    first = tone(tmp_path / "clips" / "first.wav", 1.5, 330)
    second = tone(tmp_path / "clips" / "second.wav", 2.0, 520)
    out = tmp_path / "out.jsonl"
    command = [*salmonn_command(), "transcribe", str(first), str(second), "-o"]
    settings = [*model_flags, "--device", "cpu", "--max-new-tokens", "4", "--num-beams", "1"]
    gate = FfmpegGate(tmp_path / "gate", hold="second.wav")
    log = tmp_path / "held.err"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [*command, str(out), "--batch-size", "8", *settings],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=cli_env(**gate.env),
        )
    try:
        try:
            wait_until(
                lambda: gate.held() and line_count(out) >= 1,
                300,
                "first.wav's record with second.wav's decoding held",
                alive=lambda: proc.poll() is None,
            )
        except AssertionError as err:
            raise AssertionError(f"{err}: {log.read_text(errors='replace')[-2000:]}") from None
        assert proc.poll() is None  # still held at second.wav: nothing of it could be decoded
        (held,) = jsonl(out.read_text(encoding="utf-8"))
        assert Path(held["path"]).name == "first.wav" and held["error"] is None
        gate.open()
        assert proc.wait(timeout=300) == 0, log.read_text(errors="replace")[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    records = jsonl(out.read_text(encoding="utf-8"))
    assert [Path(r["path"]).name for r in records] == ["first.wav", "second.wav"]
    assert records[0] == held
    # the same answers as a run that never waits (one chunk per batch: each answered alone)
    alone = tmp_path / "alone.jsonl"
    done = subprocess.run(
        [*command, str(alone), "--batch-size", "1", *settings],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [r["text"] for r in jsonl(alone.read_text(encoding="utf-8"))] == [
        r["text"] for r in records
    ]
    assert all(r["text"] for r in records)
