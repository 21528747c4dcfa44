"""``--ray local`` on this machine: a Ray that opens no port to the network, workers' INFO lines with
``-v``, and hand-outs that keep every worker busy with ``--batch-size auto``.

The first two start a real Ray (in a subprocess, so this process's Ray state is left alone); the
last drives the driver's real hand-out queue (:class:`salmonn.cluster.pool.Dispatcher`) with
stand-in workers, to see which files each call gets.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from helpers import tone

pytest.importorskip("ray")

LISTENERS = """
import json, psutil, ray
from salmonn.cluster.runner import start_local_ray
start_local_ray(ray, num_cpus=1)
me = psutil.Process()
found = []
for process in [me, *me.children(recursive=True)]:
    try:
        found += [
            [process.name(), c.laddr.ip, c.laddr.port]
            for c in process.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
    except psutil.Error:
        pass
print(json.dumps(found))
ray.shutdown()
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SALMONN_"))}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def test_a_local_ray_listens_on_loopback_only():
    pytest.importorskip("psutil")
    run = subprocess.run(
        [sys.executable, "-c", LISTENERS], capture_output=True, text=True, timeout=180, env=_env()
    )
    assert run.returncode == 0, run.stderr[-3000:]
    listeners = json.loads(run.stdout.strip().splitlines()[-1])
    names = {name for name, _, _ in listeners}
    assert "gcs_server" in names and "raylet" in names, listeners  # Ray's own servers were seen
    for name, address, port in listeners:
        ip = ipaddress.ip_address(address)
        ip = getattr(ip, "ipv4_mapped", None) or ip
        assert ip.is_loopback, f"{name} listens on {address}:{port}"
    assert "WARNING" not in run.stderr, run.stderr[-2000:]  # token auth on, and no notice of it


def test_verbose_shows_the_ray_workers_lines(tiny_paths, tmp_path):
    clip = tone(tmp_path / "clip.wav", 2.0)
    args = [
        sys.executable, "-c", "from salmonn_cli.main import cli; cli()", "caption", str(clip),
        "--whisper", tiny_paths.whisper, "--beats", tiny_paths.beats, "--llm", tiny_paths.llm,
        "--checkpoint", tiny_paths.checkpoint, "--device", "cpu", "--max-new-tokens", "2",
        "--num-beams", "1", "--ray", "local", "--ray-workers", "1", "-v",
    ]  # fmt: skip
    run = subprocess.run(args, capture_output=True, text=True, timeout=300, env=_env())
    assert run.returncode == 0, run.stderr[-3000:]
    assert "INFO salmonn.cluster.pool: Ray worker ready on" in run.stderr, run.stderr[-3000:]
    assert json.loads(run.stdout.splitlines()[0])["error"] is None


class _Worker:
    """A stand-in actor: remembers the files of each call it is given."""

    def __init__(self, name: str) -> None:
        self.name, self.calls = name, []
        self.ready = SimpleNamespace(remote=lambda: ("ready", name))
        self.run = SimpleNamespace(options=lambda **_: SimpleNamespace(remote=self._run))

    def _run(self, inputs, *rest):
        self.calls.append([index for index, _ in inputs])
        return ("call", self.name, len(self.calls))


class _Ray:
    exceptions = SimpleNamespace(ActorUnavailableError=OSError, RayActorError=OSError)

    @staticmethod
    def get(ref):
        return {"node": "here", "pid": ref[1], "identity": {}, "load_error": None}


def _dispatcher(workers, files: int, batch_size):
    from salmonn.cluster.pool import Dispatcher, PendingInput
    from salmonn.cluster.runner import AUTO_FILES_PER_CALL

    auto = batch_size == "auto"
    job = {
        "spec_ref": None, "chunking": None, "generation": None, "batch_size": batch_size,
        "streaming": True, "share": auto, "on_progress": None,
        "files_per_call": AUTO_FILES_PER_CALL if auto else batch_size,
    }  # fmt: skip
    inputs = [PendingInput(i, f"f{i}", f"/abs/f{i}") for i in range(files)]
    return Dispatcher(_Ray(), workers, inputs, job)


def test_auto_batches_hand_every_worker_a_share():
    workers = [_Worker("a"), _Worker("b"), _Worker("c")]
    driver = _dispatcher(workers, 10, "auto")
    first = next(iter(driver.starting))
    driver.started(first)  # one worker is ready, two still load the model
    driver.dispatch()
    for ref in list(driver.starting):
        driver.started(ref)
    driver.dispatch()
    given = {w.name: sum(len(c) for c in w.calls) for w in workers}
    assert all(given.values()), given  # nobody idles
    assert given["a"] <= 4  # the first one ready took its share (10 / 3), not the whole job
    handed = sorted(i for w in workers for c in w.calls for i in c)
    assert handed + [p.index for p in driver.pending] == list(range(10))  # the rest waits


def test_a_fixed_batch_size_still_fills_its_calls():
    workers = [_Worker("a"), _Worker("b")]
    driver = _dispatcher(workers, 10, 4)
    for ref in list(driver.starting):
        driver.started(ref)
    driver.dispatch()
    assert [len(c) for w in workers for c in w.calls] == [4, 4]
