"""``salmonn serve`` against its own OpenAPI document: Schemathesis fuzzes every operation of a real
server on 127.0.0.1 (a bounded number of examples, a fixed seed) with the tiny model behind it.

Zero 5xx answers and zero answers that the document does not describe (status code, content type,
body schema); the document must declare the request bodies, or the fuzzer could not send any.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_serve_hostile import KEY, model, start  # noqa: F401 - the module's model fixture

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture(scope="module")
def live(model):  # noqa: F811
    srv = start(model)
    yield srv
    srv.stop()


def test_the_document_declares_bodies_and_answers(live):
    status, _, body = live.request("GET", "/openapi.json", key=None)
    assert status == 200
    paths = json.loads(body)["paths"]
    chat = paths["/v1/chat/completions"]["post"]
    assert "application/json" in chat["requestBody"]["content"]
    assert {"400", "401", "404", "413", "503"} <= set(chat["responses"])
    audio = paths["/v1/audio/transcriptions"]["post"]
    assert "multipart/form-data" in audio["requestBody"]["content"]
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


def test_schemathesis_finds_no_5xx_and_no_schema_violation(live, tmp_path):
    # the venv's own first (the suite may run as .venv/bin/python without the venv on PATH)
    executable = (
        shutil.which("schemathesis", path=str(Path(sys.executable).parent))
        or shutil.which("schemathesis")
        or pytest.skip("schemathesis is not installed")
    )
    before = live.metrics()
    run = subprocess.run(
        [
            executable, "run", f"http://127.0.0.1:{live.port}/openapi.json",
            "--max-examples", "15", "--seed", "7", "--checks", CHECKS,
            "--header", f"Authorization: Bearer {KEY}", "--request-timeout", "60",
            "--report", "junit", "--report-dir", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    after = live.metrics()
    tested = sum(
        v - before.get(k, 0) for k, v in after.items() if k.startswith("salmonn_requests_total")
    )
    assert tested >= 100  # it did reach the server
    errors = {
        k: v
        for k, v in after.items()
        if k.startswith("salmonn_requests_total") and 'status="5' in k
    }
    assert all(v == before.get(k, 0) or 'status="503"' in k for k, v in errors.items()), errors
