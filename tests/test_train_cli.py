"""``salmonn train``, end to end: it learns (and ``salmonn prompt`` answers with what it learned),
torchrun with two CPU processes equals one process, kill -9 then --resume equals the uninterrupted
run, Ctrl-C leaves only complete files, bad data lines are listed before any step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import cli_env, invoke, jsonl, tone, wait_until

from salmonn.model.checkpoint import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread", "clean_salmonn_env")

TARGETS = ["A dog barks twice.", "Rain on the roof.", "Two people talk."]
FAST = ["--warmup-steps", "0", "--dropout", "0", "-q"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train-data")
    rows = []
    for i, target in enumerate(TARGETS):
        tone(folder / f"clip{i}.wav", 1.0 + 0.4 * i, freq=250.0 * (i + 1), wobble_hz=2.0 * i)
        rows.append({"audio": f"clip{i}.wav", "prompt": "Describe the audio.", "target": target})
    path = folder / "data.jsonl"
    path.write_text("\n".join(map(json.dumps, rows)) + "\n", encoding="utf-8")
    return path


def _metrics(out: Path) -> list[dict]:
    return jsonl((out / "metrics.jsonl").read_text("utf-8"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)


def _subprocess_env() -> dict[str, str]:
    return cli_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def test_it_learns_and_prompt_answers_with_the_targets(data_file, model_flags, tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        data_file,
        "-o",
        out,
        *model_flags,
        "--max-steps",
        "60",
        "--batch-size",
        "3",
        "--lr",
        "1e-2",
        "--min-lr",
        "1e-2",
        "--cache-encoder-outputs",
        "--eval-data",
        data_file,
        "--eval-every",
        "60",
        *FAST,
    ]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    metrics = _metrics(out)
    train = [m for m in metrics if m.get("split") != "eval"]
    assert [m["step"] for m in train] == list(range(1, 61))
    assert {"loss", "lr", "examples_per_s", "grad_norm"} <= set(train[0])
    assert train[-1]["loss"] < 0.2 * train[0]["loss"]
    (evaluated,) = [m for m in metrics if m.get("split") == "eval"]
    assert evaluated["step"] == 60 and evaluated["accuracy"] > 0.9
    assert (out / "salmonn.pth").is_file() and (out / "checkpoint-60" / "salmonn.pth").is_file()
    flags = [*model_flags[:-1], str(out / "salmonn.pth")]  # --checkpoint: the trained weights
    clips = [str(data_file.parent / f"clip{i}.wav") for i in range(3)]
    answered = invoke(
        [
            "prompt",
            *clips,
            "--text",
            "Describe the audio.",
            "--num-beams",
            "1",
            *flags,
            "-q",
            "-f",
            "jsonl",
        ]
    )
    assert answered.exit_code == 0, answered.output
    assert [r["text"] for r in jsonl(answered.stdout)] == TARGETS


def test_two_processes_under_torchrun_equal_one_process(data_file, model_flags, tmp_path):
    common = [data_file, *model_flags, "--max-steps", "2", "--lr", "1e-3", *FAST]
    one = tmp_path / "one"
    result = invoke(["train", *common, "-o", one, "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    two = tmp_path / "two"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--standalone",
            "-m",
            "salmonn_cli",
            "train",
            *map(str, common),
            "-o",
            str(two),
            "--batch-size",
            "1",
        ],
        env=_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,  # its workers with it: a timeout stops them all
    )
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    for a, b in zip(_metrics(one), _metrics(two), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    state = json.loads((two / "checkpoint-2" / "trainer_state.json").read_text("utf-8"))
    assert state["global_batch"] == 2 and state["settings"]["processes"] == 2
    a, b = _weights(one / "salmonn.pth"), _weights(two / "salmonn.pth")
    for key in a:  # AdamW's first steps scale rounding of near-zero gradients up to lr
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-3)


def test_resume_after_kill_9_equals_the_uninterrupted_run(data_file, model_flags, tmp_path):
    common = [
        data_file,
        *model_flags,
        "--max-steps",
        "6",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "2",
        "--dropout",
        "0.1",
        "--save-every",
        "1",
        "-q",
    ]
    whole = tmp_path / "whole"
    result = invoke(["train", *common, "-o", whole])
    assert result.exit_code == 0, result.output
    cut = tmp_path / "cut"
    command = [sys.executable, "-m", "salmonn_cli", "train", *map(str, common), "-o", str(cut)]
    proc = subprocess.Popen(command, env=_subprocess_env(), stderr=subprocess.PIPE)
    try:
        wait_until(
            lambda: (cut / "checkpoint-3").is_dir(),
            180,
            "checkpoint-3",
            alive=lambda: proc.poll() is None,
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert not (cut / "salmonn.pth").exists()
    resumed = subprocess.run(
        [*command, "--resume"],
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(whole / "salmonn.pth"), _weights(cut / "salmonn.pth")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)
    steps = [m["step"] for m in _metrics(cut)]
    assert steps == list(range(1, 7))  # lines of steps after the checkpoint are not repeated
    assert not [p for p in cut.iterdir() if p.name.startswith(".")]


def test_ctrl_c_exits_130_and_leaves_only_complete_checkpoints(data_file, model_flags, tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "salmonn_cli",
        "train",
        str(data_file),
        "-o",
        str(out),
        *model_flags,
        "--max-steps",
        "500",
        "--save-every",
        "1",
        *FAST,
    ]
    proc = subprocess.Popen(command, env=_subprocess_env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_until(
            lambda: (out / "checkpoint-2").is_dir(),
            180,
            "checkpoint-2",
            alive=lambda: proc.poll() is None,
        )
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert not (out / "salmonn.pth").exists()
    for folder in out.glob("checkpoint-*"):
        assert {p.name for p in folder.iterdir()} == {
            "salmonn.pth",
            "optimizer.pt",
            "rng.pt",
            "trainer_state.json",
        }
        read_checkpoint(folder / "salmonn.pth")
    again = invoke(["train", data_file, "-o", out, *model_flags, "--max-steps", "1", *FAST])
    assert again.exit_code == 2 and "--resume" in again.output


def test_bad_lines_are_listed_before_any_step(data_file, model_flags, tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = json.loads(data_file.read_text("utf-8").splitlines()[0])
    good["audio"] = str(data_file.parent / good["audio"])
    rows = [
        good,
        {**good, "audio": str(tmp_path / "gone.wav")},
        {"audio": good["audio"]},
        {**good, "prompt": None, "task": "no_such_task"},
    ]
    bad.write_text("\n".join(map(json.dumps, rows)) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    result = invoke(["train", bad, "-o", out, *model_flags, "--max-steps", "1", *FAST])
    assert result.exit_code == 1
    assert "3 bad line(s)" in result.output
    for number, word in ((2, "gone.wav"), (3, "target"), (4, "no_such_task")):
        assert any(
            f"line {number}:" in line and word in line for line in result.output.splitlines()
        )
    assert not out.exists() or not list(out.iterdir())
    skipped = invoke(
        [
            "train",
            bad,
            "-o",
            out,
            *model_flags,
            "--max-steps",
            "1",
            "--skip-bad",
            "--warmup-steps",
            "0",
            "--dropout",
            "0",
        ]
    )
    assert skipped.exit_code == 0, skipped.output
    assert "skipped 3 bad line(s)" in skipped.output
    assert os.path.isfile(out / "salmonn.pth")
