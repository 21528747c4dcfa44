"""Presets and component resolution, without network: a fake Hugging Face cache built in tmp."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from salmonn.errors import CheckpointError, ConfigError
from salmonn.hub import resolve as hub
from salmonn.hub.resolve import (
    PRESETS,
    ComponentsNotFound,
    HubSource,
    parse_source,
    resolve_components,
    verify_beats_file,
)
from salmonn.model import formats
from salmonn_cli.model_errors import describe

COMMIT = "0123456789abcdef0123456789abcdef01234567"
BEATS_FILE = "beats/BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt"


def put_in_cache(cache: Path, repo_type: str, repo_id: str, files: dict[str, Path | bytes]) -> Path:
    """Lay out files the way huggingface_hub does: blobs, snapshot symlinks, refs/main."""
    base = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = base / "snapshots" / COMMIT
    for rel, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = snapshot / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(COMMIT)
    return snapshot


def folder_files(folder: str) -> dict[str, Path]:
    return {p.name: p for p in Path(folder).iterdir() if p.is_file()}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache, offline. huggingface_hub reads its environment once, at import: patch both."""
    from huggingface_hub import constants

    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return root


@pytest.fixture
def filled_cache(cache, tiny_paths) -> Path:
    """The salmonn-7b preset's four sources, filled with the tiny model's files."""
    put_in_cache(cache, "model", "openai/whisper-large-v2", folder_files(tiny_paths.whisper))
    put_in_cache(cache, "model", "lmsys/vicuna-7b-v1.5", folder_files(tiny_paths.llm))
    put_in_cache(
        cache, "model", "tsinghua-ee/SALMONN-7B", {"salmonn_7b_v0.pth": Path(tiny_paths.checkpoint)}
    )
    return cache


@pytest.fixture
def no_hub(monkeypatch):
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("huggingface_hub must not be called")

    for name in ("hf_hub_download", "snapshot_download", "HfApi"):
        monkeypatch.setattr(huggingface_hub, name, refuse)


def test_presets():
    assert set(PRESETS) == {"salmonn-13b", "salmonn-7b"}
    big, small = PRESETS["salmonn-13b"], PRESETS["salmonn-7b"]
    assert big.checkpoint == HubSource("tsinghua-ee/SALMONN", "salmonn_v1.pth")
    assert small.checkpoint == HubSource("tsinghua-ee/SALMONN-7B", "salmonn_7b_v0.pth")
    assert (
        big.llm.repo_id == "lmsys/vicuna-13b-v1.1" and small.llm.repo_id == "lmsys/vicuna-7b-v1.5"
    )
    assert big.whisper == small.whisper == HubSource("openai/whisper-large-v2")
    assert (
        big.beats == small.beats == HubSource("tsinghua-ee/SALMONN-7B-gradio", BEATS_FILE, "space")
    )
    assert (big.llm_hidden, small.llm_hidden) == (5120, 4096)
    assert big.lora_scaling == small.lora_scaling == 4.0 and small.demo_lora_scaling == 3.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"hf://spaces/tsinghua-ee/SALMONN-7B-gradio/{BEATS_FILE}",
            HubSource("tsinghua-ee/SALMONN-7B-gradio", BEATS_FILE, "space"),
        ),
        ("hf://org/name", HubSource("org/name")),
        ("hf://models/org/name@v2/sub/w.bin", HubSource("org/name", "sub/w.bin", "model", "v2")),
        ("hf://datasets/org/data/x.pt", HubSource("org/data", "x.pt", "dataset")),
        ("org/name:file.pth", HubSource("org/name", "file.pth")),
        ("org/name@main:file.pth", HubSource("org/name", "file.pth", "model", "main")),
        ("lmsys/vicuna-7b-v1.5", HubSource("lmsys/vicuna-7b-v1.5")),
        ("./not/here", Path("not/here")),
        ("/abs/missing.pt", Path("/abs/missing.pt")),
    ],
)
def test_parse_source(text, expected):
    assert parse_source(text) == expected


def test_existing_local_path_wins_over_repo_syntax(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert parse_source("org/name") == Path("org/name")
    assert str(HubSource("a/b", "c/d.pt", "space", "r1")) == "hf://spaces/a/b@r1/c/d.pt"


def test_local_paths_never_touch_the_hub(tiny_paths, no_hub):
    explicit = {
        "whisper": tiny_paths.whisper,
        "beats": tiny_paths.beats,
        "llm": Path(tiny_paths.llm),
        "checkpoint": tiny_paths.checkpoint,
    }
    for preset in (None, "salmonn-13b"):
        got = resolve_components(preset, **explicit)
        assert got == hub.ResolvedComponents(
            Path(tiny_paths.whisper),
            Path(tiny_paths.beats),
            Path(tiny_paths.llm),
            Path(tiny_paths.checkpoint),
            preset,
        )


def test_local_path_errors(tiny_paths, tmp_path, no_hub):
    with pytest.raises(CheckpointError, match="does not exist"):
        hub.resolve_source("beats", tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is not a folder"):
        hub.resolve_source("whisper", tiny_paths.beats)
    with pytest.raises(CheckpointError, match="is not a file"):
        hub.resolve_source("checkpoint", tiny_paths.llm)
    with pytest.raises(ConfigError, match="no source for whisper, llm"):
        resolve_components(beats=tiny_paths.beats, checkpoint=tiny_paths.checkpoint)
    with pytest.raises(ConfigError, match="salmonn-13b, salmonn-7b"):
        resolve_components("salmonn-70b")
    with pytest.raises(ConfigError, match="needs a file"):
        hub.resolve_source("beats", "org/name")


def test_offline_resolution_from_cache(filled_cache, tiny_paths):
    put_in_cache(
        filled_cache, "space", "tsinghua-ee/SALMONN-7B-gradio", {BEATS_FILE: Path(tiny_paths.beats)}
    )
    got = resolve_components("salmonn-7b")

    def snapshot(repo):
        return filled_cache / repo / "snapshots" / COMMIT

    assert got.preset == "salmonn-7b"
    assert got.whisper == snapshot("models--openai--whisper-large-v2")
    assert got.llm == snapshot("models--lmsys--vicuna-7b-v1.5")
    assert got.checkpoint == snapshot("models--tsinghua-ee--SALMONN-7B") / "salmonn_7b_v0.pth"
    assert got.beats == snapshot("spaces--tsinghua-ee--SALMONN-7B-gradio") / BEATS_FILE
    assert (got.llm / "tokenizer.model").read_bytes() == (
        Path(tiny_paths.llm) / "tokenizer.model"
    ).read_bytes()
    assert verify_beats_file(got.beats).encoder_layers == 2
    status = {s.component: s for s in hub.cached_status("salmonn-7b")}
    assert all(s.cached for s in status.values())
    assert status["checkpoint"].size_bytes == Path(tiny_paths.checkpoint).stat().st_size


def test_explicit_argument_wins_over_preset(filled_cache, tiny_paths):
    # The BEATs space is not cached: the explicit path is used, the rest comes from the cache.
    got = resolve_components("salmonn-7b", beats=tiny_paths.beats)
    assert got.beats == Path(tiny_paths.beats)
    assert got.llm.parent.parent.name == "models--lmsys--vicuna-7b-v1.5"
    put_in_cache(filled_cache, "model", "me/my-llm", folder_files(tiny_paths.llm))
    got = resolve_components("salmonn-7b", beats=tiny_paths.beats, llm="me/my-llm")
    assert got.llm == filled_cache / "models--me--my-llm" / "snapshots" / COMMIT


def test_missing_in_offline_mode_names_every_missing_component(filled_cache):
    with pytest.raises(ComponentsNotFound) as info:
        resolve_components("salmonn-7b")
    err = info.value
    assert [m.component for m in err.missing] == ["beats"]  # the other three are cached
    assert err.missing[0].source == PRESETS["salmonn-7b"].beats and err.missing[0].from_preset
    assert err.offline and err.download_error is None and err.cache == filled_cache
    message = str(err)
    assert "\n" not in message and BEATS_FILE in message and "HF_HUB_OFFLINE" in message
    assert "--" not in message  # library words, not command-line flags
    cli = describe(err)
    assert "salmonn models download salmonn-7b" in cli and "--beats PATH" in cli
    assert "HF_HUB_OFFLINE is set: unset it" in cli and "salmonn dev tiny-model" in cli
    status = {s.component: s for s in hub.cached_status("salmonn-7b")}
    assert not status["beats"].cached and status["beats"].path is None
    assert status["beats"].detail == "not cached" and status["whisper"].cached


def test_missing_repo_without_preset_names_the_repo(cache):
    with pytest.raises(ComponentsNotFound) as info:
        hub.resolve_source("checkpoint", "hf://spaces/org/absent/w.pt")
    assert "`hf download org/absent w.pt --repo-type space`" in describe(info.value)
    with pytest.raises(ComponentsNotFound) as info:
        resolve_components("salmonn-13b")
    assert [m.component for m in info.value.missing] == list(hub.COMPONENTS)
    assert describe(info.value).count("salmonn models download salmonn-13b") == 1
    with pytest.raises(ComponentsNotFound) as info:
        resolve_components("salmonn-13b", whisper="me/whisper")  # not the preset's own source
    assert "`hf download me/whisper` and `salmonn models download salmonn-13b`" in describe(
        info.value
    )


def test_library_errors_in_command_line_words(tiny_paths, tmp_path):
    with pytest.raises(hub.ComponentPathError) as info:
        hub.resolve_source("beats", tmp_path / "missing.pt")
    assert describe(info.value) == f"--beats: {tmp_path / 'missing.pt'} does not exist"
    with pytest.raises(hub.MissingSourceError) as info:
        resolve_components(beats=tiny_paths.beats, checkpoint=tiny_paths.checkpoint)
    assert info.value.components == ("whisper", "llm") and "--" not in str(info.value)
    assert describe(info.value) == (
        "no source for whisper, llm: pass --model NAME or --whisper PATH, --llm PATH"
    )


def test_incomplete_cached_folder_is_reported(cache, tiny_paths):
    put_in_cache(cache, "model", "org/llm", {"config.json": Path(tiny_paths.llm) / "config.json"})
    with pytest.raises(CheckpointError, match=r"incomplete, lacks tokenizer\.model, weights"):
        hub.resolve_source("llm", "org/llm")


def test_missing_shard_is_reported(cache, tiny_paths):
    files = folder_files(tiny_paths.llm)
    shard = max(name for name in files if name.startswith("model-0"))
    del files[shard]
    put_in_cache(cache, "model", "org/llm", files)
    with pytest.raises(CheckpointError, match=f"lacks {shard}"):
        hub.resolve_source("llm", "org/llm")


def test_verify_beats_file(tiny_paths, tmp_path):
    info = verify_beats_file(tiny_paths.beats)
    assert not info.official and (
        info.encoder_layers,
        info.encoder_embed_dim,
        info.max_distance,
    ) == (2, 128, 800)
    # The released layout (salmonn.model.formats), full size: zero-stride tensors keep the file tiny.
    cfg = formats.beats_cfg()
    state = {name: torch.zeros(1).expand(shape) for name, shape in formats.beats_shapes(cfg)}
    torch.save({"cfg": cfg, "model": state, "label_dict": {}}, tmp_path / "official.pt")
    assert (tmp_path / "official.pt").stat().st_size < 1e6
    info = verify_beats_file(tmp_path / "official.pt")
    assert info.official and info.num_tensors == len(state)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"weights": torch.randn(3, 3)}, "expected keys 'cfg' and 'model'"),
        ({"model": {"speech_query_tokens": torch.zeros(1)}}, "SALMONN checkpoint"),
        ({"model": {}, "cfg": {"embed_dim": 32}}, "unsupported BEATs configuration"),
        (b"not a torch file", "is not a BEATs checkpoint"),
    ],
)
def test_verify_beats_file_rejects(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        verify_beats_file(path)


def test_verify_beats_file_rejects_wrong_shapes(tiny_paths, tmp_path):
    ck = torch.load(tiny_paths.beats, map_location="cpu", weights_only=True)
    ck["cfg"] = {**ck["cfg"], "encoder_embed_dim": 256}
    torch.save(ck, tmp_path / "bad.pt")
    wrong = r"wrong shape of \S+ \(128, 32\) \(expected \(256, 32\)"
    with pytest.raises(CheckpointError, match=wrong):
        verify_beats_file(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="SALMONN checkpoint"):
        verify_beats_file(tiny_paths.checkpoint)


def test_import_is_lazy():
    code = "import sys, salmonn.hub.resolve; print(sorted({'huggingface_hub', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_models_command_lists_presets_and_cache(cache):
    from click.testing import CliRunner

    from salmonn_cli.main import cli

    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0
    assert f"cache: {cache}  (offline mode: HF_HUB_OFFLINE)" in result.stdout
    assert "salmonn-7b  (not cached)" in result.stdout
    assert "salmonn-13b  (not cached)" in result.stdout
    assert "hf://tsinghua-ee/SALMONN-7B/salmonn_7b_v0.pth" in result.stdout
    bad = CliRunner().invoke(cli, ["models", "download", "salmonn-1b"])
    assert bad.exit_code == 2 and "unknown preset" in bad.stderr
