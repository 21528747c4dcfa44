"""``--ray``: a real local Ray (one for the module) running the tiny model, compared with local runs.

Covered: the same records as a local run on a folder with long, short and bad files; ``-o DIR/`` and
``--resume``; a worker process killed mid-run; the driver killed (-9) and interrupted (Ctrl-C, exit
130) then resumed; usage errors without Ray; the library call.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import helpers
import pytest
from helpers import FfmpegGate, cli_env, invoke, jsonl, line_count

FAST = ["--device", "cpu", "--max-new-tokens", "4", "--num-beams", "1", "-q"]
COMPARED = ("path", "task", "prompt", "text", "segments", "duration", "error", "options")
WORKER_TITLE = "ray::SalmonnWorker"  # the process title Ray gives our actor processes


tone = functools.partial(helpers.tone, wobble_hz=0.3)  # the clips these tests were written with


def read_jsonl(path: Path) -> list[dict]:
    # a line cut by kill -9 is not a record (--resume repairs it)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:-1]] + [
        json.loads(line)
        for line in path.read_text(encoding="utf-8").splitlines()[-1:]
        if line.endswith("}")
    ]


def same_as_local(records: list[dict], local: dict[str, dict]) -> None:
    """One record per input, each equal to the local run's in everything but timings."""
    paths = [r["path"] for r in records]
    assert sorted(paths) == sorted(local), "inputs missing or written twice"
    for record in records:
        expected = local[record["path"]]
        assert {k: record[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}


# -- processes (Linux /proc) ----------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, process title)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                title = handle.read().split(b"\0")[0].decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry)] = (parent, title)
    return table


def descendants(root: int) -> dict[int, str]:
    table = process_table()
    found, grew = {root}, True
    while grew:
        grew = False
        for pid, (parent, _) in table.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return {pid: table[pid][1] for pid in found - {root} if pid in table}


def busy_workers(root: int) -> list[int]:
    """Our actor processes under ``root`` that are running a call (not their ffmpeg children)."""
    table = process_table()
    mine = descendants(root)
    return [
        pid
        for pid, title in mine.items()
        if title.startswith(WORKER_TITLE + ".run")
        and not table.get(table[pid][0], (0, ""))[1].startswith(WORKER_TITLE)
    ]


def alive(pids) -> list[int]:
    return [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_gate(tmp_path_factory):
    """The ffmpeg of the module's Ray workers: open, until a test closes it to hold s6.wav."""
    gate = FfmpegGate(tmp_path_factory.mktemp("ray-gate"), hold="s6.wav")
    gate.open()
    return gate


@pytest.fixture(scope="module")
def ray_local(ray_gate):
    """One local Ray for the module; the CLI's ``--ray local`` reuses it (already connected).
    Its workers inherit this environment, ``ray_gate``'s ffmpeg included."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")  # a throw-away cluster on this machine
        for name, value in ray_gate.env.items():
            patch.setenv(name, value)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """long.wav (75 s: 3 chunks and the whole-recording pass), eight short clips, a bad file."""
    root = tmp_path_factory.mktemp("ray-audio") / "in"
    tone(root / "long.wav", 75.0, 180.0)
    for i in range(8):
        tone(root / "short" / f"s{i}.wav", 1.5 + 0.5 * i, 220.0 + 35 * i)
    (root / "short" / "bad.wav").write_text("this is not audio")
    return root


@pytest.fixture(scope="module")
def task_args(folder, model_flags):
    return ["caption", folder, *model_flags, *FAST, "--batch-size", "2"]


@pytest.fixture(scope="module")
def local(task_args):
    """The local run's records by path."""
    result = invoke(task_args)
    assert result.exit_code == 1, result.output
    records = jsonl(result.stdout)
    assert len(records) == 10 and sum(r["error"] is not None for r in records) == 1
    assert len(records[0]["segments"]) == 3  # long.wav: three chunks, one whole-file answer
    return {r["path"]: r for r in records}


# -- tests ----------------------------------------------------------------------------------------


def test_same_records_as_local_into_a_folder_then_resume(ray_local, task_args, local, tmp_path):
    out = tmp_path / "out"
    ray_args = [*task_args, "--ray", "local", "--ray-workers", "2", "-o", f"{out}/"]
    result = invoke(ray_args)
    assert result.exit_code == 1, result.output
    assert "bad.wav" in result.stderr
    files = sorted(out.rglob("*.jsonl"))
    same_as_local([r for f in files for r in read_jsonl(f)], local)

    (out / "long.jsonl").unlink()
    (out / "short" / "s3.jsonl").unlink()
    again = invoke([*ray_args, "--resume", "--ray-workers", "1"])
    # bad.wav's error record is already there: not run again, but the run is not clean either
    assert again.exit_code == 1, again.output
    assert "1 input failed in an earlier run" in again.stderr
    same_as_local([r for f in sorted(out.rglob("*.jsonl")) for r in read_jsonl(f)], local)


def test_a_killed_worker_has_its_files_handed_to_another(
    ray_local, ray_gate, task_args, local, tmp_path
):
    out = tmp_path / "out.jsonl"
    killed: list[int] = []

    def kill_a_busy_worker() -> None:
        # a worker waits on s6.wav's decoding: one is busy when the kill comes, however loaded the
        # machine is (waiting for a first record, then for a busy worker, raced the run's end)
        deadline = time.monotonic() + 300
        try:
            while time.monotonic() < deadline and not killed:
                busy = busy_workers(os.getpid()) if ray_gate.held() else []
                if busy:
                    os.kill(busy[0], signal.SIGKILL)
                    killed.append(busy[0])
                time.sleep(0.05)
        finally:
            ray_gate.open()

    ray_gate.close()
    watcher = threading.Thread(target=kill_a_busy_worker, daemon=True)
    watcher.start()
    try:
        result = invoke([*task_args, "--ray", "local", "--ray-workers", "2", "-o", out])
    finally:
        ray_gate.open()
    watcher.join(timeout=5)
    assert killed, "no worker was killed"
    assert result.exit_code == 1, result.output
    assert "handing them out again" in result.stderr
    same_as_local(read_jsonl(out), local)


def cli_process(args: list, env_extra: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "salmonn_cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(RAY_AUTH_MODE="disabled", **(env_extra or {})),
    )


def wait_for_lines(
    proc: subprocess.Popen, out: Path, count: int, gate: FfmpegGate, seconds: float = 300
) -> None:
    """Until ``out`` holds ``count`` lines and the run is held at ``gate`` (so it cannot end)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if gate.held() and line_count(out) >= count:
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {count} records in time: {proc.communicate()[1].decode()[-2000:]}")


def test_driver_killed_then_interrupted_then_resumed(ray_local, task_args, local, tmp_path):
    out = tmp_path / "out.jsonl"
    ray_args = [*task_args, "--ray", "local", "--ray-workers", "1", "-o", out]

    # each run is held at one input's decoding (in the workers, which inherit the driver's
    # environment), so the kill and the interrupt land mid-run however loaded the machine is
    gate = FfmpegGate(tmp_path / "gate1", hold="s5.wav")
    first = cli_process(ray_args, gate.env)
    wait_for_lines(first, out, 1, gate)
    family = descendants(first.pid)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    for pid in alive(family):  # Ray's helpers of a killed driver: not ours to keep
        os.kill(pid, signal.SIGKILL)
    after_kill = len(read_jsonl(out))

    done = {Path(r["path"]).name for r in read_jsonl(out)}
    assert "s5.wav" not in done  # held when killed
    last_to_do = [name for name in sorted(Path(p).name for p in local) if name not in done][-1]
    gate = FfmpegGate(tmp_path / "gate2", hold=last_to_do)
    second = cli_process([*ray_args, "--resume"], gate.env)
    wait_for_lines(second, out, after_kill + 1, gate)
    workers = [pid for pid, title in descendants(second.pid).items() if WORKER_TITLE in title]
    second.send_signal(signal.SIGINT)
    assert second.wait(timeout=120) == 130, second.communicate()[1].decode()[-2000:]
    assert workers
    deadline = time.monotonic() + 60  # Ray reaps them a moment after the driver exits
    while alive(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(workers), "the workers outlived the interrupted driver by 60 s"
    for pid in alive(descendants(second.pid)):
        os.kill(pid, signal.SIGKILL)

    last = invoke([*ray_args, "--resume"])
    assert last.exit_code in (0, 1), last.output
    same_as_local(read_jsonl(out), local)


def test_library_call_gives_the_same_records_through_whole_calls(
    ray_local, folder, tiny_paths, local, monkeypatch
):
    """The library call, and the path Ray Client (``ray://``) takes: records per call, not streamed."""
    import salmonn
    from salmonn.audio.inputs import InputItem
    from salmonn.cluster import runner as ray_runner
    from salmonn.config import GenerationOptions

    monkeypatch.setattr(ray_runner, "_client_mode", lambda ray: True)
    inputs = [folder / "short" / "bad.wav", folder / "short" / "s0.wav"]
    unseen = InputItem("/nowhere/on/this/node.wav", "/nowhere", "node.wav")  # not on shared storage
    model = {
        "whisper": tiny_paths.whisper,
        "beats": tiny_paths.beats,
        "llm": tiny_paths.llm,
        "checkpoint": tiny_paths.checkpoint,
        "device": "cpu",
    }
    events = []
    with salmonn.run_task_on_ray(
        [*inputs, unseen],
        "caption",
        model=model,
        workers=1,
        generation=GenerationOptions(max_new_tokens=4, num_beams=1),
        batch_size=2,
        on_progress=events.append,
    ) as records:
        got = [r.to_dict() for r in records]
    missing = [r for r in got if r["path"] == unseen.path]
    assert len(missing) == 1 and "storage that every node can read" in missing[0]["error"]
    same_as_local(
        [r for r in got if r["path"] != unseen.path], {str(p): local[str(p)] for p in inputs}
    )
    assert [e.kind for e in events] == ["start", "record", "record", "record"]
    assert events[-1].files_done == 3 and events[-1].files_failed == 2


PROBE = r"""
import json, sys
from salmonn_cli.main import cli
try:
    cli.main(sys.argv[1:], prog_name="salmonn")
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "transformers", "ray") if m in sys.modules)
print("@@" + json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["transcribe", "--help"], 0, ""),
        (["transcribe", "x.wav", "--ray", "nowhere"], 2, "'local', 'auto' or 'ray://HOST:PORT'"),
        (["transcribe", "x.wav", "--ray-workers", "2"], 2, "--ray-workers needs --ray"),
        (["transcribe", "-", "--ray", "local"], 2, "standard input"),
    ],
)
def test_ray_options_are_checked_before_anything_heavy(args, code, message, tmp_path):
    (tmp_path / "x.wav").write_bytes(b"")
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CONFIG_HOME": "/nonexistent"},
        timeout=60,
        check=False,
    )
    report = json.loads(out.stderr.rsplit("@@", 1)[1])
    assert report["code"] == code and message in out.stderr, out.stderr
    assert report["heavy"] == [], f"{args} imported {report['heavy']}"


def test_ray_without_the_extra_is_a_usage_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does when it is not installed
    (tmp_path / "x.wav").write_bytes(b"")
    result = invoke(["transcribe", tmp_path / "x.wav", "--ray", "local"])
    assert result.exit_code == 2
    assert "pip install 'salmonn[ray]'" in result.stderr


def test_a_model_that_does_not_load_fails_as_locally(ray_local, folder, model_flags, tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    flags = [*model_flags[:-1], broken]  # model_flags ends with the checkpoint path
    args = ["transcribe", folder / "short" / "s0.wav", *flags, *FAST, "-o", tmp_path / "o.jsonl"]
    here = invoke(args)
    there = invoke([*args, "--ray", "local"])
    assert here.exit_code == there.exit_code == 1, there.output
    message = here.stderr.strip().splitlines()[-1].removeprefix("Error: ")
    assert f"Error: Ray worker: {message}" in there.stderr  # the same error, said where
    assert not (tmp_path / "o.jsonl").exists() or not (tmp_path / "o.jsonl").read_text()


@pytest.mark.parametrize(
    "cluster, flags, expected",
    [
        ({"CPU": 64.0, "GPU": 4.0}, {}, (4, 1.0)),  # one replica per GPU
        ({"CPU": 64.0, "GPU": 4.0}, {"gpus_per_worker": 0.5}, (8, 0.5)),
        ({"CPU": 64.0, "GPU": 4.0}, {"workers": 2}, (2, 1.0)),
        ({"CPU": 64.0, "GPU": 4.0}, {"gpus_per_worker": 0.0}, (1, 0.0)),
        ({"CPU": 2.0}, {}, (1, 0.0)),  # no GPU: one CPU replica
        ({"CPU": 2.0}, {"workers": 3}, (3, 0.0)),
    ],
)
def test_default_placement_follows_the_cluster(cluster, flags, expected):
    from salmonn.cluster.runner import RayOptions

    assert RayOptions(**flags).placement(cluster) == expected


def test_shard_and_fail_fast_mean_what_they_mean_locally(ray_local, task_args, local, tmp_path):
    out = tmp_path / "out.jsonl"
    args = [*task_args, "--ray", "local", "--ray-workers", "1", "--shard", "2/2", "-o", out]
    result = invoke([*args, "--fail-fast"])
    assert result.exit_code == 1, result.output
    shard = sorted(local)[1::2]  # inputs 2, 4, ... of the sorted list: bad.wav first
    assert shard[0].endswith("bad.wav")
    written = read_jsonl(out)
    assert written and written[-1]["path"] == shard[0]  # the run stopped at the failure
    same_as_local(written, {r["path"]: local[r["path"]] for r in written})
    assert {r["path"] for r in written} <= set(shard)
