"""load_model: the checkpoint lands where it should; each classic mismatch is a clear error."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from salmonn.errors import CheckpointError, ConfigError
from salmonn.hub.load import load_model
from salmonn.model.checkpoint import read_checkpoint
from salmonn.model.devices import resolve_device, resolve_dtype

LORA = "llama_model.base_model.model.model.layers.{}.self_attn.{}.lora_{}.default.weight"


def _raw(tiny_paths) -> dict:
    return torch.load(tiny_paths.checkpoint, map_location="cpu", weights_only=True)


def _variant(tiny_paths, tmp_path: Path, mutate: Callable[[dict], None]) -> str:
    """A copy of the tiny checkpoint with ``mutate`` applied to its ``model`` dict."""
    raw = _raw(tiny_paths)
    mutate(raw["model"])
    out = tmp_path / "variant.pth"
    torch.save(raw, out)
    return str(out)


def _load(tiny_paths, **changes):
    paths = {
        "whisper": tiny_paths.whisper,
        "beats": tiny_paths.beats,
        "llm": tiny_paths.llm,
        "checkpoint": tiny_paths.checkpoint,
        **changes,
    }
    return load_model(**paths, device="cpu")


def test_every_checkpoint_tensor_lands(tiny_paths, caplog):
    with caplog.at_level(logging.INFO, logger="salmonn"):
        model = _load(tiny_paths)
    state = _raw(tiny_paths)["model"]
    own = dict(model.named_parameters())
    trainable = [
        k
        for k in state
        if not k.endswith(("inv_freq", "position_ids")) and not k.startswith("beats.")
    ]
    assert len(trainable) > 60
    for key in trainable:
        torch.testing.assert_close(own[key].detach(), state[key], rtol=0, atol=0)
    lora_a = own[LORA.format(1, "v_proj", "A")]
    assert lora_a.dtype == torch.float32 and model.lora_scaling == 4.0
    assert "loaded" in caplog.text and "lora 8" in caplog.text


def test_peft_02_names_without_default_are_accepted(tiny_paths, tmp_path):
    def rename(state):
        for key in [k for k in state if ".lora_" in k]:
            state[key.replace(".default.weight", ".weight")] = state.pop(key)

    model = _load(tiny_paths, checkpoint=_variant(tiny_paths, tmp_path, rename))
    want = _raw(tiny_paths)["model"][LORA.format(0, "q_proj", "B")]
    torch.testing.assert_close(dict(model.named_parameters())[LORA.format(0, "q_proj", "B")], want)


def test_missing_lora_key(tiny_paths, tmp_path):
    path = _variant(tiny_paths, tmp_path, lambda s: s.pop(LORA.format(1, "q_proj", "B")))
    with pytest.raises(
        CheckpointError, match=r"lacks 1 SALMONN weight\(s\) \(1 of them LoRA\).*q_proj\.lora_B"
    ):
        _load(tiny_paths, checkpoint=path)


def test_lora_layer_count_mismatch(tiny_paths, tmp_path):
    def drop_layer_1(state):
        for key in [k for k in state if ".layers.1.self_attn" in k and ".lora_" in k]:
            del state[key]

    path = _variant(tiny_paths, tmp_path, drop_layer_1)
    with pytest.raises(
        CheckpointError, match="LoRA weights for 1 LLM layers but the LLM at .* has 2"
    ):
        _load(tiny_paths, checkpoint=path)


def test_no_lora_at_all(tiny_paths, tmp_path):
    def drop(state):
        for key in [k for k in state if ".lora_" in k]:
            del state[key]

    with pytest.raises(CheckpointError, match="no LoRA weights"):
        _load(tiny_paths, checkpoint=_variant(tiny_paths, tmp_path, drop))


def test_unknown_key(tiny_paths, tmp_path):
    path = _variant(
        tiny_paths,
        tmp_path,
        lambda s: s.update({"speech_Qformer.bert.pooler.weight": torch.zeros(2)}),
    )
    with pytest.raises(
        CheckpointError,
        match=r"1 checkpoint key\(s\) match no model parameter: speech_Qformer\.bert\.pooler",
    ):
        _load(tiny_paths, checkpoint=path)


def test_unused_qformer_text_branch_of_the_2023_code_is_accepted(tiny_paths, tmp_path):
    prefix = "speech_Qformer.bert."
    extra = {
        prefix + "embeddings.word_embeddings.weight": torch.randn(30, 128),
        prefix + "encoder.layer.0.intermediate.dense.weight": torch.randn(512, 128),
        prefix + "encoder.layer.1.output.LayerNorm.bias": torch.randn(128),
        "speech_Qformer.cls.predictions.bias": torch.randn(30),
    }
    plain = _load(tiny_paths)
    model = _load(tiny_paths, checkpoint=_variant(tiny_paths, tmp_path, lambda s: s.update(extra)))
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    torch.testing.assert_close(model.encode_audio([wave]), plain.encode_audio([wave]))


def test_shape_mismatch(tiny_paths, tmp_path):
    path = _variant(
        tiny_paths, tmp_path, lambda s: s.update({"speech_query_tokens": torch.zeros(1, 1, 64)})
    )
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatch.*speech_query_tokens \[1, 1, 64\] vs model \[1, 1, 128\]",
    ):
        _load(tiny_paths, checkpoint=path)


def test_projector_width_differs_from_llm(tiny_paths, tmp_path):
    def widen(state):
        state["speech_llama_proj.weight"] = torch.zeros(
            5120, state["speech_llama_proj.weight"].shape[1]
        )
        state["speech_llama_proj.bias"] = torch.zeros(5120)

    with pytest.raises(
        CheckpointError,
        match=r"checkpoint projects to 5120 \(SALMONN-13B, needs vicuna-13b-v1.1\) "
        r"but the LLM at .* has hidden size 64",
    ):
        _load(tiny_paths, checkpoint=_variant(tiny_paths, tmp_path, widen))


def test_qformer_encoder_width_differs_from_encoders(tiny_paths, tmp_path):
    def narrow(state):
        for i in range(2):
            for proj in ("key", "value"):
                key = f"speech_Qformer.bert.encoder.layer.{i}.crossattention.self.{proj}.weight"
                state[key] = torch.zeros(state[key].shape[0], 100)

    with pytest.raises(
        CheckpointError,
        match=r"Q-Former reads 100 channels but Whisper .* gives 64 and BEATs .* gives 128",
    ):
        _load(tiny_paths, checkpoint=_variant(tiny_paths, tmp_path, narrow))


def test_official_checkpoint_needs_whisper_large_v2(tiny_paths, tmp_path):
    def official(state):
        state["speech_Qformer.bert.encoder.layer.0.attention.self.query.weight"] = torch.zeros(
            768, 768
        )
        state["speech_llama_proj.weight"] = torch.zeros(4096, 768)

    llm = tmp_path / "llm7b"
    llm.mkdir()
    config = json.loads((Path(tiny_paths.llm) / "config.json").read_text())
    (llm / "config.json").write_text(json.dumps({**config, "hidden_size": 4096}))
    with pytest.raises(
        CheckpointError, match=r"SALMONN-7B.*Whisper folder .* is not whisper-large-v2"
    ):
        _load(tiny_paths, checkpoint=_variant(tiny_paths, tmp_path, official), llm=str(llm))


def test_beats_path_that_is_not_beats(tiny_paths, tmp_path):
    bogus = tmp_path / "random.pt"
    torch.save({"weights": torch.randn(3, 3)}, bogus)
    with pytest.raises(CheckpointError, match="not a BEATs checkpoint"):
        _load(tiny_paths, beats=str(bogus))


def test_beats_table_copies_are_checked(tiny_paths, tmp_path):
    def change(state):
        key = "beats.encoder.layers.1.self_attn.relative_attention_bias.weight"
        state[key] = state[key] + 1

    with pytest.raises(
        CheckpointError, match="relative position table .* differs from the BEATs file"
    ):
        _load(tiny_paths, checkpoint=_variant(tiny_paths, tmp_path, change))


def test_rotary_copies_are_checked(tiny_paths, tmp_path):
    def change(state):
        key = "llama_model.base_model.model.model.layers.0.self_attn.rotary_emb.inv_freq"
        state[key] = state[key] * 2

    with pytest.raises(CheckpointError, match="rotary frequencies .* differ from the LLM"):
        _load(tiny_paths, checkpoint=_variant(tiny_paths, tmp_path, change))


def test_legacy_and_zip_files_read_alike(tiny_paths, tmp_path):
    legacy = tmp_path / "legacy.pth"
    torch.save(_raw(tiny_paths), legacy, _use_new_zipfile_serialization=False)
    old, new = read_checkpoint(legacy), read_checkpoint(tiny_paths.checkpoint)
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in new)


def test_checkpoint_without_model_entry(tiny_paths, tmp_path):
    bare = tmp_path / "bare.pth"
    torch.save(_raw(tiny_paths)["model"], bare)
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        read_checkpoint(bare)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(garbage)


def test_llm_folder_without_tokenizer(tiny_paths, tmp_path):
    llm = tmp_path / "llm"
    shutil.copytree(tiny_paths.llm, llm)
    (llm / "tokenizer.model").unlink()
    for extra in llm.glob("tokenizer*.json"):
        extra.unlink()
    with pytest.raises(CheckpointError, match="no tokenizer.model or tokenizer.json"):
        _load(tiny_paths, llm=str(llm))


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert (
        resolve_dtype("fp16", cpu) == torch.float16
        and resolve_dtype("bfloat16", cpu) == torch.bfloat16
    )
    assert resolve_dtype(torch.float32, cpu) == torch.float32
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("int8", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="CUDA"):
            load_model("w", "b", "l", "c", device="cpu", load_in_8bit=True)
