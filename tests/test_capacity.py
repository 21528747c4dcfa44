"""--batch-size auto: the memory estimate, its use by the engine and the CLI flags."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from salmonn.config import DEFAULT_BATCH_SIZE, GenerationOptions, check_batch_size, prefetch_depth
from salmonn.model.capacity import LlmShape, auto_batch_size, bytes_per_chunk
from salmonn.model.generation import Decoder

BEAM = GenerationOptions(max_new_tokens=34, num_beams=3)


def test_auto_is_a_batch_size_value():
    assert check_batch_size("auto") == "auto" and check_batch_size(" Auto ") == "auto"
    assert check_batch_size("3") == 3
    assert prefetch_depth("auto") >= 16 and prefetch_depth(20) == 40


def test_estimate_scales_with_memory_and_settings():
    shape = LlmShape(layers=40, hidden=5120, vocab=32001, dtype_bytes=2)  # Vicuna-13B, fp16
    assert auto_batch_size(None, shape, BEAM) == DEFAULT_BATCH_SIZE  # no GPU to measure
    per = bytes_per_chunk(shape, BEAM)
    assert auto_batch_size(int(per / 0.8) * 10, shape, BEAM) == 10
    assert auto_batch_size(0, shape, BEAM) == 1 and auto_batch_size(10**15, shape, BEAM) == 64
    greedy = GenerationOptions(max_new_tokens=40, num_beams=1)
    longer = GenerationOptions(max_new_tokens=400, num_beams=3)
    assert bytes_per_chunk(shape, greedy) < per < bytes_per_chunk(shape, longer)
    assert LlmShape.from_config(
        {"num_hidden_layers": 2, "hidden_size": 8, "vocab_size": 9}, torch.float32
    ) == LlmShape(2, 8, 10, 4)


def test_estimate_covers_what_the_cache_really_holds():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4,
    )  # fmt: skip
    lm = LlamaForCausalLM(config).eval()
    items, prompt = 3, 150  # a prompt as long as the estimate's
    decoder = Decoder(lm, BEAM, eos_token_id=2, embed_tokens=lm.get_input_embeddings())
    decoder.add(list(range(items)), torch.randn(items, prompt, 64), torch.ones(items, prompt))
    held = 0
    while decoder.running:
        decoder.step()
        held = max(held, decoder.runner.held_bytes())
    shape = LlmShape.from_config(config, torch.float32)
    kv_estimate = bytes_per_chunk(shape, BEAM) - 3 * shape.vocab * 16 - (160 << 20)
    assert 0 < held <= items * kv_estimate


def test_engine_resolves_auto_with_the_model(monkeypatch):
    from salmonn.jobs.engine import process
    from salmonn.jobs.spec import TaskSpec

    seen = []

    class Model:
        def __init__(self):
            self.identity = {}

        def auto_batch_size(self, options):
            seen.append(options.num_beams)
            return 3

        def generate(self, waves, prompts, options):
            seen.append(len(waves))
            return [SimpleNamespace(text="x") for _ in waves]

        def generate_text(self, prompts, options):
            return [SimpleNamespace(text="x") for _ in prompts]

    chunks = [
        SimpleNamespace(
            file_index=0,
            chunk=SimpleNamespace(start=i, end=i + 1, samples=[0.0]),
            error=None,
            last=i == 6,
        )
        for i in range(7)
    ]
    items = [SimpleNamespace(path="a.wav")]
    records = list(
        process(
            Model(), items, TaskSpec("t", "p"), generation=BEAM, batch_size="auto", chunks=chunks
        )
    )
    assert seen == [3, 3, 3, 1] and len(records[0].segments) == 7


@pytest.mark.parametrize("flag", [[], ["--exact"]])
def test_cli_exact_and_auto_batch_settings(flag, monkeypatch):
    from salmonn_cli.main import cli
    from salmonn_cli.settings import TaskSettings

    monkeypatch.delenv("SALMONN_BATCH_SIZE", raising=False)
    ctx = cli.make_context("salmonn", ["transcribe", "a.wav", *flag])
    with ctx:
        sub = cli.get_command(ctx, "transcribe")
        params = sub.make_context("transcribe", ["a.wav", *flag], parent=ctx).params
    settings = TaskSettings.from_params(params, config_file=None)
    assert settings.batch_size == "auto"
    assert settings.model.load_kwargs(quantization=True)["exact"] is bool(flag)
    assert "exact" not in settings.model.load_kwargs()


def test_heap_trimmer_trims_once_per_batch_of_answers():
    import sys

    from salmonn.model.capacity import HeapTrimmer

    trimmer = HeapTrimmer(every=3)
    if sys.platform.startswith("linux"):
        assert trimmer._trim is not None  # glibc's malloc_trim is found
    calls = []
    trimmer._trim = calls.append
    for answered in (1, 1, 2, 5, 0, 1):
        trimmer.answered(answered)
    assert calls == [0, 0]  # after 4 answers and after 5 more; the last 1 waits
