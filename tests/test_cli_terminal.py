"""The real ``salmonn`` console script with its stderr (and sometimes stdout) on a pseudo-terminal.

What a user sees in a terminal: the progress bar on stderr must never capture or wrap the data on
stdout, logs print above the bar, the bar counts audio seconds and ends with a ``done`` line.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FfmpegGate, cli_env, line_count, salmonn_command, tone

FAST = ["--max-new-tokens", "4", "--num-beams", "1", "--device", "cpu"]
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def env() -> dict[str, str]:
    return cli_env(TERM="xterm-256color", COLUMNS="120", LINES="40")


def run_in_pty(args, *, stdout=None, stdin=subprocess.DEVNULL, timeout=180.0, extra_env=None):
    """Run ``salmonn ARGS`` with stderr on a new pty; ``stdout``: a file object, ``"pty"`` or ``"pipe"``.

    Returns ``(returncode, bytes the terminal got, bytes of the stdout pipe or b"")``.
    """
    master, slave = os.openpty()
    out = slave if stdout == "pty" else subprocess.PIPE if stdout == "pipe" else stdout
    proc = subprocess.Popen(
        [*salmonn_command(), *map(str, args)],
        stdin=stdin,
        stdout=out,
        stderr=slave,
        env={**env(), **(extra_env or {})},
    )
    os.close(slave)
    seen, piped = bytearray(), bytearray()
    streams = [master] + ([proc.stdout.fileno()] if proc.stdout else [])
    deadline = time.monotonic() + timeout
    while streams and time.monotonic() < deadline:
        ready, _, _ = select.select(streams, [], [], 0.2)
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the pty's other side is closed
                data = b""
            if not data:
                streams.remove(fd)
            else:
                (seen if fd == master else piped).extend(data)
        if not ready and proc.poll() is not None and master not in streams:
            break
    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    os.close(master)
    if proc.stdout:
        proc.stdout.close()
    return proc.returncode, bytes(seen), bytes(piped)


def visible(raw: bytes) -> str:
    return ANSI.sub(b"", raw).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("terminal-clips")
    return {
        "short": tone(folder / "short.wav", 2.0, 330.0),
        "other": tone(folder / "other.wav", 3.0, 520.0),
        "long": tone(folder / "long.wav", 70.0, 330.0),
    }


def test_records_reach_a_redirected_stdout_not_the_terminal(clips, model_flags, tmp_path):
    target = tmp_path / "out.jsonl"
    with open(target, "wb") as stdout:
        code, terminal, _ = run_in_pty(
            ["transcribe", clips["short"], clips["other"], *FAST, *model_flags], stdout=stdout
        )
    assert code == 0, visible(terminal)
    records = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [Path(r["path"]).name for r in records] == ["short.wav", "other.wav"]
    assert all(r["error"] is None for r in records)
    assert b'"schema_version"' not in terminal  # no record on the terminal
    assert "running" in visible(terminal) or "done" in visible(terminal)  # the bar was there


def test_text_into_a_pipe_with_the_bar_on_the_terminal(clips, model_flags):
    code, terminal, piped = run_in_pty(
        ["transcribe", clips["short"], "-f", "text", *FAST, *model_flags], stdout="pipe"
    )
    assert code == 0, visible(terminal)
    assert piped.endswith(b"\n") and piped.strip()  # the transcript went down the pipe
    assert piped.count(b"\n") == 1 + piped.strip().count(b"\n")
    assert "done: 1 file" in visible(terminal)


def test_records_on_a_terminal_stdout_stay_whole_lines(clips, model_flags):
    # stdout and stderr on the same terminal: the bar steps aside, the record is not hard-wrapped
    code, terminal, _ = run_in_pty(
        ["transcribe", clips["short"], *FAST, *model_flags], stdout="pty"
    )
    assert code == 0, visible(terminal)
    text = visible(terminal)
    start = text.index('{"path"')
    line = text[start:].split("\r\n", 1)[0]
    record = json.loads(line)  # one physical line: nothing inserted line breaks
    assert Path(record["path"]).name == "short.wav" and len(line) > 120


def test_bar_counts_audio_seconds_and_ends_with_done(clips, model_flags):
    code, terminal, _ = run_in_pty(
        ["transcribe", clips["long"], clips["short"], "-q", *FAST, *model_flags], stdout="pipe"
    )
    assert code == 0 and "done" not in visible(terminal)  # -q: no bar, no done line
    code, terminal, _ = run_in_pty(
        ["transcribe", clips["long"], clips["short"], "--batch-size", "1", *FAST, *model_flags],
        stdout="pipe",
    )
    assert code == 0, visible(terminal)
    text = visible(terminal)
    # the total (72 s) is known from the probed durations while the first file still runs
    assert re.search(r"0:[0-5]\d/1:12 audio\s+0/2 files", text), text[-2000:]
    assert re.search(r"ETA \d+:\d\d", text)
    last = text.rstrip().splitlines()[-1]
    assert re.fullmatch(r"done: 2 files, 1:12 of audio in \d+:\d\d \(\d+\.\dx real time\)", last)


def test_a_broken_input_keeps_the_total_and_is_counted_once(clips, model_flags, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_text("this is not audio")
    args = ["transcribe", clips["long"], broken, clips["short"], "--batch-size", "1", *FAST]
    code, terminal, _ = run_in_pty([*args, *model_flags], stdout="pipe")
    assert code == 1, visible(terminal)
    text = visible(terminal)
    # the good inputs' 72 s stay the total while the first file runs
    assert re.search(r"0:[0-5]\d/1:12 audio\s+0/3 files", text), text[-2000:]
    assert "done: 3 files (1 failed)" in text
    assert "inputs failed" not in text  # said once, by the done line


def test_verbose_logs_print_above_the_bar_without_weight_bars(clips, model_flags):
    # a 30.5 s file cut at 30 s leaves a 0.5 s tail, which is padded and logged at INFO
    code, terminal, _ = run_in_pty(
        ["transcribe", clips["long"], "-v", "--chunk-strategy", "fixed", *FAST, *model_flags],
        stdout="pipe",
    )
    assert code == 0, visible(terminal)
    text = visible(terminal)
    assert "Loading weights" not in text and "it/s" not in text
    logs = [m.start() for m in re.finditer(r"\d\d:\d\d:\d\d INFO salmonn", text)]
    assert logs, text[-2000:]
    for at in logs:
        # a log written past the bar would share the bar's line (and be erased by its redraw)
        same_line = re.split(r"[\r\n]", text[:at])[-1]
        assert "━" not in same_line and "ETA" not in same_line, repr(text[at - 200 : at + 80])


def test_library_load_model_prints_no_progress_bar(tiny_paths):
    script = (
        "from salmonn.hub.load import load_model\n"
        f"load_model(whisper={str(tiny_paths.whisper)!r}, beats={str(tiny_paths.beats)!r},"
        f" llm={str(tiny_paths.llm)!r}, checkpoint={str(tiny_paths.checkpoint)!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env(),
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "it/s" not in done.stderr


def test_control_characters_in_names_do_not_reach_the_terminal(clips, model_flags, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "bad\x1b]0;pwned\x07\x1b[2J.wav").write_bytes(b"RIFF\x00\x00garbage")
    shutil.copy(clips["short"], folder / "good.wav")
    for quiet in ([], ["-q"]):
        code, terminal, _ = run_in_pty(
            ["transcribe", folder, *quiet, *FAST, *model_flags], stdout="pipe"
        )
        assert code == 1, visible(terminal)
        assert b"\x1b]0;pwned" not in terminal and b"\x1b[2J" not in terminal
        assert "error: " in visible(terminal) and "pwned" in visible(terminal)


def test_ctrl_c_exits_130_keeps_finished_records_and_resumes(clips, model_flags, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(6):
        tone(folder / f"c{i}.wav", 4.0 + i, 200.0 + 60 * i)
    out = tmp_path / "out.jsonl"
    args = ["transcribe", folder, "-o", out, "--batch-size", "1", *FAST, *model_flags]
    # c3.wav's decoding waits at the gate: the interrupt lands mid-run however loaded the machine is
    gate = FfmpegGate(tmp_path / "gate", hold="c3.wav")
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [*salmonn_command(), *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env={**env(), **gate.env},
        process_group=0,  # its own group, as a terminal's foreground job
    )
    os.close(slave)
    seen = bytearray()
    deadline = time.monotonic() + 300
    while not (gate.held() and line_count(out) >= 1):
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, f"no record after 300 s: {visible(bytes(seen))}"
        if select.select([master], [], [], 0.05)[0]:
            seen.extend(os.read(master, 65536))
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    while True:
        try:
            ready = select.select([master], [], [], 30)[0]
            data = os.read(master, 65536) if ready else b""
        except OSError:
            data = b""
        if not data:
            break
        seen.extend(data)
    code = proc.wait(timeout=60)
    os.close(master)
    text = visible(bytes(seen))
    assert code == 130, text
    assert "Traceback" not in text and "Aborted" not in text
    lines = [line for line in re.split(r"[\r\n]+", text) if "interrupt" in line.lower()]
    assert len(lines) == 1, text
    first = out.read_text(encoding="utf-8")
    records = [json.loads(line) for line in first.splitlines() if line.strip()]
    assert 1 <= len(records) <= 3 and first.endswith("\n")  # inputs before the held c3.wav
    assert all(r["error"] is None for r in records)  # no input marked failed by the interrupt
    # a line torn by the interrupt is cut by --resume, which then finishes the folder
    with open(out, "a", encoding="utf-8") as stream:
        stream.write('{"path": "torn')
    code, terminal, _ = run_in_pty([*args, "--resume"], stdout="pipe")
    assert code == 0, visible(terminal)
    final = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(Path(r["path"]).name for r in final) == [f"c{i}.wav" for i in range(6)]
    assert all(r["error"] is None for r in final)
