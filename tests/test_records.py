"""Result records: the pinned v1 JSON form, round trips, resume keys, reading JSONL back; the
one-line error text records carry."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from salmonn.config import GenerationOptions
from salmonn.errors import ConfigError, error_line
from salmonn.jobs.records import Record, Segment, iter_jsonl, resume_key

GOLDEN = Path(__file__).parent / "golden" / "record_v1.jsonl"
ASR = "<Speech><SpeechHere></Speech> Recognize the speech and give me the transcription."


def _golden_lines() -> list[str]:
    return GOLDEN.read_text(encoding="utf-8").splitlines()


def _transcript() -> Record:
    # the first golden line, built with unrounded times and unsorted nested keys
    return Record(
        path="talks/día 1.wav",
        task="transcribe",
        prompt=ASR,
        text="Hello there. 你好。",
        segments=[Segment(0, 29.87501, "Hello there."), Segment(29.87501, 41.2000004, "你好。")],
        duration=41.2000004,
        error=None,
        model={"preset": "salmonn-7b", "dtype": "float32", "device": "cpu"},
        options={"seed": None, "num_beams": 4, "max_new_tokens": 200},
        timings={"total_s": 3.75149, "model_s": 3.5, "decode_s": 0.2500001},
    )


def test_golden_lines():
    ok, failed = _golden_lines()
    assert _transcript().to_json() == ok
    broken = Record(
        "broken.mp3",
        "caption",
        "<Speech><SpeechHere></Speech> Please describe the audio.",
        None,
        [],
        None,
        "broken.mp3: Invalid data found when processing input\n",
        {"preset": "salmonn-7b"},
        {},
        {},
    )
    assert broken.to_json() == failed


@pytest.mark.parametrize("index", [0, 1])
def test_golden_round_trip(index):
    line = _golden_lines()[index]
    record = Record.from_json(line)
    assert record.to_json() == line
    assert Record.from_dict(record.to_dict()) == record
    assert record.ok == (index == 0)


def test_top_level_keys_and_types():
    d = json.loads(_transcript().to_json())
    assert list(d) == [
        "path",
        "task",
        "prompt",
        "text",
        "segments",
        "duration",
        "error",
        "model",
        "options",
        "timings",
        "schema_version",
    ]
    assert d["segments"][1] == {"start": 29.875, "end": 41.2, "text": "你好。"}
    assert "你好" in _transcript().to_json()  # ensure_ascii=False
    assert "\n" not in _transcript().to_json()


def test_values_made_json_safe():
    record = Record(
        path=Path("a") / "b.wav",  # type: ignore[arg-type]
        task="ask",
        prompt="p",
        text="t",
        segments=[],
        duration=float("nan"),
        error="first line\n  second line  \n",
        model={"paths": {"whisper": Path("/w"), "llm": Path("/l")}, "tags": ("x", "y")},
        options=GenerationOptions(num_beams=1, temperature=0.7),  # type: ignore[arg-type]
        timings={"total_s": float("inf"), "chunks": 3},
    )
    d = json.loads(record.to_json())
    assert d["path"] == str(Path("a") / "b.wav")
    assert d["duration"] is None and d["timings"] == {"chunks": 3, "total_s": None}
    assert d["error"] == "first line | second line"
    assert d["model"] == {"paths": {"llm": "/l", "whisper": "/w"}, "tags": ["x", "y"]}
    assert list(d["options"]) == sorted(d["options"])
    assert d["options"]["num_beams"] == 1 and d["options"]["temperature"] == 0.7


def test_resume_key():
    a = _transcript()
    b = _transcript()
    b.options = dict(reversed(list(b.options.items())))
    b.timings, b.text, b.segments = {"total_s": 9.0}, "other", []
    assert a.resume_key() == b.resume_key() == resume_key(a.path, a.task, a.prompt, a.options)
    assert len(a.resume_key()) == 16 and int(a.resume_key(), 16) >= 0
    for change in (
        {"path": "x.wav"},
        {"task": "translate"},
        {"prompt": ASR + " "},
        {"options": {**a.options, "num_beams": 1}},
    ):
        c = _transcript()
        for key, value in change.items():
            setattr(c, key, value)
        assert c.resume_key() != a.resume_key(), change


def test_from_dict_errors():
    line = json.loads(_golden_lines()[0])
    with pytest.raises(ConfigError, match="schema_version 2"):
        Record.from_dict({**line, "schema_version": 2})
    with pytest.raises(ConfigError, match="lacks prompt"):
        Record.from_dict({"path": "a", "task": "b"})
    with pytest.raises(ConfigError, match="bad segment"):
        Record.from_dict({**line, "segments": [{"start": 0}]})
    assert Record.from_dict({**line, "added_later": 1}).to_json() == _golden_lines()[0]


def test_iter_jsonl_tolerates_a_cut_last_line():
    ok, failed = _golden_lines()
    stream = io.StringIO(f"{ok}\n\n{failed}\n{ok[: len(ok) // 2]}")
    records = list(iter_jsonl(stream))
    assert [r.path for r in records] == ["talks/día 1.wav", "broken.mp3"]
    with pytest.raises(ConfigError, match="line 1"):
        list(iter_jsonl(io.StringIO(f"{ok[:20]}\n{ok}\n")))
    with pytest.raises(ConfigError, match="line 1: not a JSON object"):
        list(iter_jsonl(io.StringIO("[1, 2]\n")))


def test_documented_example_is_a_v1_record():
    doc = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    text = doc.read_text(encoding="utf-8")
    block = re.search(r"Example \(one line.*?```json\n(.*?)```", text, re.S)
    assert block, "the JSONL example is missing from docs/cli.md"
    line = block.group(1).replace("\n ", " ").strip()
    assert Record.from_json(line).to_json() == line


@pytest.mark.parametrize(
    "exc, lead, line",
    [
        (
            RuntimeError("Traceback ...\n  frame\nCUDA out of memory\n"),
            0,
            "RuntimeError: CUDA out of memory",
        ),
        (ConfigError("first\nthe cause"), 0, "the cause"),  # ours: no type name
        (
            OSError("404 Client Error.\n\nRepository Not Found\nadvice"),
            2,
            "OSError: 404 Client Error. Repository Not Found",
        ),
        (ValueError("The actor died.\ndetails"), 1, "ValueError: The actor died."),
        (KeyError(), 0, "KeyError"),
        (KeyError(), 2, "KeyError"),
    ],
)
def test_error_line(exc, lead, line):
    assert error_line(exc, lead=lead) == line
