"""``salmonn serve`` under hostile clients: stalled and oversized bodies, prompts too long for the
context, odd values, clients that leave, a shutdown past its grace, random paths, a browser as the
attacker. One test per behaviour.

The server runs in this process (uvicorn in a thread on 127.0.0.1 over the tiny model, built by
``salmonn.serve.build_server`` as ``salmonn serve`` builds it), so a test can slow the model down
or look at the server's state; requests are raw HTTP (sockets, ``http.client``) where the test is
about the bytes on the wire.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from test_serve import b64, tone

from salmonn.config import GenerationOptions

KEY = "hostile-key"
ORIGIN = "http://app.example"


class Live:
    """A server running in a thread; ``request`` talks raw HTTP/1.1 to it."""

    def __init__(self, app, server, thread) -> None:
        self.app, self.server, self.thread = app, server, thread
        self.port = server.servers[0].sockets[0].getsockname()[1]
        self.state = app.state.salmonn

    def request(self, method, path, body=None, headers=None, key=KEY, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        sent = {"Authorization": f"Bearer {key}"} if key else {}
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()

    def error(self, *args, **kwargs) -> tuple[int, dict]:
        status, _, body = self.request(*args, **kwargs)
        return status, json.loads(body)["error"] if status >= 400 else json.loads(body)

    def metrics(self) -> dict[str, float]:
        _, _, body = self.request("GET", "/metrics", key=None)
        values = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive()


def start(model, **overrides) -> Live:
    from salmonn.serve import ServeConfig, build_server, create_app

    settings = dict(
        port=0, api_key=KEY, max_queue=4, request_timeout=3.0, max_upload_mb=1.0,
        generation=GenerationOptions(num_beams=1, max_new_tokens=4),
        allowed_origins=(ORIGIN,),
    )  # fmt: skip
    settings.update(overrides)
    config = ServeConfig(**settings)
    app = create_app(config, lambda: model)
    server = build_server(app, config)
    thread = threading.Thread(target=server.run, name="hostile-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (server.started and app.state.salmonn.service is not None):
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    return Live(app, server, thread)


@pytest.fixture(scope="module")
def model(tiny_paths):
    import salmonn

    return salmonn.load_model(
        tiny_paths.whisper, tiny_paths.beats, tiny_paths.llm, tiny_paths.checkpoint, device="cpu"
    )


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    (root / "allowed").mkdir()
    tone(root / "allowed" / "clip.wav", 2.0)
    tone(root / "secret-place.wav", 2.0)
    os.symlink(root / "secret-place.wav", root / "allowed" / "link.wav")
    (root / "bad.wav").write_bytes(b"RIFF not audio" * 50)
    return root


@pytest.fixture(scope="module")
def live(model, media):
    srv = start(model, allowed_local_media_path=str(media / "allowed"))
    yield srv
    srv.stop()


def slow_decoding(monkeypatch, model, seconds: float) -> None:
    """Every decoding step of the model takes ``seconds`` longer."""
    original = model.new_decoder

    def new_decoder(options):
        decoder = original(options)
        step = decoder.step

        def slow_step():
            time.sleep(seconds)
            return step()

        decoder.step = slow_step
        return decoder

    monkeypatch.setattr(model, "new_decoder", new_decoder)


HI = {"model": "salmonn", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
LONG = {
    "model": "salmonn", "messages": [{"role": "user", "content": "Tell a long story."}],
    "temperature": 3.0, "seed": 1, "max_tokens": 1500,
}  # fmt: skip


def raw(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head)
    return sock


def read_all(sock: socket.socket) -> str:
    """What the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data.decode("latin-1")


def stalled_upload(port: int) -> socket.socket:
    """A multipart upload that declares 96 kB, sends 1,000 bytes and stalls."""
    return raw(
        port,
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {KEY}\r\n".encode()
        + b"Content-Type: multipart/form-data; boundary=BOUND\r\n"
        b"Content-Length: 96000\r\n\r\n--BOUND\r\n" + b"x" * 990,
    )


# ------------------------------------------------------------------------- 1. stalled uploads


def test_stalled_uploads_hold_no_slot_and_time_out(live):
    stalled = [stalled_upload(live.port) for _ in range(8)]  # twice --max-queue
    try:
        status, answer = live.error("POST", "/v1/chat/completions", HI)
        assert status == 200, answer  # the stalled bodies hold no queue slot
        for sock in stalled:  # each gets 408 after --request-timeout
            reply = read_all(sock)
            assert reply.startswith("HTTP/1.1 408"), reply[:200]
            assert "request_timeout" in reply
    finally:
        for sock in stalled:
            sock.close()
    assert live.error("GET", "/ready", key=None)[0] == 200


def test_health_and_ready_tell_a_saturated_server(live):
    tickets = [live.state.admit() for _ in range(4)]
    try:
        status, body = live.error("GET", "/health", key=None)
        assert status == 200 and body["status"] == "saturated" and body["in_flight"] == 4
        assert live.request("GET", "/ready", key=None)[0] == 503
        status, headers, body = live.request("POST", "/v1/chat/completions", HI)
        assert status == 503 and json.loads(body)["error"]["code"] == "queue_full"
        assert int(headers["retry-after"]) >= 1
    finally:
        for ticket in tickets:
            ticket.release()
            ticket.release()  # idempotent: frees one slot once
    assert live.state.admissions.count == 0
    assert live.error("GET", "/health", key=None)[1]["status"] == "ok"


# -------------------------------------------------------------------- 2. chunked bodies


def _send_chunked(
    port: int, path: str, content_type: str, start: bytes, total: int
) -> tuple[int, str]:
    """Send ``start`` then up to ``total`` bytes as a chunked body; returns (bytes sent, the
    reply's head)."""
    sock = raw(
        port,
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + f"{len(start):x}\r\n".encode()
        + start
        + b"\r\n",
    )
    piece = b"a" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    try:
        while sent < total:
            sock.sendall(chunk)
            sent += len(piece)
    except OSError:  # the server answered and closed
        pass
    try:
        reply = sock.recv(4096).decode("latin-1")
    except OSError:
        reply = ""
    sock.close()
    return sent, reply


@pytest.mark.parametrize(
    "path,content_type,start",
    [
        ("/v1/chat/completions", "application/json", b'{"messages": "'),
        (
            "/v1/audio/transcriptions",
            "multipart/form-data; boundary=BOUND",
            b'--BOUND\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n",
        ),
    ],
)
def test_chunked_bodies_are_stopped_at_the_limit(live, path, content_type, start):
    total = 200_000_000
    sent, reply = _send_chunked(live.port, path, content_type, start, total)
    assert sent < total // 4, sent  # stopped early, not read to the end
    assert reply == "" or reply.startswith("HTTP/1.1 413"), reply[:200]
    assert live.error("POST", "/v1/chat/completions", HI)[0] == 200


# ------------------------------------------------------------------------- 3. prompt length


def test_a_prompt_longer_than_the_context_is_refused(live):
    words = " ".join(f"word{i}" for i in range(6000))
    body = {**HI, "messages": [{"role": "user", "content": words}]}
    status, error = live.error("POST", "/v1/chat/completions", body)
    assert status == 400 and error["code"] == "context_length_exceeded"
    assert error["param"] == "messages" and "2048" in error["message"]
    status, error = live.error("POST", "/v1/chat/completions", {**HI, "max_tokens": 2047})
    assert status == 400 and error["code"] == "context_length_exceeded"
    assert error["param"] == "max_tokens"


# ------------------------------------------------------------------------- 4. bad input


def _audio_part(media: Path, fmt) -> dict:
    data = b64(media / "allowed" / "clip.wav")
    return {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}


def _with_part(part) -> dict:
    return {**HI, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, part]}]}


BAD_NUMBERS = [
    ('"max_tokens": NaN', "max_tokens"),
    ('"top_k": Infinity, "temperature": 1', "top_k"),
    ('"seed": -Infinity, "temperature": 1', "seed"),
    ('"seed": 18446744073709551616, "temperature": 1', "seed"),
    ('"length_penalty": 1e308, "num_beams": 2', "length_penalty"),
    ('"temperature": 1e-300', "temperature"),
    ('"temperature": 1e-300, "stream": true', "temperature"),
]


@pytest.mark.parametrize("fields,param", BAD_NUMBERS, ids=[p for _, p in BAD_NUMBERS])
def test_odd_numbers_are_400_naming_the_field(live, fields, param):
    body = '{"messages": [{"role": "user", "content": "hi"}], ' + fields + "}"
    status, error = live.error(
        "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    assert status == 400 and error["param"] == param, error


def test_the_largest_seed_is_a_seed(live):
    body = {**HI, "seed": 2**64 - 1, "temperature": 1.0}
    assert live.error("POST", "/v1/chat/completions", body)[0] == 200


def test_odd_parts_are_400_naming_the_field(live, media):
    status, error = live.error(
        "POST", "/v1/chat/completions", _with_part(_audio_part(media, ["wav"]))
    )
    assert status == 400 and error["param"].endswith("input_audio.format")
    status, error = live.error(
        "POST", "/v1/chat/completions", _with_part({"type": "text", "text": None})
    )
    assert status == 400 and "must be a string" in error["message"] and "text" in error["param"]
    body = {**HI, "messages": [{"role": "user", "content": "\u0000\ud800"}]}
    raw_body = json.dumps(body)  # ASCII escapes: the lone surrogate arrives as \ud800
    status, error = live.error(
        "POST", "/v1/chat/completions", raw_body, {"Content-Type": "application/json"}
    )
    assert status == 400 and error["param"].startswith("messages"), error
    deep = "[" * 5000 + "]" * 5000
    status, error = live.error(
        "POST", "/v1/chat/completions", deep, {"Content-Type": "application/json"}
    )
    assert status == 400 and "JSON" in error["message"]
    url = {"type": "audio_url", "audio_url": {"url": f"file://{media}/allowed/clip.wav%00x"}}
    status, error = live.error("POST", "/v1/chat/completions", _with_part(url))
    assert status == 400 and error["param"].endswith("audio_url.url")


def test_transcription_temperature_is_checked(live, media):
    form, ctype = _form(media / "allowed" / "clip.wav", temperature="1e-300")
    status, error = live.error("POST", "/v1/audio/transcriptions", form, {"Content-Type": ctype})
    assert status == 400 and error["param"] == "temperature"


def _form(path: Path, **fields) -> tuple[bytes, str]:
    boundary = "XBOUNDARYX"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + path.read_bytes()
        + b"\r\n"
    )
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# ------------------------------------------------------------------------- 5. clients that leave


def test_a_client_that_leaves_mid_stream_cancels_its_work(live, model, monkeypatch):
    slow_decoding(monkeypatch, model, 0.02)  # 1,500 steps: half a minute if it ran to the end
    before = live.metrics()
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=60)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    conn.request("POST", "/v1/chat/completions", json.dumps({**LONG, "stream": True}), headers)
    response = conn.getresponse()
    assert response.status == 200
    seen = b""
    while seen.count(b"data:") < 4:  # the role chunk and a few deltas: it is decoding
        seen += response.read1(4096)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    deadline = time.monotonic() + 60
    while live.state.admissions.count:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    after = live.metrics()
    key = 'salmonn_requests_cancelled_total{reason="disconnected"}'
    assert after.get(key, 0) - before.get(key, 0) == 1
    # the dropped item was never answered: no tokens counted for it
    tokens = "salmonn_generated_tokens_total"
    assert after[tokens] == before[tokens]
    assert not live.state.service.batcher._streams.busy


# ------------------------------------------------------------------------- 6. shutdown


def test_requests_past_the_grace_get_503_shutting_down(model, monkeypatch):
    slow_decoding(monkeypatch, model, 0.05)
    srv = start(model, graceful_shutdown_s=1.0)
    results = {}

    def ask(name, body):
        results[name] = srv.request("POST", "/v1/chat/completions", body, timeout=120)

    threads = [
        threading.Thread(target=ask, args=("whole", LONG)),
        threading.Thread(target=ask, args=("stream", {**LONG, "stream": True})),
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while srv.state.admissions.count < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    srv.server.handle_exit(signal.SIGTERM, None)  # what SIGTERM does in the main thread
    for thread in threads:
        thread.join(120)
    srv.thread.join(60)
    assert not srv.thread.is_alive()
    status, headers, body = results["whole"]
    assert status == 503 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "shutting_down"
    status, _, body = results["stream"]
    events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "shutting_down"


# ------------------------------------------------------------------------- 7. metrics


def test_metrics_label_by_route(live):
    for i in range(40):
        assert live.request("GET", f"/v1/random-{i}", key=None)[0] == 401
        assert live.request("GET", f"/nowhere-{i}", key=None)[0] == 404
    text = live.request("GET", "/metrics", key=None)[2].decode()
    assert "random-" not in text and "nowhere-" not in text
    values = live.metrics()
    assert values['salmonn_requests_total{endpoint="other",status="401"}'] >= 40


# ------------------------------------------------------------------------- 8. the browser


def test_chat_needs_a_json_content_type(live):
    status, error = live.error(
        "POST", "/v1/chat/completions", json.dumps(HI), {"Content-Type": "text/plain"}
    )
    assert status == 415 and error["code"] == "unsupported_media_type"


def test_a_foreign_host_is_refused(live):
    status, error = live.error("POST", "/v1/chat/completions", HI, {"Host": "evil.example:80"})
    assert status == 403 and error["code"] == "host_not_allowed"
    assert live.error("GET", "/v1/models", headers={"Host": f"localhost:{live.port}"})[0] == 200


def test_origins_and_cors(live):
    status, headers, body = live.request(
        "POST", "/v1/chat/completions", HI, {"Origin": "http://evil.example"}
    )
    assert status == 403 and json.loads(body)["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in headers
    own = {"Origin": f"http://127.0.0.1:{live.port}"}  # the server's own page
    assert live.request("POST", "/v1/chat/completions", HI, own)[0] == 200
    status, headers, _ = live.request("POST", "/v1/chat/completions", HI, {"Origin": ORIGIN})
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    status, headers, _ = live.request(
        "OPTIONS", "/v1/chat/completions", headers=preflight, key=None
    )
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN


# ------------------------------------------------------------------------- 9. smaller ones


def test_405_names_the_allowed_methods(live):
    status, headers, _ = live.request("GET", "/v1/chat/completions")
    assert status == 405 and headers["allow"] == "POST"


def test_bearer_in_any_case(live):
    status, _, _ = live.request(
        "GET", "/v1/models", key=None, headers={"Authorization": f"bearer {KEY}"}
    )
    assert status == 200
    assert live.request("GET", "/v1/models", key=KEY + "x")[0] == 401


def test_errors_name_no_server_paths(live, media):
    link = {"type": "audio_url", "audio_url": {"url": f"file://{media}/allowed/link.wav"}}
    status, error = live.error("POST", "/v1/chat/completions", _with_part(link))
    assert status == 400 and "secret-place" not in error["message"]
    form, ctype = _form(media / "bad.wav")
    status, error = live.error("POST", "/v1/audio/transcriptions", form, {"Content-Type": ctype})
    assert status == 400 and error["code"] == "invalid_audio"
    assert "salmonn-serve-" not in error["message"] and "/tmp" not in error["message"]


def test_too_large_says_the_real_numbers(live, tmp_path):
    big = tmp_path / "big.wav"
    big.write_bytes(os.urandom(1_000_001))  # one byte over --max-upload-mb 1
    form, ctype = _form(big)
    status, error = live.error("POST", "/v1/audio/transcriptions", form, {"Content-Type": ctype})
    assert status == 413 and error["param"] == "file"
    assert "1,000,001" in error["message"] and "1,000,000" in error["message"]
    huge = json.dumps({**HI, "padding": "x" * 3_000_000})
    status, error = live.error(
        "POST", "/v1/chat/completions", huge, {"Content-Type": "application/json"}
    )
    assert status == 413 and "file" not in error["message"] and "body" in error["message"]


def test_a_client_leaving_during_its_upload_is_no_500(live, caplog):
    before = live.metrics()
    sock = raw(
        live.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {KEY}\r\n".encode()
        + b'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"messages": [',
    )
    time.sleep(0.3)
    sock.close()
    key = 'salmonn_requests_total{endpoint="/v1/chat/completions",status="499"}'
    deadline = time.monotonic() + 30
    while live.metrics().get(key, 0) == before.get(key, 0):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    after = live.metrics()
    error_key = 'salmonn_requests_total{endpoint="/v1/chat/completions",status="500"}'
    assert after.get(error_key, 0) == before.get(error_key, 0)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


# ------------------------------------------------------------------------- the request's ticket


def test_a_ticket_releases_its_slot_and_upload_once():
    from salmonn.serve.admission import Admissions
    from salmonn.serve.errors import APIError
    from salmonn.serve.media import save

    counts = []
    slots = Admissions(2, on_change=counts.append)
    first, second = slots.admit(), slots.admit()
    with pytest.raises(APIError) as full:
        slots.admit()
    assert full.value.code == "queue_full"
    upload = save(b"RIFF....", "wav")
    first.hold(upload)
    folder = Path(upload.path).parent
    assert folder.is_dir()
    first.release()
    first.release()  # a second release (another path of the request) changes nothing
    assert not folder.exists() and slots.count == 1 and counts == [1, 2, 1]
    late = save(b"RIFF....", "wav")
    first.hold(late)  # an upload handed to a released ticket is deleted at once
    assert not Path(late.path).parent.exists()
    second.cancel("disconnected")
    second.cancel("shutting_down")  # the first reason stays
    assert second.cancelled.is_set() and second.error().status == 499
    second.release()
    assert slots.count == 0 and slots.tickets() == []


def test_connections_are_kept_unless_a_body_is_left_unread(live):
    status, headers, _ = live.request("GET", "/v1/models")
    assert status == 200 and headers.get("connection") != "close"
    status, headers, _ = live.request("POST", "/v1/chat/completions", HI)
    assert status == 200 and headers.get("connection") != "close"
    sock = raw(  # declares a body over the chat limit: refused unread
        live.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {KEY}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 3000000\r\n\r\n{",
    )
    reply = read_all(sock).lower()
    sock.close()
    assert reply.startswith("http/1.1 413") and "connection: close" in reply


def test_a_signal_before_uvicorn_takes_over_stops_the_server():
    """Between ``run_server`` entering and uvicorn installing its own handlers (event loop and app
    set-up), a Ctrl-C must ask the server to stop, not vanish (the server then ran on for good)."""
    import signal

    from salmonn.serve import ServeConfig, build_server, create_app, signals_stop

    config = ServeConfig(port=0)
    app = create_app(config, lambda: None)
    server = build_server(app, config)
    before = signal.getsignal(signal.SIGINT)
    with signals_stop(server):
        assert not server.should_exit
        signal.raise_signal(signal.SIGINT)  # handled here, in the main thread
        assert server.should_exit
        assert app.state.salmonn.closing  # new requests get 503 from now on
        signal.raise_signal(signal.SIGINT)  # uvicorn's re-raise after its shutdown: ends nothing
    assert signal.getsignal(signal.SIGINT) is before
