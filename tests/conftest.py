"""Shared fixtures. Tests never touch the network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory):
    """A complete tiny random SALMONN written in the official on-disk formats (see salmonn.tiny)."""
    from salmonn.tiny import write_tiny_model

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
