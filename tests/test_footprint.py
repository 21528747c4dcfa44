"""Memory before loading: parameter counts from configs, the CPU default dtype, what does not fit."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import invoke

from salmonn.model import footprint
from salmonn.model.footprint import (
    GiB,
    cpu_default_dtype,
    estimate,
    fit_report,
    llm_parameters,
    whisper_encoder_parameters,
)

# vicuna-7b-v1.5 / Llama-2-7B and whisper-large-v2, as their config.json files say
LLAMA_7B = {
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 32000,
    "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
    "tie_word_embeddings": False,
}  # fmt: skip
WHISPER_LARGE = {
    "d_model": 1280, "encoder_layers": 32, "encoder_ffn_dim": 5120, "num_mel_bins": 80,
    "max_source_positions": 1500,
}  # fmt: skip


def _config(folder: str) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def test_llm_count_equals_the_model_transformers_builds(tiny_paths):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = _config(tiny_paths.llm)
    built = LlamaForCausalLM(LlamaConfig(**config))
    assert llm_parameters(config) == sum(p.numel() for p in built.parameters())


def test_whisper_count_equals_the_encoder_transformers_builds(tiny_paths):
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = _config(tiny_paths.whisper)
    encoder = WhisperEncoder(WhisperConfig(**config))
    assert whisper_encoder_parameters(config) == sum(p.numel() for p in encoder.parameters())


def test_real_sizes():
    assert llm_parameters(LLAMA_7B) == 6_738_415_616  # the published count of Llama-2-7B
    assert 630e6 < whisper_encoder_parameters(WHISPER_LARGE) < 640e6


@pytest.fixture
def seven_b(tiny_paths, tmp_path):
    """Components whose configs declare SALMONN-7B's sizes (no weights: nothing loads them)."""
    for name, config in (("llm", LLAMA_7B), ("whisper", WHISPER_LARGE)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    return SimpleNamespace(
        whisper=tmp_path / "whisper", llm=tmp_path / "llm", beats=tiny_paths.beats,
        checkpoint=tiny_paths.checkpoint,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("component", "text", "said"),
    [
        ("llm", json.dumps({**LLAMA_7B, "hidden_size": None}), "not a whole number"),
        (
            "llm",
            json.dumps({k: v for k, v in LLAMA_7B.items() if k != "vocab_size"}),
            "'vocab_size'",
        ),
        ("whisper", "{not json", "not a readable JSON config"),
        ("whisper", "[1, 2]", "not a JSON object"),
    ],
)
def test_a_broken_config_is_a_one_line_checkpoint_error(seven_b, component, text, said):
    from salmonn.errors import CheckpointError

    path = Path(getattr(seven_b, component)) / "config.json"
    path.write_text(text)
    with pytest.raises(CheckpointError) as info:
        estimate(seven_b, "bfloat16")
    message = str(info.value)
    assert message.startswith(f"{path}: ") and said in message and "\n" not in message


def test_estimate_of_a_7b(seven_b):
    full, half = estimate(seven_b, "float32"), estimate(seven_b, "bfloat16")
    assert full.llm == 4 * 6_738_415_616 and half.llm == 2 * 6_738_415_616
    assert full.whisper == half.whisper == 4 * whisper_encoder_parameters(WHISPER_LARGE)
    assert 27 * GiB < full.total < 32 * GiB and 14 * GiB < half.total < 17 * GiB


def test_cpu_default_dtype_keeps_float32_where_it_fits(seven_b, caplog):
    with caplog.at_level(logging.WARNING, logger="salmonn"):
        assert cpu_default_dtype(seven_b, exact=False, available=64 * GiB) == "float32"
        assert cpu_default_dtype(seven_b, exact=True, available=20 * GiB) == "float32"
    assert caplog.records == []


def test_cpu_default_dtype_takes_bfloat16_where_only_that_fits(seven_b, caplog):
    with caplog.at_level(logging.WARNING, logger="salmonn"):
        assert cpu_default_dtype(seven_b, exact=False, available=20 * GiB) == "bfloat16"
    (record,) = caplog.records
    assert "loading the LLM as bfloat16" in record.getMessage()


def test_fit_report_says_what_would_fit(seven_b):
    assert fit_report(seven_b, "float32", "cpu", available=64 * GiB) is None
    assert fit_report(seven_b, "float32", "cuda", available=1) is None  # not the host's memory
    line = fit_report(seven_b, "float32", "cpu", available=20 * GiB)
    assert "20.0 GiB is available" in line and "--dtype bfloat16 would take" in line
    line = fit_report(seven_b, "bfloat16", "cpu", available=8 * GiB)
    assert "smaller preset" in line and "--dtype bfloat16 would" not in line


def test_doctor_says_whether_the_model_fits(tiny_paths, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    flags = ["doctor", "--whisper", tiny_paths.whisper, "--beats", tiny_paths.beats, "--llm",
             tiny_paths.llm, "--checkpoint", tiny_paths.checkpoint]  # fmt: skip
    fits = invoke(flags)
    assert fits.exit_code == 0, fits.output
    assert re.search(r"fits +ok +about .* GiB with the LLM as float32", fits.stdout)
    monkeypatch.setattr(footprint, "available_memory", lambda: 100 * 2**20)
    tight = invoke(flags)
    assert tight.exit_code == 1
    assert re.search(r"fits +NO +the model needs .* but 0\.1 GiB is available", tight.stdout)
    # the memory line counts memory as the fits line does (MemAvailable), in the same unit
    assert re.search(r"memory +ok +0\.1 GiB available of [\d.]+ GiB", tight.stdout)


def test_load_model_on_cpu_takes_bfloat16_when_float32_does_not_fit(
    tiny_paths, monkeypatch, caplog
):
    from salmonn.hub.load import load_model

    need = estimate(tiny_paths, "float32").total
    half = estimate(tiny_paths, "bfloat16").total
    monkeypatch.setattr(footprint, "available_memory", lambda: (need + half) // 2)
    paths = (tiny_paths.whisper, tiny_paths.beats, tiny_paths.llm, tiny_paths.checkpoint)
    with caplog.at_level(logging.WARNING, logger="salmonn"):
        model = load_model(*paths, device="cpu")
    assert model.dtype == torch.bfloat16
    assert any("as bfloat16" in r.getMessage() for r in caplog.records)
    assert load_model(*paths, device="cpu", exact=True).dtype == torch.float32


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_float16_on_cpu_points_to_bfloat16(tiny_paths, caplog, dtype):
    from salmonn import load_model

    p = tiny_paths
    with caplog.at_level(logging.WARNING, logger="salmonn"):
        model = load_model(p.whisper, p.beats, p.llm, p.checkpoint, device="cpu", dtype=dtype)
    assert model.dtype == getattr(torch, dtype)
    said = [r.getMessage() for r in caplog.records if "float16 on a CPU" in r.getMessage()]
    assert len(said) == (dtype == "float16") and all("--dtype bfloat16" in s for s in said)
