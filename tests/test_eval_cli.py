"""``salmonn eval run / score / tasks`` through Click's CliRunner, with the tiny model."""

from __future__ import annotations

import json
import re

import pytest
from helpers import invoke, jsonl, tone

FAST = ["--device", "cpu", "--max-new-tokens", "4", "--num-beams", "1", "-q"]

pytestmark = pytest.mark.usefixtures("clean_salmonn_env")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three short tones, an ASR manifest (ours) and an MMAU-style multiple-choice manifest."""
    root = tmp_path_factory.mktemp("eval-data")
    for i in range(3):
        tone(root / f"a{i}.wav", 1.0, 300.0 + 100 * i)
    references = ["Hello there, World!", "Good morning, everyone.", "See you then!"]
    rows = [{"id": f"u{i}", "audio": f"a{i}.wav", "reference": r} for i, r in enumerate(references)]
    (root / "asr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mmau = [
        {
            "id": f"m{i}",
            "audio_id": f"./a{i}.wav",
            "question": "What is heard?",
            "choices": ["a tone", "speech", "music"],
            "answer": "a tone",
        }
        for i in range(2)
    ]
    (root / "mmau.json").write_text(json.dumps(mmau))
    return root


def test_eval_run_writes_predictions_summary_and_the_manifest_back(data, model_flags, tmp_path):
    out = tmp_path / "out"
    result = invoke(["eval", "run", data / "asr.jsonl", "-o", out, *model_flags, *FAST])
    assert result.exit_code == 0, result.output
    predictions = jsonl((out / "predictions.jsonl").read_text())
    assert [p["id"] for p in predictions] == ["u0", "u1", "u2"]
    for p in predictions:
        assert p["task"] == "transcribe" and p["error"] is None and isinstance(p["text"], str)
        assert p["normalized_reference"] == re.sub(r"[^\w ]", "", p["reference"].lower())
        assert p["outcome"]["reference_length"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "wer" and summary["n"] == 3 and summary["n_failed"] == 0
    errors = sum(p["outcome"]["errors"] for p in predictions)
    assert summary["score"] == pytest.approx(errors / 9)  # corpus-level: summed edits / 9 words
    assert summary["normalizer"]["name"] == "whisper-en"
    assert summary["options"]["generation"]["max_new_tokens"] == 4
    back = jsonl((out / "asr.jsonl").read_text())
    assert [b["prediction"] for b in back] == [p["text"] for p in predictions]
    assert "metric" in result.stderr and "wer" in result.stderr  # the table
    assert result.stdout == ""


def test_eval_run_resume_runs_only_what_is_missing(data, model_flags, tmp_path):
    out = tmp_path / "out"
    args = ["eval", "run", data / "asr.jsonl", "-o", out, *model_flags, *FAST]
    assert invoke(args).exit_code == 0
    first = jsonl((out / "predictions.jsonl").read_text())
    refused = invoke(args)
    assert refused.exit_code == 2 and "--resume" in refused.stderr
    # a run killed after its first prediction, mid-way through writing the second
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text(lines[0] + "\n" + lines[1][:40])
    again = invoke([*args[:-1], "--resume"])  # not -q: the resume note shows
    assert again.exit_code == 0, again.output
    assert "1 of 3 items already done" in again.stderr
    second = jsonl((out / "predictions.jsonl").read_text())
    assert [p["id"] for p in second] == ["u0", "u1", "u2"]
    assert second[0]["timings"] == first[0]["timings"]  # kept, not run again
    assert [p["text"] for p in second] == [p["text"] for p in first]  # greedy: same answers
    done = invoke([*args[:-1], "--resume"])
    assert "3 of 3 items already done" in done.stderr
    changed = invoke([*args, "--resume", "--max-new-tokens", "3"])  # other options: run again
    assert changed.exit_code == 0
    assert all(
        p["options"]["generation"]["max_new_tokens"] == 3
        for p in jsonl((out / "predictions.jsonl").read_text())
    )


def test_eval_run_multiple_choice_counts_unparsed_answers(data, model_flags, tmp_path):
    out = tmp_path / "mc"
    result = invoke(
        ["eval", "run", data / "mmau.json", "-o", out, "--preset", "mmau", *model_flags, *FAST]
    )
    assert result.exit_code == 0, result.output
    predictions = jsonl((out / "predictions.jsonl").read_text())
    assert all("(A) a tone" in p["prompt"] for p in predictions)
    summary = json.loads((out / "summary.json").read_text())
    unparsed = sum(p["outcome"]["extracted_by"] == "unparsed" for p in predictions)
    correct = sum(p["outcome"]["correct"] for p in predictions)
    assert (summary["n_unparsed"], summary["n"]) == (unparsed, 2)
    assert summary["score"] == pytest.approx(correct / 2)
    written = json.loads((out / "mmau.json").read_text())
    assert [w["model_output"] for w in written] == [p["text"] for p in predictions]


def test_bad_manifest_lines_are_all_reported_before_the_model_loads(data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"audio": str(data / "a0.wav"), "reference": "ok"})
        + "\nnot json\n"
        + json.dumps({"audio": str(data / "nope.wav"), "reference": "x"})
        + "\n"
        + json.dumps({"audio": str(data / "a1.wav")})
        + "\n"
    )
    flags = ["--checkpoint", tmp_path / "no-such.pth", "--device", "cpu"]
    result = invoke(["eval", "run", bad, "-o", tmp_path / "out", *flags])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert [line.split(": ")[2] for line in lines] == ["line 2", "line 3", "line 4"]
    assert "3 bad entries" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_item_whose_task_does_not_fit_is_reported_before_the_model_loads(data, tmp_path):
    manifest = tmp_path / "ask.jsonl"
    manifest.write_text(
        json.dumps({"audio": str(data / "a0.wav"), "reference": "x", "task": "ask"}) + "\n"
    )
    result = invoke(["eval", "run", manifest, "-o", tmp_path / "o", "--metric", "wer"])
    assert result.exit_code == 2
    assert "item 1" in result.stderr and "question" in result.stderr


def _predictions(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_eval_score_prints_exactly_one_json_object(tmp_path):
    path = _predictions(
        tmp_path / "p.jsonl",
        [
            {"text": "the cat sat", "reference": "the cat sat down", "task": "transcribe"},
            {"text": "hello", "reference": "hello", "task": "transcribe", "error": None},
        ],
    )
    result = invoke(["eval", "score", path])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert isinstance(summary, dict)
    assert summary["metric"] == "wer"
    assert summary["score"] == pytest.approx(1 / 5)
    assert (summary["n"], summary["n_unparsed"], summary["n_failed"]) == (2, 0, 0)
    assert summary["normalizer"]["name"] == "whisper-en"


def test_eval_score_bleu_with_a_summary_file(tmp_path):
    path = _predictions(
        tmp_path / "p.jsonl",
        [{"text": "我爱北京", "reference": ["我爱北京", "我喜欢北京"]}],
    )
    out = tmp_path / "s" / "summary.json"
    result = invoke(["eval", "score", path, "--metric", "bleu", "--language", "zh", "-o", out])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == json.loads(result.stdout)
    assert "tok:zh" in json.loads(result.stdout)["signature"]


def test_eval_score_names_records_without_reference(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"text": "b", "reference": "b"}, {"text": "a"}, {"text": "c", "reference": None}]
    path.write_text("\n\n".join(json.dumps(r) for r in rows) + "\n")  # blank lines between
    result = invoke(["eval", "score", path, "--metric", "wer"])
    assert result.exit_code == 2
    assert f"{path}: line 3: no 'reference'" in result.stderr
    assert f"{path}: line 5: no 'reference'" in result.stderr
    assert "2 bad entries" in result.stderr
    assert result.stdout == ""


def test_eval_score_without_a_metric_for_unknown_tasks_asks_for_one(tmp_path):
    path = _predictions(tmp_path / "p.jsonl", [{"text": "a", "reference": "b", "task": "story"}])
    result = invoke(["eval", "score", path])
    assert result.exit_code == 2 and "--metric" in result.stderr


def test_eval_tasks_lists_the_presets_with_templates_that_exist():
    from salmonn.jobs.templates import get_template

    result = invoke(["eval", "tasks", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    names = {r["preset"]: r for r in rows}
    assert names["librispeech-clean"]["paper"] == {"wer": 0.021}
    assert names["covost2-en-zh"]["metric"] == "bleu"
    for row in rows:
        if row["template"].startswith("eval."):
            assert get_template(row["template"]).name == row["template"]
    text = invoke(["eval", "tasks"])
    assert "librispeech-other" in text.stdout and "0.049" in text.stdout


def test_task_server_and_ray_shaped_records_score_the_same(tmp_path):
    from salmonn import Record, Segment

    reference = "the quick brown fox"
    record = Record("a.wav", "transcribe", "p", "the quick brown box", [Segment(0, 1, "x")])
    task_command = {**record.to_dict(), "reference": reference}  # -o FILE and --ray records
    server_json = {"text": "the quick brown box", "reference": reference}  # response_format json
    server_verbose = {  # response_format verbose_json
        "task": "transcribe",
        "language": "en",
        "duration": 1.0,
        "text": "the quick brown box",
        "segments": [{"id": 0, "start": 0.0, "end": 1.0, "text": "the quick brown box"}],
        "reference": reference,
    }
    scores = []
    for i, row in enumerate((task_command, server_json, server_verbose)):
        path = _predictions(tmp_path / f"{i}.jsonl", [row])
        result = invoke(["eval", "score", path, "--metric", "wer"])
        assert result.exit_code == 0, result.output
        scores.append(json.loads(result.stdout)["score"])
    assert scores == pytest.approx([0.25, 0.25, 0.25])
