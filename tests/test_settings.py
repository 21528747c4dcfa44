"""Typed settings of the task commands (salmonn_cli.settings) and the executor seam of salmonn_cli.run."""

from __future__ import annotations

import inspect
import json
from dataclasses import fields
from pathlib import Path

import click
import numpy as np
import pytest
import soundfile as sf

from salmonn.config import ChunkingOptions, GenerationOptions
from salmonn.jobs.records import Record
from salmonn.jobs.tasks import make_task
from salmonn_cli import run
from salmonn_cli.main import cli
from salmonn_cli.options import DECODING_OPTIONS, INPUT_OPTIONS, apply
from salmonn_cli.settings import ModelSettings, SettingsError, TaskSettings

pytestmark = pytest.mark.usefixtures("clean_salmonn_env")


def params_of(*args: str) -> dict:
    """The Click values of ``salmonn transcribe ARGS`` (parsed, not run)."""
    ctx = cli.make_context("salmonn", ["transcribe", *args])
    with ctx:
        sub = cli.get_command(ctx, "transcribe")
        return dict(sub.make_context("transcribe", list(args), parent=ctx).params)


def option_names(decorators) -> set[str]:
    """Destination names of the options ``decorators`` add to a command."""
    return {p.name for p in click.command()(apply(decorators)(lambda **_: None)).params}


def test_decoding_and_chunk_flags_are_named_after_the_dataclass_fields():
    generation = {f.name for f in fields(GenerationOptions)}
    chunking = {f.name for f in fields(ChunkingOptions)}
    assert option_names(DECODING_OPTIONS) <= generation
    chunk_flags = option_names(INPUT_OPTIONS) & chunking
    assert chunk_flags == {"max_seconds", "strategy", "overlap_seconds", "channel"}


def test_task_settings_from_flags():
    params = params_of(
        "a.wav",
        "--num-beams",
        "2",
        "--top-k",
        "7",
        "--chunk-seconds",
        "12",
        "--chunk-strategy",
        "fixed",
        "--model",
        "salmonn-13b",
        "--lora-scaling",
        "3",
        "-o",
        "out.jsonl",
    )
    warnings: list[str] = []
    settings = TaskSettings.from_params(params, warn=warnings.append)
    assert settings.generation == GenerationOptions(num_beams=2, top_k=7)
    assert settings.chunking == ChunkingOptions(max_seconds=12.0, strategy="fixed")
    assert settings.batch_size == "auto"  # DEFAULT_BATCH_SIZE on CPU, by memory on CUDA
    assert settings.model.preset == "salmonn-13b" and settings.model.lora_scaling == 3.0
    assert settings.inputs.paths == ("a.wav",) and settings.output.target == "out.jsonl"
    assert warnings == ["--top-k only matters with --do-sample"]


def test_batch_size_is_checked_once_for_flag_env_and_config(monkeypatch, tmp_path):
    monkeypatch.setenv("SALMONN_BATCH_SIZE", "6")
    assert TaskSettings.from_params(params_of("a.wav")).batch_size == 6
    assert TaskSettings.from_params(params_of("a.wav", "--batch-size", "2")).batch_size == 2
    with pytest.raises(SettingsError, match="--batch-size: batch_size must be >= 1, got 0"):
        TaskSettings.from_params(params_of("a.wav", "--batch-size", "0"))
    monkeypatch.setenv("SALMONN_BATCH_SIZE", "1.5")
    with pytest.raises(
        SettingsError, match="env SALMONN_BATCH_SIZE: batch_size must be an integer"
    ):
        TaskSettings.from_params(params_of("a.wav"))


def test_bad_decoding_or_model_flags_are_settings_errors():
    with pytest.raises(SettingsError, match="num_beams must be >= 1"):
        TaskSettings.from_params(params_of("a.wav", "--num-beams", "0"))
    with pytest.raises(SettingsError, match="channel must be >= 0"):
        TaskSettings.from_params(params_of("a.wav", "--channel", "-1"))
    with pytest.raises(SettingsError, match="choose one of --load-in-8bit and --load-in-4bit"):
        TaskSettings.from_params(params_of("a.wav", "--load-in-8bit", "--load-in-4bit"))
    with pytest.raises(SettingsError, match="unknown model 'nope' \\(flag\\)"):
        TaskSettings.from_params(params_of("a.wav", "--model", "nope"))


def test_model_settings_give_load_model_keywords():
    from salmonn.hub.load import load_model

    paths = ["--whisper", "w", "--beats", "b", "--llm", "l", "--checkpoint", "c"]
    model = TaskSettings.from_params(params_of("a.wav", *paths, "--load-in-8bit")).model
    kwargs = model.load_kwargs(quantization=True)
    assert set(kwargs) <= set(inspect.signature(load_model).parameters)
    assert kwargs["preset"] is None  # all four paths and no --model: no preset
    assert (kwargs["whisper"], kwargs["checkpoint"], kwargs["load_in_8bit"]) == ("w", "c", True)
    assert "load_in_8bit" not in model.load_kwargs()
    assert ModelSettings().preset == "salmonn-7b"


def test_the_executor_seam_runs_a_planned_job(tmp_path):
    """run_task plans the job (inputs, resume, settings) and hands it to any executor."""
    for name in ("a.wav", "b.wav"):
        sf.write(tmp_path / name, np.zeros(16_000, np.float32), 16_000)
    out = tmp_path / "out.jsonl"
    jobs: list[run.Job] = []

    def executor(job: run.Job, reporter):
        jobs.append(job)
        for item in job.items:
            yield Record(path=str(item.path), task=job.spec.task, prompt=job.spec.prompt, text="x")

    params = params_of(str(tmp_path), "-o", str(out), "--num-beams", "3", "-q")
    ctx = cli.make_context("salmonn", ["transcribe"])
    with ctx:
        run.run_task(params, make_task("transcribe"), executor=executor)
    (job,) = jobs
    assert [Path(i.path).name for i in job.items] == ["a.wav", "b.wav"]
    assert job.generation.num_beams == 3 and job.batch_size == "auto"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in records] == ["x", "x"] and records[0]["task"] == "transcribe"


def test_model_settings_from_the_model_flags_alone(monkeypatch):
    """What a command with only the model flags (e.g. a server) gets."""
    monkeypatch.setenv("SALMONN_DEVICE", "cpu")
    model = ModelSettings.from_params({"model": "salmonn-13b", "dtype": "bfloat16"})
    assert (model.preset, model.device, model.dtype) == ("salmonn-13b", "cpu", "bfloat16")
    with pytest.raises(SettingsError, match="unknown model"):
        ModelSettings.from_params({"model": "x"})


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_library_device_error_is_worded_with_the_flag(tmp_path, model_flags):
    from click.testing import CliRunner

    sf.write(tmp_path / "a.wav", np.zeros(16_000, np.float32), 16_000)
    args = ["transcribe", str(tmp_path / "a.wav"), *model_flags, "--device", "cuda", "-q"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "--device cuda: CUDA is not available (use --device cpu)" in result.stderr
