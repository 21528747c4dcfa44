"""The five manifest formats: read, checked entry by entry, written back in their own shape."""

from __future__ import annotations

import json

import pytest
from helpers import tone

from salmonn.errors import ConfigError
from salmonn.eval.manifests import (
    WRITE_BACK_FIELD,
    ManifestError,
    detect_format,
    read_manifest,
    write_back,
)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest-audio")
    for name in ("a.wav", "b.wav", "sub/c.wav", "sound_ds/d.wav"):
        tone(root / name, 0.2)
    return root


def _jsonl(path, entries):
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    return path


def _write(fmt, root):
    """A manifest of ``fmt`` in ``root`` with two entries; returns its path."""
    if fmt == "jsonl":
        return _jsonl(
            root / "ours.jsonl",
            [
                {"id": "u1", "audio": "a.wav", "reference": "hello world", "task": "transcribe"},
                {
                    "audio": str(root / "b.wav"),
                    "reference": "dog",
                    "question": "What animal?",
                    "choices": ["dog", "cat"],
                    "answer": "dog",
                },
            ],
        )
    if fmt == "nemo":
        return _jsonl(
            root / "nemo.jsonl",
            [
                {"audio_filepath": "a.wav", "text": "hello", "duration": 0.2},
                {"audio_filepath": "sub/c.wav", "text": "world", "duration": 0.2},
            ],
        )
    if fmt == "salmonn":
        document = {
            "annotation": [
                {"path": "a.wav", "text": "hello", "task": "asr"},
                {"path": "b.wav", "text": "Paris", "task": "slot_filling", "Q": "city"},
            ]
        }
        (root / "ann.json").write_text(json.dumps(document))
        return root / "ann.json"
    if fmt == "mmau":
        entries = [
            {
                "id": "m1",
                "audio_id": "./a.wav",
                "question": "Which sound?",
                "choices": ["bird", "car"],
                "answer": "car",
                "task": "sound",
            },
            {
                "id": "m2",
                "audio_id": "sub/c.wav",
                "question": "Genre?",
                "choices": ["jazz", "rock", "pop"],
                "answer": "pop",
            },
        ]
        (root / "mmau.json").write_text(json.dumps(entries))
        return root / "mmau.json"
    entries = [
        {
            "path": "d.wav",
            "question": "What is it?",
            "choice_a": "a bell",
            "choice_b": "a horn",
            "answer_gt": "a horn",
            "task_name": "sound",
            "dataset_name": "ds",
            "uniq_id": 7,
        },
        {
            "path": "a.wav",
            "question": "Who?",
            "choice_a": "man",
            "choice_b": "woman",
            "choice_c": "child",
            "answer_gt": "man",
            "uniq_id": 8,
        },
    ]
    (root / "air.json").write_text(json.dumps(entries))
    return root / "air.json"


@pytest.mark.parametrize("fmt", list(WRITE_BACK_FIELD))
def test_each_format_is_detected_read_and_written_back(fmt, audio):
    path = _write(fmt, audio)
    assert detect_format(path) == fmt
    manifest = read_manifest(path)
    assert manifest.fmt == fmt and len(manifest.items) == 2
    assert all((audio / item.audio).is_file() for item in manifest.items)
    answers = {manifest.items[0].id: "first answer", manifest.items[1].id: None}
    out = write_back(manifest, answers, audio / f"back-{path.name}")  # beside: same relative paths
    text = out.read_text()
    if fmt in ("jsonl", "nemo"):
        written = [json.loads(line) for line in text.splitlines()]
    elif fmt == "salmonn":
        written = json.loads(text)["annotation"]
    else:
        written = json.loads(text)
    field = WRITE_BACK_FIELD[fmt]
    assert [w[field] for w in written] == ["first answer", ""]
    original = [dict(e) for e in manifest.entries]
    assert [{k: v for k, v in w.items() if k != field} for w in written] == original
    again = read_manifest(out, fmt)  # the written-back file reads as the same items
    assert [i.reference for i in again.items] == [i.reference for i in manifest.items]


def test_items_carry_what_each_format_says(audio):
    ours = read_manifest(_write("jsonl", audio)).items
    assert (ours[0].id, ours[0].task, ours[0].reference) == ("u1", "transcribe", "hello world")
    assert (ours[1].id, ours[1].choices, ours[1].answer) == ("2", ["dog", "cat"], "dog")
    original = read_manifest(_write("salmonn", audio)).items
    assert [i.task for i in original] == ["eval.asr", "eval.slot_filling"]
    assert original[1].variables == {"slot": "city"} and original[1].question is None
    mmau = read_manifest(_write("mmau", audio)).items
    assert mmau[0].audio == str(audio / "a.wav") and mmau[1].choices == ["jazz", "rock", "pop"]
    air = read_manifest(_write("air-bench", audio)).items
    assert air[0].audio == str(audio / "sound_ds" / "d.wav")  # <task>_<dataset>/ folder
    assert air[1].choices == ["man", "woman", "child"] and air[1].id == "8"


def test_every_bad_line_is_reported_with_its_number_in_order(audio):
    path = audio / "bad.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"audio": "a.wav", "reference": "fine"}),
                "{not json",
                json.dumps({"reference": "no audio field"}),
                json.dumps({"audio": "missing.wav", "reference": "x"}),
                "",
                json.dumps({"audio": "a.wav", "reference": "x", "choices": "dog"}),
                json.dumps(["a list"]),
                json.dumps({"audio": "a.wav"}),
            ]
        )
    )
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    problems = caught.value.problems
    assert [p.split(": ")[1] for p in problems] == [
        "line 2",
        "line 3",
        "line 4",
        "line 6",
        "line 7",
        "line 8",
    ]
    assert "'audio'" in problems[1] and "missing.wav" in problems[2]
    assert "'choices'" in problems[3] and "'reference'" in problems[5]
    assert all(p.startswith(str(path)) for p in problems)


def test_json_entries_are_numbered_and_repeated_ids_refused(audio):
    path = audio / "dup.json"
    entry = {"id": "x", "audio_id": "a.wav", "question": "q", "choices": ["a", "b"], "answer": "a"}
    path.write_text(json.dumps([entry, {**entry, "choices": []}, entry]))
    with pytest.raises(ManifestError) as caught:
        read_manifest(path, "mmau")
    assert [p.split(": ")[1] for p in caught.value.problems] == ["entry 2", "entry 3"]
    assert "repeats entry 1" in caught.value.problems[1]


def test_a_missing_or_empty_manifest_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such manifest"):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="no entries"):
        read_manifest(tmp_path / "empty.jsonl")
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(ConfigError, match="unknown manifest format"):
        read_manifest(tmp_path / "x.json", "csv")


@pytest.mark.parametrize("answer", ["a horn", "A Horn", "B", "(b)"])
def test_a_multiple_choice_answer_is_a_choice_or_its_letter(audio, answer):
    path = audio / "choice.json"
    path.write_text(
        json.dumps(
            [
                {
                    "path": "a.wav",
                    "question": "q",
                    "choice_a": "a bell",
                    "choice_b": "a horn",
                    "answer_gt": answer,
                }
            ]
        )
    )
    assert read_manifest(path, "air-bench").items[0].answer == answer


def test_a_multiple_choice_answer_outside_the_choices_is_a_bad_entry(audio):
    path = audio / "wrong.json"
    entry = {"id": "1", "audio_id": "a.wav", "question": "q", "choices": ["x", "y"], "answer": "z"}
    path.write_text(json.dumps([entry, {**entry, "id": "2", "answer": "C"}]))
    with pytest.raises(ManifestError) as caught:
        read_manifest(path, "mmau")
    assert len(caught.value.problems) == 2
    assert all("not one of the choices" in p for p in caught.value.problems)
