"""The optional judge, against a small OpenAI-compatible stub served on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import invoke

from salmonn.eval.judge import JudgeSettings, judge_records, parse_rating


class _Judge(BaseHTTPRequestHandler):
    """Replies with the rating written after "Candidate answer: " (``"bad"``: no rating; ``"500"``:
    an HTTP error), and keeps every request body."""

    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
        )
        answer = body["messages"][-1]["content"].rsplit("Candidate answer: ", 1)[1]
        if answer == "500":
            self.send_error(500)
            return
        reply = (
            "I cannot rate this."
            if answer == "bad"
            else f"Close to the reference.\nRating: {answer}"
        )
        data = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": reply}}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def judge_url():
    _Judge.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_ratings_are_averaged_over_all_records_with_failures_as_zero(judge_url, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "secret")
    records = [
        {"text": "8", "reference": "a dog", "question": "What barks?"},
        {"text": "6", "reference": ["x", "y"]},
        {"text": "bad", "reference": "z"},  # no rating in the reply: unparsed, 0
        {"text": "500", "reference": "z"},  # the judge fails: counted, 0
        {"text": None, "reference": "z", "error": "decode failed"},  # not sent: 0
    ]
    settings = JudgeSettings(judge_url, "judge-1", api_key_env="JUDGE_TEST_KEY", timeout=10)
    summary, outcomes = judge_records(records, settings)
    assert summary["score"] == pytest.approx((8 + 6) / 5)
    assert (summary["n_unparsed"], summary["n_judge_errors"], summary["n_failed"]) == (1, 1, 1)
    assert [o["rating"] for o in outcomes] == [8, 6, None, 0, 0]
    assert summary["judge"] == {"url": judge_url, "model": "judge-1", "prompt_version": 1}
    sent = _Judge.requests
    assert len(sent) == 4 and all(r["path"] == "/v1/chat/completions" for r in sent)
    assert sent[0]["body"]["model"] == "judge-1" and sent[0]["auth"] == "Bearer secret"
    assert "Question: What barks?" in sent[0]["body"]["messages"][-1]["content"]
    assert "Reference answer: x / y" in sent[1]["body"]["messages"][-1]["content"]


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("Rating: 7", 7),
        ("rating=10", 10),
        ("**Rating:** 3\n", 3),
        ("Score 9", None),
        ("Rating: 11", None),
    ],
)
def test_parse_rating(reply, rating):
    assert parse_rating(reply) == rating


def test_eval_score_adds_the_judge_to_the_summary(judge_url, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"text": "9", "reference": "the answer", "task": "transcribe"}) + "\n"
    )
    result = invoke(["eval", "score", path, "--judge-url", judge_url, "--judge-model", "j"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["metric"] == "wer"
    assert summary["judge"]["score"] == pytest.approx(9.0)
    assert summary["judge"]["judge"]["model"] == "j"


@pytest.mark.usefixtures("clean_salmonn_env")
def test_eval_run_with_the_judge_as_the_metric(judge_url, model_flags, tmp_path):
    from helpers import tone

    tone(tmp_path / "q.wav", 1.0)
    manifest = tmp_path / "qa.jsonl"
    manifest.write_text(json.dumps({"audio": "q.wav", "reference": "Paris"}) + "\n")
    fast = ["--device", "cpu", "--max-new-tokens", "2", "--num-beams", "1", "-q"]
    args = ["eval", "run", manifest, "-o", tmp_path / "out", "--preset", "wikiqa", *fast]
    refused = invoke([*args, *model_flags])
    assert refused.exit_code == 2 and "--judge-url" in refused.stderr
    result = invoke([*args, *model_flags, "--judge-url", judge_url, "--judge-model", "j"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metric"] == "judge" and summary["n"] == 1
    assert summary["paper"] == [{"score": "judge", "paper": None, "measured": summary["score"]}]
    sent = _Judge.requests[0]["body"]["messages"][-1]["content"]
    assert "Reference answer: Paris" in sent
    prediction = json.loads((tmp_path / "out" / "predictions.jsonl").read_text())
    assert prediction["prompt"].endswith("Please answer the question in detail.")
    assert "rating" in prediction["outcome"]
