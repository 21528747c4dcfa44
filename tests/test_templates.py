"""Prompt templates: validation table, built-ins (the original's wording), user folder, packaging."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from salmonn.errors import PromptError
from salmonn.jobs.records import Segment
from salmonn.jobs.templates import (
    builtin_templates,
    format_segments,
    get_template,
    instruction_text,
    load_templates,
    parse_template,
    render,
    render_summary,
    user_prompt_dir,
)

REPO = Path(__file__).resolve().parents[1]
S = "<Speech><SpeechHere></Speech> "


@pytest.fixture(autouse=True)
def _no_user_prompts(monkeypatch, tmp_path):
    """Keep the developer's own prompt folder out of every test."""
    monkeypatch.delenv("SALMONN_PROMPTS_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


# (text, kind, expected variables or the substring of the PromptError)
TEMPLATE_TABLE = [
    (S + "Please describe the audio.", "audio", ()),
    (S + "{question}", "audio", ("question",)),
    (S + "{a} and {b} then {a} again", "audio", ("a", "b")),
    (S + 'JSON like {{"k": 1}} is literal', "audio", ()),
    ("Question: {question}\n{segments}", "text", ("question", "segments")),
    ("Please describe the audio.", "audio", "exactly one <SpeechHere>, found 0"),
    (S + S + "twice", "audio", "exactly one <SpeechHere>, found 2"),
    (S + "no placeholder allowed", "text", "must not contain <SpeechHere>"),
    (S + "{a.b}", "audio", "bad placeholder '{a.b}'"),
    (S + "{0}", "audio", "bad placeholder '{0}'"),
    (S + "{}", "audio", "bad placeholder '{}'"),
    (S + "{x[0]}", "audio", "bad placeholder '{x[0]}'"),
    (S + "{x!r}", "audio", "bad placeholder"),
    (S + "{x:>10}", "audio", "bad placeholder"),
    (S + "stray { brace", "audio", "bad placeholder '{'"),
    (S + "stray } brace", "audio", "bad placeholder '}'"),
    (S + "   ", "sound", "kind must be one of audio, text"),
]


@pytest.mark.parametrize(("text", "kind", "expected"), TEMPLATE_TABLE)
def test_template_table(text, kind, expected):
    if isinstance(expected, tuple):
        assert parse_template("t.x", text, kind=kind).variables == expected
    else:
        with pytest.raises(PromptError, match="'t.x'") as err:
            parse_template("t.x", text, kind=kind)
        assert expected in str(err.value)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({}, "missing variable(s) question"),
        ({"question": "q", "lang": "x"}, "unknown variable(s) lang"),
        ({"question": 3}, "value of question must be a string"),
        ({"question": "<SpeechHere>"}, "must not contain <SpeechHere>"),
    ],
)
def test_render_errors_name_template_and_variables(variables, message):
    tpl = parse_template("ask.test", S + "{question}")
    with pytest.raises(PromptError, match=r"'ask\.test'") as err:
        render(tpl, **variables)
    assert message in str(err.value)


def test_render_is_verbatim_and_braces_are_literal():
    tpl = parse_template("t", S + "{{literal}} {q} {{{q}}}")
    # a value holding braces or attribute syntax is inserted as is, never expanded again
    assert (
        render(tpl, q="{q.__class__} {0}") == S + "{literal} {q.__class__} {0} {{q.__class__} {0}}"
    )


# The original's 25 evaluation prompts, typed out here on purpose (not read from prompts/eval.json,
# the one source the package and salmonn.model.tiny read): an independent check that the file is verbatim.
SPEC_10_1 = {
    "asr": "Recognize the speech and give me the transcription.",
    "audiocaption": "Please describe the audio.",
    "audiocaption_v2": "Please write down what your hear in the audio.",
    "music_description": "Listen to this music clip and describe the music.",
    "audio_story_telling": (
        "Based on the audio, write a story in detail. "
        "Your story should be highly related to the audio."
    ),
    "speech_audio_coreasoning": (
        "Use your strong reasoning skills to answer the speaker's question in detail based on the "
        "background sound."
    ),
    "translation_ec": "Listen to the speech and translate it into Chinese.",
    "translation_en2de": "Listen to the speech and translate it into German.",
    "translation_en2ja": "Listen to the speech and translate it into Japanese.",
    "asr_zh": "请将语音中的内容写下来。",
    "asr_de": "Hören Sie sich die Rede an und schreiben Sie ihren Inhalt auf.",
    "audio_speech_description": "Describe the speech and the background audio",
}
CLI_NAMES = {
    "transcribe.en": "asr",
    "transcribe.zh": "asr_zh",
    "transcribe.de": "asr_de",
    "translate.zh": "translation_ec",
    "translate.de": "translation_en2de",
    "translate.ja": "translation_en2ja",
    "caption.audio": "audiocaption",
    "caption.music": "music_description",
    "story": "audio_story_telling",
    "reason": "speech_audio_coreasoning",
}


@pytest.mark.parametrize("key", sorted(SPEC_10_1))
def test_eval_templates_match_spec(key):
    assert get_template(f"eval.{key}").text == S + SPEC_10_1[key]


@pytest.mark.parametrize(("name", "key"), sorted(CLI_NAMES.items()))
def test_cli_templates_match_spec(name, key):
    tpl = get_template(name)
    assert tpl.text == S + SPEC_10_1[key]
    assert tpl.kind == "audio" and tpl.variables == ()


def test_builtins_complete_and_consistent():
    templates = load_templates()
    assert (
        len([n for n in templates if n.startswith("eval.")]) == 25
    )  # all of the original's evaluation prompts
    assert render(templates["ask"], question="Who speaks?") == S + "Who speaks?"
    assert render(templates["eval.QA"], question="Who?") == S + "Who?"
    assert render(templates["eval.slot_filling"], slot="date") == (
        S + "According to the speech, what is the date?"
    )
    assert render(templates["translate.any"], language="French") == (
        S + "Listen to the speech and translate it into French."
    )
    assert templates["reason.question"].variables == ("question",)
    for name in ("transcribe.en", "translate.zh", "eval.asr"):
        assert templates[name].summary is None  # chunk answers are the output
    expected = {
        "caption.audio": "summary.caption",
        "story": "summary.story",
        "reason": "summary.reason",
        "ask": "summary.ask",
        "reason.question": "summary.reason.question",
    }
    for name, summary in expected.items():
        assert templates[name].summary == summary
        assert templates[summary].kind == "text"
        assert "segments" in templates[summary].variables
    for tpl in templates.values():
        assert tpl.source.startswith("salmonn.prompt_data/") and tpl.description


def test_summary_prompts_fit_a_small_context():
    # Vicuna has 2048 tokens; the fixed part of each summary prompt must leave room for the segments
    for tpl in builtin_templates().values():
        if tpl.kind == "text":
            assert len(tpl.text) < 450, tpl.name
            assert "[mm:ss" in tpl.text


def test_render_summary_fills_segments_question_and_task_prompt():
    templates = load_templates()
    segs = [Segment(0, 30, "a dog\nbarks"), Segment(30, 61.4, " "), Segment(61.4, 3725, "rain")]
    lines = format_segments(segs)
    assert lines == "[00:00-00:30] a dog barks\n[01:01-1:02:05] rain"
    ask = render_summary(
        templates["summary.ask"], segs, S + "Is it raining?", question="Is it raining?"
    )
    assert ask.startswith("Question: Is it raining?\n") and lines in ask and "<Speech" not in ask
    generic = render_summary(templates["summary.prompt"], segs, render(templates["eval.keywords"]))
    assert "Instruction: Give me only three keywords of the text.\n" in generic
    assert instruction_text(S + " Hi there ") == "Hi there"


def _write(folder: Path, name: str, data: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_user_dir_overrides_and_extends(tmp_path):
    user = tmp_path / "mine"
    _write(
        user,
        "caption.json",
        {
            "task": "caption",
            "templates": {
                "caption.audio": {
                    "text": S + "Describe the sounds briefly.",
                    "description": "short",
                },
                "caption.birds": {"text": S + "Which birds sing?", "summary": "summary.caption"},
            },
        },
    )
    templates = load_templates(user)
    assert templates["caption.audio"].text == S + "Describe the sounds briefly."
    assert templates["caption.audio"].source == str(user / "caption.json")
    assert templates["caption.birds"].summary == "summary.caption"
    assert templates["caption.music"].text.endswith("describe the music.")  # untouched built-in
    assert get_template("caption.birds", user).text == S + "Which birds sing?"


def test_user_dir_from_environment(tmp_path, monkeypatch):
    xdg_dir = tmp_path / "xdg" / "salmonn" / "prompts"
    assert user_prompt_dir() is None  # does not exist yet
    _write(xdg_dir, "x.json", {"task": "x", "templates": {"x": {"text": S + "from xdg"}}})
    assert user_prompt_dir() == xdg_dir
    assert get_template("x").text == S + "from xdg"
    env_dir = tmp_path / "env"
    _write(env_dir, "y.json", {"task": "y", "templates": {"y.z": {"text": S + "from env"}}})
    monkeypatch.setenv("SALMONN_PROMPTS_DIR", str(env_dir))
    assert user_prompt_dir() == env_dir
    templates = load_templates()
    assert "y.z" in templates and "x" not in templates
    monkeypatch.setenv("SALMONN_PROMPTS_DIR", str(tmp_path / "missing"))
    with pytest.raises(PromptError, match="does not exist"):
        load_templates()


BAD_FILES = [
    ({"task": "t", "templates": {"t": {"text": S + "x"}}, "extra": 1}, "unknown key(s) extra"),
    ({"task": "t", "templates": {"t": {"text": S + "x", "prompt": "y"}}}, "unknown key(s) prompt"),
    ({"task": "t", "templates": {"t": {"description": "no text"}}}, "missing key(s) text"),
    ({"templates": {"t": {"text": S + "x"}}}, "missing key(s) task"),
    ({"task": "t", "templates": {"other": {"text": S + "x"}}}, "must be 't' or start with 't.'"),
    ({"task": "t", "templates": {}}, "non-empty object"),
    ({"task": "t", "templates": {"t": {"text": "no speech"}}}, "exactly one <SpeechHere>"),
    ({"task": "t", "templates": {"t": {"text": S + "{a.b}"}}}, "bad placeholder"),
    (
        {"task": "t", "templates": {"t": {"text": S + "x", "summary": "nope"}}},
        "'nope' is not a text",
    ),
    (
        {
            "task": "t",
            "templates": {
                "t": {"text": S + "x", "summary": "t.s"},
                "t.s": {"text": "{segments} {other}", "kind": "text"},
            },
        },
        "takes other",
    ),
    (
        {"task": "caption", "templates": {"caption.audio": {"text": S + "{question}"}}},
        "must use the same variables",
    ),
    (
        {"task": "summary", "templates": {"summary.ask": {"text": S + "{question}{segments}"}}},
        "must stay a text template",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD_FILES)
def test_bad_user_files(tmp_path, data, message):
    _write(tmp_path / "p", "bad.json", data)
    with pytest.raises(PromptError) as err:
        load_templates(tmp_path / "p")
    assert message in str(err.value)
    assert "bad.json" in str(err.value) or "summary" in message


def test_bad_json_and_duplicates(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "a.json").write_text('{"task": "a", "templates": {"a": {"text": "x", "text": "y"}}}')
    with pytest.raises(PromptError, match="duplicate key 'text'"):
        load_templates(folder)
    (folder / "a.json").write_text("{not json")
    with pytest.raises(PromptError, match="not valid JSON"):
        load_templates(folder)
    _write(folder, "a.json", {"task": "a", "templates": {"a": {"text": S + "1"}}})
    _write(folder, "b.json", {"task": "a", "templates": {"a": {"text": S + "2"}}})
    with pytest.raises(PromptError, match="defined twice"):
        load_templates(folder)


def test_unknown_name_lists_close_names():
    with pytest.raises(PromptError, match="did you mean caption.audio") as err:
        get_template("captoin.audio")
    with pytest.raises(PromptError) as err:
        get_template("translate")
    assert "translate.zh" in str(err.value) and "translate.any" in str(err.value)


def test_wheel_ships_prompt_files(tmp_path):
    """A non-editable install finds the templates: build a wheel, unpack it, load from elsewhere."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("salmonn", "prompts", "salmonn_cli"):
        if (REPO / package).is_dir():
            shutil.copytree(
                REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:  # a package another engineer has not written yet
            (src / package).mkdir()
            (src / package / "__init__.py").write_text("")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        "dist",
        ".",
    ]
    subprocess.run(
        cmd, cwd=src, check=True, capture_output=True, env={**os.environ, "PIP_NO_INDEX": "1"}
    )
    (wheel,) = (src / "dist").glob("salmonn-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("salmonn/prompt_data/")}
        zf.extractall(tmp_path / "site")
    expected = {f"salmonn/prompt_data/{p.name}" for p in (REPO / "prompts").glob("*.json")}
    assert expected and expected <= shipped
    code = (
        "import salmonn, salmonn.jobs.templates as t; "
        "print(salmonn.__file__); print(len(t.load_templates(None)))"
    )
    env = {
        "PYTHONPATH": str(tmp_path / "site"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "PATH": os.environ["PATH"],
    }
    # -S: no site-packages, so the editable install of this checkout cannot answer the import
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert out[0].startswith(str(tmp_path / "site"))
    assert int(out[1]) == len(load_templates())
