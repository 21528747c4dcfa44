"""The library's task API (salmonn.jobs.tasks): task building, and run_task against the CLI's records."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import tone

import salmonn
from salmonn.errors import PromptError
from salmonn.jobs.tasks import Task, make_task
from salmonn.model.prompt import audio_instruction
from salmonn_cli.main import cli


@pytest.mark.parametrize(
    ("task", "args", "template", "variables", "joiner"),
    [
        ("transcribe", {}, "transcribe.en", {}, " "),
        ("transcribe", {"language": "zh"}, "transcribe.zh", {}, ""),
        ("translate", {"to": "zh"}, "translate.zh", {}, ""),
        ("translate", {"to": "DE"}, "translate.de", {}, " "),
        ("translate", {"to": "fr"}, "translate.any", {"language": "French"}, " "),
        ("caption", {}, "caption.audio", {}, " "),
        ("caption", {"music": True}, "caption.music", {}, " "),
        ("ask", {"question": "who?"}, "ask", {"question": "who?"}, " "),
        ("story", {}, "story", {}, " "),
        ("reason", {}, "reason", {}, " "),
        ("reason", {"question": "why?"}, "reason.question", {"question": "why?"}, " "),
    ],
)
def test_make_task_picks_the_template(task, args, template, variables, joiner):
    built = make_task(task, **args)
    assert (built.name, built.template, dict(built.variables), built.joiner) == (
        task,
        template,
        variables,
        joiner,
    )
    assert (built.note is not None) == (template == "translate.any")


@pytest.mark.parametrize(
    ("task", "args", "needle"),
    [
        ("dance", {}, "unknown task"),
        ("transcribe", {"question": "x"}, "does not take question"),
        ("transcribe", {"language": "fr"}, "no transcription prompt"),
        ("translate", {}, "target language"),
        ("ask", {"question": "  "}, "question is empty"),
        ("story", {"variables": {"a": "b"}}, "does not take variables"),
        ("prompt", {}, "exactly one of template and text"),
        ("prompt", {"text": "hi", "variables": {"a": "b"}}, "not with a raw text"),
    ],
)
def test_make_task_rejects_arguments_that_do_not_fit(task, args, needle):
    with pytest.raises(PromptError, match=needle):
        make_task(task, **args)


def test_specs_render_prompts_and_join_modes():
    spec = make_task("ask", question="Who is {angry}?").spec()
    assert spec.prompt == "<Speech><SpeechHere></Speech> Who is {angry}?"
    assert spec.join == "summary" and spec.summary_prompt is not None
    assert make_task("transcribe").spec().join == "concat"
    raw = make_task("prompt", text="Count the {beeps}.").spec()
    assert raw.prompt == "<Speech><SpeechHere></Speech> Count the {beeps}."
    assert raw.task == "prompt" and raw.join == "summary"
    with pytest.raises(PromptError, match="missing variable"):
        make_task("prompt", template="eval.QA").spec()
    with pytest.raises(PromptError, match="text template"):
        Task("x", "summary.ask").spec()


def test_audio_instruction_adds_the_speech_tags_once():
    assert audio_instruction(" Describe it. ") == "<Speech><SpeechHere></Speech> Describe it."
    kept = "Before <Speech><SpeechHere></Speech> after"
    assert audio_instruction(kept) == kept
    with pytest.raises(PromptError, match="once"):
        audio_instruction("<SpeechHere><SpeechHere>")


def test_run_task_gives_the_cli_records_for_long_and_short_files(tiny_paths, model_flags, tmp_path):
    """A long file's whole-recording answer from Python equals `salmonn ask` on the same file."""
    long = tone(tmp_path / "long.wav", 3.0, 300.0)
    short = tone(tmp_path / "short.wav", 1.0, 500.0)
    settings = ["--chunk-seconds", "1.5", "--max-new-tokens", "4", "--num-beams", "1"]
    result = CliRunner().invoke(
        cli,
        ["ask", str(long), str(short), "who?", *model_flags, *settings, "--device", "cpu", "-q"],
    )
    assert result.exit_code == 0, result.output
    expected = [json.loads(line) for line in result.stdout.splitlines()]

    model = salmonn.load_model(
        whisper=tiny_paths.whisper,
        beats=tiny_paths.beats,
        llm=tiny_paths.llm,
        checkpoint=tiny_paths.checkpoint,
        device="cpu",
    )
    records = list(
        salmonn.run_task(
            model,
            [long, str(short)],
            "ask",
            question="who?",
            generation=salmonn.GenerationOptions(max_new_tokens=4, num_beams=1),
            chunking=salmonn.ChunkingOptions(max_seconds=1.5),
        )
    )
    assert [r.path for r in records] == [e["path"] for e in expected]
    assert len(records[0].segments) == 2 and records[0].timings["summary_s"] > 0
    for record, want in zip(records, expected, strict=True):
        got = record.to_dict()
        for key in ("text", "segments", "duration", "error", "task", "prompt"):
            assert got[key] == want[key], key
