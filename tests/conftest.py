"""Shared fixtures. Tests never touch the network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory):
    """A complete tiny random SALMONN written in the official on-disk formats (see salmonn.model.tiny)."""
    from salmonn.model.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-salmonn"), seed=0)


@pytest.fixture(scope="session")
def model_flags(tiny_paths):
    """CLI flags that select the tiny model."""
    return [
        "--whisper",
        tiny_paths.whisper,
        "--beats",
        tiny_paths.beats,
        "--llm",
        tiny_paths.llm,
        "--checkpoint",
        tiny_paths.checkpoint,
    ]


@pytest.fixture(scope="module")
def tiny_model(tiny_paths):
    """The tiny SALMONN loaded on the CPU, once per test module."""
    from salmonn.hub.load import load_model

    return load_model(
        tiny_paths.whisper, tiny_paths.beats, tiny_paths.llm, tiny_paths.checkpoint, device="cpu"
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matmuls on a shared 2-core machine run faster on one thread (and deterministically).
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def clean_salmonn_env(monkeypatch, tmp_path):
    """No user config, prompts or SALMONN_* variables leak into a test (CliRunner runs in this
    process)."""
    from salmonn_cli.sources import ENV_VARS

    for var in (*ENV_VARS.values(), "SALMONN_CONFIG", "SALMONN_PROMPTS_DIR", "SALMONN_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
