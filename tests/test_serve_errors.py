"""The 500 path of ``salmonn serve``: a real bug answers 500 in OpenAI's shape, never with the
exception in the body; the server's log has it, and the server goes on serving.

The server runs in this process (uvicorn in a thread on 127.0.0.1, the app of
``salmonn.serve.create_app`` over the tiny model), so a test can break the model or the request
handling with ``monkeypatch``; the official openai SDK drives it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request

import openai
import pytest
from test_serve import audio_message, status_error, tone

from salmonn.config import GenerationOptions

SECRET = "secret-detail-4711"  # in the exception's text: must reach the log, never the client


@pytest.fixture(scope="module")
def model(tiny_paths):
    import salmonn

    return salmonn.load_model(
        tiny_paths.whisper, tiny_paths.beats, tiny_paths.llm, tiny_paths.checkpoint, device="cpu"
    )


@pytest.fixture(scope="module")
def base_url(model):
    import uvicorn

    from salmonn.serve import ServeConfig, create_app

    config = ServeConfig(port=0, generation=GenerationOptions(num_beams=1, max_new_tokens=4))
    app = create_app(config, lambda: model)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (server.started and app.state.salmonn.service is not None):
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(60)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tone(tmp_path_factory.mktemp("serve-errors") / "clip.wav", 2.0)


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=60)


def chat(base_url: str, clip, **kwargs):
    return client(base_url).chat.completions.create(
        model="salmonn", messages=audio_message(clip), **kwargs
    )


def raw_stream(base_url: str, clip) -> list[str]:
    """The ``data:`` payloads of a streamed chat request, read off the wire."""
    body = json.dumps(
        {"model": "salmonn", "messages": audio_message(clip), "stream": True}
    ).encode()
    request = urllib.request.Request(
        base_url + "/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        text = response.read().decode()
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def errors_500(base_url: str) -> float:
    with urllib.request.urlopen(base_url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    key = 'salmonn_requests_total{endpoint="/v1/chat/completions",status="500"}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(key))


def break_encoder(monkeypatch, model, exc: type[Exception]) -> None:
    """The model's Whisper encoder raises ``exc`` (a bug deep in the model)."""

    def broken(*args, **kwargs):
        raise exc(f"the encoder broke: {SECRET}")

    monkeypatch.setattr(model.speech_encoder, "forward", broken)


def assert_logged(caplog, exc: type[Exception]) -> None:
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is exc]
    assert logged and logged[0].levelno == logging.ERROR
    assert SECRET in str(logged[0].exc_info[1])


def assert_hidden(error: openai.APIStatusError) -> None:
    assert error.status_code == 500
    assert error.body["code"] == "internal_error" and error.body["type"] == "server_error"
    for leak in ("Traceback", SECRET, "ZeroDivisionError", "RuntimeError", ".py"):
        assert leak not in error.response.text


@pytest.mark.parametrize("exc", [ZeroDivisionError, RuntimeError])
def test_a_model_bug_answers_500_and_the_server_goes_on(
    base_url, model, clip, monkeypatch, caplog, exc
):
    good = chat(base_url, clip).choices[0].message.content
    break_encoder(monkeypatch, model, exc)
    with caplog.at_level(logging.ERROR):
        error = status_error(lambda: chat(base_url, clip))
    assert_hidden(error)
    assert_logged(caplog, exc)
    monkeypatch.undo()
    assert chat(base_url, clip).choices[0].message.content == good  # the same server, unharmed


def test_a_bug_outside_the_model_answers_500(base_url, clip, monkeypatch, caplog):
    from salmonn.serve import routes_chat as app

    good = chat(base_url, clip).choices[0].message.content

    def broken(*args, **kwargs):
        raise RuntimeError(f"building the response broke: {SECRET}")

    monkeypatch.setattr(app, "chat_completion", broken)
    before = errors_500(base_url)
    with caplog.at_level(logging.ERROR):
        error = status_error(lambda: chat(base_url, clip))
    assert_hidden(error)
    assert_logged(caplog, RuntimeError)
    assert errors_500(base_url) == before + 1  # counted in /metrics
    monkeypatch.undo()
    assert chat(base_url, clip).choices[0].message.content == good


@pytest.mark.parametrize("where", ["model", "service"])
def test_a_bug_in_a_streamed_request_sends_an_error_event(
    base_url, model, clip, monkeypatch, caplog, where
):
    """The stream has begun (status 200): the bug becomes an error event, then ``[DONE]``."""
    from salmonn.serve.service import Service

    good = chat(base_url, clip).choices[0].message.content
    if where == "model":
        break_encoder(monkeypatch, model, ZeroDivisionError)
    else:

        def broken(*args, **kwargs):
            raise ZeroDivisionError(f"finish reason broke: {SECRET}")

        monkeypatch.setattr(Service, "_finish_reason", broken)
    with caplog.at_level(logging.ERROR):
        events = raw_stream(base_url, clip)
        with pytest.raises(openai.APIError) as info:  # the SDK turns the event into an error
            for _ in chat(base_url, clip, stream=True):
                pass
    assert events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    for event in events[1:-2]:  # tokens streamed before the bug (never a finish reason)
        (choice,) = json.loads(event)["choices"]
        assert set(choice["delta"]) == {"content"} and choice["finish_reason"] is None
    if where == "model":
        assert len(events) == 3  # no token was decoded
    error = json.loads(events[-2])
    assert set(error) == {"error"} and error["error"]["code"] == "internal_error"
    assert set(error["error"]) == {"message", "type", "param", "code"}
    for leak in ("Traceback", SECRET, "ZeroDivisionError"):
        assert leak not in events[-2]
    assert info.value.body["code"] == "internal_error"
    assert_logged(caplog, ZeroDivisionError)
    monkeypatch.undo()
    parts = [
        choice.delta.content or ""
        for chunk in chat(base_url, clip, stream=True)
        for choice in chunk.choices
    ]
    assert "".join(parts) == good
