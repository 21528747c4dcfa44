"""Downloads through the real huggingface_hub client, against a stand-in hub on 127.0.0.1.

The stand-in (tests/hubstub.py) serves the preset repositories under their real names and file names,
with the decoys the real repositories carry (other weight formats, other checkpoints, Space code); the
files that matter are the tiny model's (salmonn.model.tiny), so a downloaded preset really loads. The cache is
what huggingface_hub itself writes (blobs, snapshots, refs and the cached tree listing).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hubstub import StubHub
from safetensors.torch import load_file

from salmonn.errors import CheckpointError
from salmonn.hub import resolve as hub
from salmonn.hub.resolve import ComponentsNotFound, resolve_components
from salmonn_cli.main import cli

BEATS_FILE = "beats/BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt"
VICUNA = "lmsys/vicuna-7b-v1.5"
WHISPER = "openai/whisper-large-v2"


def _bin_shards(llm: Path) -> dict[str, bytes]:
    """The tiny LLM folder as Vicuna ships it: sharded pytorch_model-*.bin plus their index."""
    index = json.loads((llm / "model.safetensors.index.json").read_text())
    renamed = {}
    files: dict[str, bytes] = {}
    for shard in sorted(set(index["weight_map"].values())):
        renamed[shard] = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        buffer = io.BytesIO()
        torch.save(load_file(llm / shard), buffer)
        files[renamed[shard]] = buffer.getvalue()
    index["weight_map"] = {k: renamed[v] for k, v in index["weight_map"].items()}
    files["pytorch_model.bin.index.json"] = json.dumps(index).encode()
    for f in llm.iterdir():
        if not f.name.startswith("model"):
            files[f.name] = f.read_bytes()
    return files


@pytest.fixture(scope="session")
def repos(tiny_paths) -> dict:
    """Repository contents: the tiny model's files under the preset's names, and decoys."""
    decoy = b"decoy: never needed\n" * 50
    whisper = {f.name: f.read_bytes() for f in Path(tiny_paths.whisper).iterdir()}
    whisper.update(
        {
            name: decoy
            for name in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "README.md")
        }
    )
    space = {
        BEATS_FILE: Path(tiny_paths.beats).read_bytes(),
        "beats/BEATs.py": decoy,
        "beats/backbone.py": decoy,
        "app.py": decoy,
        "requirements.txt": decoy,
        "salmonn_7b_v0.pth": decoy,
    }
    checkpoint = Path(tiny_paths.checkpoint).read_bytes()
    return {
        ("model", WHISPER): whisper,
        ("model", VICUNA): {**_bin_shards(Path(tiny_paths.llm)), "README.md": decoy},
        ("space", "tsinghua-ee/SALMONN-7B-gradio"): space,
        ("model", "tsinghua-ee/SALMONN-7B"): {
            "salmonn_7b_v0.pth": checkpoint,
            "salmonn_7b_v0_old.pth": decoy,
            "README.md": decoy,
        },
        ("model", "tsinghua-ee/SALMONN"): {"salmonn_v1.pth": checkpoint, "salmonn_v0.pth": decoy},
    }


NEEDED = (
    {
        f"{WHISPER}/{f}"
        for f in (
            "config.json",
            "preprocessor_config.json",
            "generation_config.json",
            "model.safetensors",
        )
    }
    | {
        f"{VICUNA}/{f}"
        for f in (
            "config.json",
            "generation_config.json",
            "tokenizer.model",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "pytorch_model.bin.index.json",
            *(f"pytorch_model-0000{i}-of-00004.bin" for i in range(1, 5)),
        )
    }
    | {
        f"tsinghua-ee/SALMONN-7B-gradio/{BEATS_FILE}",
        "tsinghua-ee/SALMONN-7B/salmonn_7b_v0.pth",
    }
)


def _use_hub(monkeypatch, url: str, cache: Path, offline: bool) -> None:
    """Point huggingface_hub (which reads its environment once, at import) at ``url`` and ``cache``."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # never the user's cache, whatever reads it
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "hf-cache"


@pytest.fixture
def stub(repos):
    with StubHub(repos) as server:
        yield server


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_download_fetches_only_needed_files_then_resolves_offline(stub, cache, monkeypatch):
    _use_hub(monkeypatch, stub.url, cache, offline=False)
    got = hub.download("salmonn-7b")
    assert sorted(stub.downloads()) == sorted(NEEDED)  # no decoy, no second weight format
    assert got.llm.name == stub.commits[("model", VICUNA)]
    # huggingface_hub cached the repository listing: the offline look-up must cope with it
    assert list((cache / "models--openai--whisper-large-v2" / "trees").glob("*.json"))

    before = len(stub.requests)
    assert hub.download("salmonn-7b") == got
    assert stub.requests[before:] == []  # a second download asks the hub nothing

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert resolve_components("salmonn-7b") == got
    assert resolve_components("salmonn-7b", download=False) == got
    assert all(s.cached for s in hub.cached_status("salmonn-7b"))
    shared = {s.component: s.cached for s in hub.cached_status("salmonn-13b")}
    assert shared == {"whisper": True, "beats": True, "llm": False, "checkpoint": False}
    assert stub.requests[before:] == []


def test_partial_copy_is_reported_with_the_missing_files(stub, cache, monkeypatch):
    _use_hub(monkeypatch, stub.url, cache, offline=False)
    got = hub.download("salmonn-7b")
    for lost in (
        got.llm / "pytorch_model-00003-of-00004.bin",
        got.whisper / "preprocessor_config.json",
    ):
        blob = lost.resolve()  # as after an interrupted download: no link, no blob
        lost.unlink()
        blob.unlink()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ComponentsNotFound) as info:
        resolve_components("salmonn-7b")
    missing = {m.component: m.absent for m in info.value.missing}
    assert missing == {
        "whisper": ("preprocessor_config.json",),
        "llm": ("pytorch_model-00003-of-00004.bin",),
    }
    assert info.value.offline and "incomplete, lacks pytorch_model-00003-of-00004.bin" in str(
        info.value
    )
    status = {s.component: s for s in hub.cached_status("salmonn-7b")}
    assert status["llm"].detail == "incomplete, lacks pytorch_model-00003-of-00004.bin"
    assert status["beats"].cached and status["checkpoint"].cached

    # online again, the download completes the copy and fetches only what was lacking
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    before = len(stub.requests)
    assert resolve_components("salmonn-7b") == got
    fetched = [r for r in stub.requests[before:] if r[0] == "GET" and "/resolve/" in r[1]]
    assert sorted(p.rsplit("/", 1)[1] for _, p in fetched) == [
        "preprocessor_config.json",
        "pytorch_model-00003-of-00004.bin",
    ]


def test_offline_names_every_missing_component(stub, cache, monkeypatch):
    _use_hub(monkeypatch, stub.url, cache, offline=False)
    hub.resolve_source("whisper", WHISPER)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ComponentsNotFound) as info:
        resolve_components("salmonn-7b")
    err = info.value
    assert [m.component for m in err.missing] == ["beats", "llm", "checkpoint"]
    assert err.offline and err.download_error is None and err.preset == "salmonn-7b"
    assert all(m.from_preset and m.absent == () for m in err.missing)


def test_unreachable_hub_fails_fast_naming_everything(cache, monkeypatch):
    _use_hub(monkeypatch, _closed_port_url(), cache, offline=False)
    start = time.monotonic()
    with pytest.raises(ComponentsNotFound) as info:
        resolve_components("salmonn-7b")
    assert time.monotonic() - start < 5
    err = info.value
    assert [m.component for m in err.missing] == ["whisper", "beats", "llm", "checkpoint"]
    assert not err.offline and "cannot reach the hub" in err.download_error
    assert "\n" not in str(err)


def test_unknown_repository_is_one_line(stub, cache, monkeypatch):
    _use_hub(monkeypatch, stub.url, cache, offline=False)
    with pytest.raises(ComponentsNotFound) as info:
        hub.resolve_source("llm", "org/no-such-llm")
    said = info.value.download_error
    assert said.startswith(
        "RepositoryNotFoundError: 404 Client Error. Repository Not Found for url"
    )
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="has no salmonn_v9.pth"):
        hub.resolve_source("checkpoint", "tsinghua-ee/SALMONN:salmonn_v9.pth")


# ------------------------------------------------------------------------------------- command line


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_download_then_offline_models_doctor_and_task(stub, cache, monkeypatch, tmp_path):
    import numpy as np
    import soundfile as sf

    monkeypatch.delenv("SALMONN_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    _use_hub(monkeypatch, stub.url, cache, offline=False)
    result = invoke(["models", "download", "salmonn-7b"])
    assert result.exit_code == 0, result.output
    paths = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert set(paths) == {"whisper", "beats", "llm", "checkpoint"}
    assert sorted(stub.downloads()) == sorted(NEEDED)

    stub.stop()  # from here on, nothing may need the hub
    _use_hub(monkeypatch, _closed_port_url(), cache, offline=True)
    listing = invoke(["models"])
    assert listing.exit_code == 0
    assert (
        "salmonn-7b  (cached)" in listing.stdout
        and "salmonn-13b  (partly cached)" in listing.stdout
    )
    assert f"-> {paths['llm']}" in listing.stdout
    assert "task commands use: preset salmonn-7b [default]" in listing.stdout

    doctor = invoke(["doctor"])
    assert f"checkpoint   found {paths['checkpoint']}" in doctor.stdout
    assert "match        ok" in doctor.stdout, doctor.output

    wav = tmp_path / "a.wav"
    sf.write(wav, (0.3 * np.sin(np.arange(16000) * 0.1)).astype(np.float32), 16000)
    flags = ["--device", "cpu", "--max-new-tokens", "3", "--num-beams", "1", "-q"]
    run = invoke(["caption", wav, "--model", "salmonn-7b", *flags])
    assert run.exit_code == 0, run.output
    record = json.loads(run.stdout)
    assert record["error"] is None and record["model"]["preset"] == "salmonn-7b"
    for component in ("whisper", "beats", "llm", "checkpoint"):
        assert record["model"][component] == str(Path(paths[component]).resolve())


def test_cli_hub_gone_midway_is_one_line_and_models_shows_the_gap(repos, cache, monkeypatch):
    with StubHub(repos, stop_during="salmonn_7b_v0.pth") as server:
        _use_hub(monkeypatch, server.url, cache, offline=False)
        result = invoke(["models", "download", "salmonn-7b"])
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()  # download progress bars, then the outcome
    assert [line for line in lines if "Error" in line or "rror while" in line] == [lines[-1]]
    assert lines[-1].startswith("Error: could not download checkpoint")
    assert "salmonn models download salmonn-7b" in lines[-1] and "Traceback" not in result.output

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    listing = invoke(["models"])
    assert "salmonn-7b  (partly cached)" in listing.stdout
    checkpoint = listing.stdout.split("checkpoint hf://tsinghua-ee/SALMONN-7B/salmonn_7b_v0.pth\n")[
        1
    ]
    assert checkpoint.splitlines()[0].strip() == "-> missing: not cached"
    doctor = invoke(["doctor", "--model", "salmonn-7b"])
    assert doctor.exit_code == 1
    assert "components   FAIL  not in the Hugging Face cache" in doctor.stdout
    assert "salmonn-7b's checkpoint" in doctor.stdout


def test_cli_no_network_messages(cache, monkeypatch, tmp_path):
    _use_hub(monkeypatch, _closed_port_url(), cache, offline=False)
    download = invoke(["models", "download"])
    assert download.exit_code == 1
    assert download.stderr.count("\n") == 1 and "cannot reach the hub" in download.stderr

    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")  # never read: the model is looked for first
    # (an empty file is a valid input path; decoding would fail later, per file)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    offline = invoke(["ask", wav, "who is angry?", "-q"])
    assert offline.exit_code == 1 and offline.stderr.count("\n") == 1
    message = offline.stderr
    assert "salmonn-7b's whisper, beats, llm, checkpoint" in message
    assert "HF_HUB_OFFLINE is set: unset it" in message
    assert (
        "--whisper/--beats/--llm/--checkpoint PATH" in message
        and "salmonn dev tiny-model" in message
    )


def _lose(path: Path) -> None:
    """Remove a cached file as an interrupted download leaves it: no link, no blob."""
    blob = path.resolve()
    path.unlink()
    blob.unlink()


def test_models_doctor_and_task_run_agree(stub, cache, monkeypatch, tmp_path, tiny_paths):
    """Whatever the cache holds, `models`, `doctor` and a task run tell the same story."""
    monkeypatch.delenv("SALMONN_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    _use_hub(monkeypatch, stub.url, cache, offline=False)
    got = hub.download("salmonn-7b")
    _lose(got.llm / "pytorch_model-00002-of-00004.bin")
    _lose(got.checkpoint)
    _use_hub(monkeypatch, _closed_port_url(), cache, offline=True)
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")

    listing = invoke(["models"]).stdout.split("salmonn-7b  ")[1]
    assert listing.startswith("(partly cached)")
    assert "-> missing: incomplete, lacks pytorch_model-00002-of-00004.bin" in listing
    assert "-> missing: not cached" in listing.split("checkpoint ")[1]
    doctor = invoke(["doctor"])
    run = invoke(["ask", wav, "who is angry?", "-q"])
    assert doctor.exit_code == run.exit_code == 1
    missing = "llm (hf://lmsys/vicuna-7b-v1.5, incomplete, lacks pytorch_model-00002-of-00004.bin)"
    for said in (doctor.stdout, run.stderr):
        assert "salmonn-7b's checkpoint" in said and missing in said
        assert "whisper (" not in said and "beats (" not in said

    # a component given in the environment replaces the preset's for all three alike
    monkeypatch.setenv("SALMONN_LLM", tiny_paths.llm)
    monkeypatch.setenv("SALMONN_CHECKPOINT", tiny_paths.checkpoint)
    listing = invoke(["models"]).stdout
    assert f"llm {tiny_paths.llm} [env SALMONN_LLM]" in listing
    doctor = invoke(["doctor"])
    assert doctor.exit_code == 0, doctor.stdout
    assert f"llm          found {tiny_paths.llm}" in doctor.stdout
    assert f"whisper      found {got.whisper}" in doctor.stdout


# ------------------------------------------------------------------------- real processes, real env


def _salmonn(args, env: dict[str, str], python_flags=()) -> subprocess.CompletedProcess:
    """``python -m salmonn_cli ARGS`` with huggingface_hub's variables from ``env`` only."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "SALMONN_"))
    }
    base.update(HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1", **env)
    command = [sys.executable, *python_flags, "-m", "salmonn_cli", *map(str, args)]
    return subprocess.run(command, env=base, capture_output=True, text=True, timeout=300)


def test_process_download_then_offline_listing(stub, cache, tmp_path):
    env = {"HF_ENDPOINT": stub.url, "HF_HUB_CACHE": str(cache), "XDG_CONFIG_HOME": "/nonexistent"}
    done = _salmonn(["models", "download", "salmonn-7b"], env)
    assert done.returncode == 0, done.stderr
    assert sorted(stub.downloads()) == sorted(NEEDED)
    listing = _salmonn(["models"], {**env, "HF_HUB_OFFLINE": "1"})
    assert listing.returncode == 0 and "salmonn-7b  (cached)" in listing.stdout


def test_process_offline_answers_before_importing_torch(cache, tmp_path):
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "XDG_CONFIG_HOME": "/nonexistent"}
    start = time.monotonic()
    run = _salmonn(["ask", wav, "who is angry?"], env, python_flags=["-X", "importtime"])
    elapsed = time.monotonic() - start
    assert run.returncode == 1
    said = [line for line in run.stderr.splitlines() if not line.startswith("import time:")]
    assert len(said) == 1 and said[0].startswith("Error: not in the Hugging Face cache")
    assert "salmonn-7b's whisper, beats, llm, checkpoint" in said[0]
    imported = {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if "|" in line}
    assert "huggingface_hub" in imported and "torch" not in imported
    assert elapsed < 20  # seconds, on a loaded machine; ~1 s idle


def test_process_unreachable_hub_is_quick_and_one_line(cache, tmp_path):
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    env = {"HF_ENDPOINT": _closed_port_url(), "HF_HUB_CACHE": str(cache)}
    env["XDG_CONFIG_HOME"] = "/nonexistent"
    start = time.monotonic()
    run = _salmonn(["ask", wav, "who is angry?"], env)
    assert time.monotonic() - start < 20 and run.returncode == 1
    assert run.stderr.count("\n") == 1 and run.stderr.startswith(
        "Error: could not download whisper"
    )
    assert "salmonn models download salmonn-7b` where the network works" in run.stderr


def test_silent_hub_times_out(cache, monkeypatch):
    """A hub that accepts connections and never answers (a dropped network) fails within the
    metadata timeout, not after minutes."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel; nothing ever reads or answers
        _use_hub(monkeypatch, f"http://127.0.0.1:{silent.getsockname()[1]}", cache, offline=False)
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_ETAG_TIMEOUT", 1)
        start = time.monotonic()
        with pytest.raises(ComponentsNotFound) as info:
            resolve_components("salmonn-7b")
        assert time.monotonic() - start < 10
    assert "cannot reach the hub" in info.value.download_error
    assert "Timeout" in info.value.download_error and len(info.value.missing) == 4
