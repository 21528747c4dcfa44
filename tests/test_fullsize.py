"""Random weights at the released sizes (salmonn.model.fullsize) and benchmarks/bench_real_size.py.

The 7B files take 21 GB and minutes to write, so the writer runs here at small widths: the same
code, the same layouts and the released 32,000-piece vocabulary. The 7B sizes are checked by
count (the LLaMA-7B parameter total, the file size the benchmark promises).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from salmonn.model import fullsize
from salmonn.model.footprint import llm_parameters
from salmonn.model.fullsize import SALMONN_7B, SMALL, write_random_model, written_sizes

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_real_size.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("random-small"), SMALL)


def test_7b_sizes_are_the_released_ones():
    assert llm_parameters(SALMONN_7B.llm_config()) == 6_738_415_616  # LLaMA-7B
    assert 19e9 < SALMONN_7B.file_bytes() < 22e9


def test_small_model_has_the_released_layouts(small_model):
    root = Path(small_model.root)
    assert written_sizes(root) == SMALL
    index = json.loads((root / "llm" / "model.safetensors.index.json").read_text())
    llm_config = json.loads((root / "llm" / "config.json").read_text())
    assert llm_config["vocab_size"] == 32000 and llm_config["num_hidden_layers"] == SMALL.llm_layers
    assert set(index["weight_map"]) >= {"model.embed_tokens.weight", "lm_head.weight"}
    for shard in set(index["weight_map"].values()):
        assert (root / "llm" / shard).is_file()
    from safetensors import safe_open

    with safe_open(str(root / "llm" / index["weight_map"]["lm_head.weight"]), "pt") as f:
        head = f.get_tensor("lm_head.weight")
    assert head.dtype == torch.float16 and tuple(head.shape) == (32000, SMALL.llm_hidden)
    with safe_open(str(root / "whisper" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        positions = f.get_tensor("model.encoder.embed_positions.weight")
    assert "proj_out.weight" not in keys and "model.decoder.embed_tokens.weight" in keys
    # The encoder's table is Whisper's fixed sinusoids: row 0 is sin 0 then cos 0.
    half = SMALL.whisper_d // 2
    assert torch.equal(positions[0], torch.cat([torch.zeros(half), torch.ones(half)]))
    beats = torch.load(small_model.beats, map_location="cpu", weights_only=True)
    assert beats["cfg"]["encoder_embed_dim"] == SMALL.beats_d
    checkpoint = torch.load(small_model.checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["model"]["speech_llama_proj.weight"].shape == (
        SMALL.llm_hidden,
        SMALL.qformer_hidden,
    )


def test_padded_tokenizer_encodes_as_the_trained_one(small_model, tmp_path):
    import sentencepiece as spm

    from salmonn.model.tiny import write_tokenizer

    trained_size = write_tokenizer(tmp_path, 600)
    trained = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    padded = spm.SentencePieceProcessor(model_file=str(Path(small_model.llm) / "tokenizer.model"))
    assert padded.get_piece_size() == 32000 > trained_size
    text = "USER: <Speech><SpeechHere></Speech> Please describe the audio.\nASSISTANT: a w12 <x>"
    assert padded.encode(text) == trained.encode(text)
    assert padded.id_to_piece(31999).startswith("\u2581<filler")


def test_loads_through_load_model_with_the_released_vocabulary(small_model):
    from salmonn import load_model

    model = load_model(
        small_model.whisper,
        small_model.beats,
        small_model.llm,
        small_model.checkpoint,
        device="cpu",
        dtype="bfloat16",
    )
    assert model.llama_model.get_input_embeddings().num_embeddings == 32001  # + [PAD]
    assert next(model.llama_model.parameters()).dtype == torch.bfloat16


def test_refuses_a_folder_without_room(tmp_path, monkeypatch):
    from salmonn.errors import ConfigError

    class Usage:
        free = 10**9

    monkeypatch.setattr(fullsize.shutil, "disk_usage", lambda _path: Usage())
    with pytest.raises(ConfigError, match=str(tmp_path)):
        write_random_model(tmp_path, SALMONN_7B)
    assert written_sizes(tmp_path) is None


def test_bench_real_size_small_end_to_end(small_model):
    done = subprocess.run(
        [sys.executable, str(BENCH), small_model.root, "--small", "--json", "--tokens", "3"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert "build_s" not in report  # the finished folder was reused
    assert report["embedding_rows"] == 32001 and report["dtype"] == "bfloat16"
    assert report["load_s"] > 0 and report["after_load"]["anon_gib"] > 0
    assert report["after_load"]["file_gib"] >= 0 and report["bandwidth_gbs"] > 0
    assert 0 < report["load_anon_peak_gib"] <= report["after_load"]["peak_gib"]
    assert set(report["kernel_gbs"]) == {"1", "4"} and min(report["kernel_gbs"].values()) > 0
    assert set(report["steps"]) == {"1", "4"}
    assert all(s["prefill_s"] > 0 and s["step_ms"] > 0 for s in report["steps"].values())
    agreement = report["encoder_agreement"]
    # bfloat16 keeps 8 bits of mantissa: the audio vectors move by well under 10 %.
    assert 0 < agreement["relative_l2"] < 0.1 and agreement["min_cosine"] > 0.99
    assert 0 <= report["answer_tokens_equal"] <= report["answer_tokens"] == 3


def test_bench_real_size_wants_build_for_an_empty_folder(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH), str(tmp_path), "--small"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0 and "--build" in done.stderr
    assert not any(tmp_path.iterdir())
