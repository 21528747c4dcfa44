"""``salmonn serve``: the real server in a subprocess on 127.0.0.1, driven by the official openai SDK.

One server runs for the whole module (tiny model). Answers are compared with the CLI's for the same
files and settings (Click's CliRunner in this process).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile as sf
from click.testing import CliRunner

from salmonn_cli.main import cli

SR = 16_000
KEY = "test-key"
MAX_NEW = 8
DECODING = ["--max-new-tokens", str(MAX_NEW), "--num-beams", "1"]  # the server's and the CLI's
INSTRUCTION = "Describe the audio in one sentence."
SERVER_FLAGS = [
    *DECODING, "--max-batch-size", "8", "--batch-wait-ms", "300",
    "--max-queue", "16", "--max-upload-mb", "5", "--max-audio-seconds", "60",
    "--request-timeout", "30", "--graceful-shutdown-seconds", "20",
    "--allowed-origins", "http://app.example", "--allowed-hosts", "127.0.0.1,salmonn.internal",
]  # fmt: skip


def tone(path: Path, seconds: float, freq: float = 440.0, rate: int = SR) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.3 * t))
    sf.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """short.wav (3 s), long.wav (40 s: two chunks), many/NN.wav (16 tones), over.wav (70 s, 8 kHz)."""
    root = tmp_path_factory.mktemp("serve-audio")
    (root / "many").mkdir()
    files = {
        "root": root,
        "short": tone(root / "short.wav", 3.0),
        "long": tone(root / "long.wav", 40.0, 220.0),
        "over": tone(root / "over.wav", 70.0, 300.0, rate=8000),
        "many": [
            tone(root / "many" / f"{i:02d}.wav", 2.0 + i % 3, 200.0 + 40 * i) for i in range(16)
        ],
    }
    bad = root / "bad.wav"
    bad.write_bytes(b"RIFF this is not audio at all" * 20)
    files["bad"] = bad
    return files


class Server:
    def __init__(self, process: subprocess.Popen, port: int, log: Path, tmpdir: Path) -> None:
        self.process, self.port, self.log, self.tmpdir = process, port, log, tmpdir
        self.base = f"http://127.0.0.1:{port}"

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0, timeout=120)

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def metrics(self) -> dict[str, float]:
        status, _, body = self.get("/metrics")
        assert status == 200
        values: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values


@pytest.fixture(scope="module")
def server(tiny_paths, audio, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    tmpdir = root / "tmp"
    tmpdir.mkdir()
    log = root / "server.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALMONN_")}
    env.update(HF_HUB_OFFLINE="1", TMPDIR=str(tmpdir), XDG_CONFIG_HOME=str(root / "xdg"))
    args = [
        sys.executable, "-c", "from salmonn_cli.main import cli; cli()", "serve",
        "--whisper", tiny_paths.whisper, "--beats", tiny_paths.beats, "--llm", tiny_paths.llm,
        "--checkpoint", tiny_paths.checkpoint, "--device", "cpu", "--port", str(port),
        "--api-key", KEY, "--allowed-local-media-path", str(audio["root"] / "many"), *SERVER_FLAGS,
    ]  # fmt: skip
    with open(log, "w") as handle:
        process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env)
    srv = Server(process, port, log, tmpdir)
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, f"server exited early:\n{log.read_text()}"
        try:
            if srv.get("/health")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, f"server not ready:\n{log.read_text()}"
        time.sleep(0.2)
    yield srv
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def run_cli(*args):
    """``salmonn COMMAND ...`` in this process; the command name may follow the shared flags."""
    words = [str(a) for a in args]
    command = next(w for w in words if w in ("prompt", "transcribe", "translate"))
    words.remove(command)
    return CliRunner().invoke(cli, [command, *words], catch_exceptions=False)


def cli_records(model_flags, *args) -> list[dict]:
    result = run_cli(*DECODING, *args, *model_flags, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def cli_output(model_flags, *args) -> str:
    result = run_cli(*DECODING, *args, *model_flags, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    return result.stdout


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def audio_message(path: Path, text: str = INSTRUCTION, part: dict | None = None) -> list[dict]:
    part = part or {"type": "input_audio", "input_audio": {"data": b64(path), "format": "wav"}}
    return [{"role": "user", "content": [{"type": "text", "text": text}, part]}]


def status_error(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    error = info.value
    body = error.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in error.response.text
    return error


# -------------------------------------------------------------------------------- basics and auth


def test_health_models_and_api_key(server):
    status, _, body = server.get("/health")  # open without a key
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = server.get("/metrics")  # open too, as vLLM's (counts, no request content)
    assert status == 200 and b"salmonn_requests_total" in body
    assert [m.id for m in server.client().models.list()] == ["salmonn"]
    for key in ("wrong", ""):
        error = status_error(lambda k=key: server.client(k or "x").models.list())
        assert error.status_code == 401 and error.body["code"] == "invalid_api_key"
    status, _, body = server.get("/v1/models")  # no Authorization header at all
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"


def test_host_and_origin_flags(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    for host, expected in (("salmonn.internal:80", 200), ("localhost", 403)):  # --allowed-hosts
        assert server.get("/v1/models", {**auth, "Host": host})[0] == expected
    status, headers, _ = server.get("/v1/models", {**auth, "Origin": "http://app.example"})
    assert status == 200 and headers["access-control-allow-origin"] == "http://app.example"
    assert server.get("/v1/models", {**auth, "Origin": "http://evil.example"})[0] == 403


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # find_spec then reports it missing
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 1
    assert "salmonn[serve]" in result.stderr and "uvicorn" in result.stderr


def test_help_stays_torch_free():
    code = (
        "import sys\nfrom salmonn_cli.main import cli\n"
        "try:\n    cli.main(['serve', '--help'], prog_name='salmonn')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'fastapi', 'uvicorn', 'transformers') if m in sys.modules]\n"
        "print('@@', heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert "--max-batch-size" in out.stdout and "--allowed-local-media-path" in out.stdout
    assert "@@ []" in out.stdout


# ----------------------------------------------------------------------------- answers = the CLI's


@pytest.mark.parametrize("which, chunks, beams", [("short", 1, 4), ("long", 2, 1)])
def test_chat_equals_cli_prompt(server, audio, model_flags, which, chunks, beams):
    path = audio[which]
    flags = ["--num-beams", beams] if beams != 1 else []
    (expected,) = cli_records(model_flags, "prompt", "--text", INSTRUCTION, path, *flags)
    answer = server.client().chat.completions.create(
        model="salmonn",
        messages=audio_message(path),
        max_tokens=MAX_NEW,
        extra_body={"num_beams": beams} if beams != 1 else None,
    )
    assert answer.choices[0].message.content == expected["text"]
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens > 88 * chunks  # 88 speech positions per chunk, plus text
    assert answer.usage.completion_tokens >= 1
    if chunks > 1:  # the whole-recording pass over timestamped chunk answers, as the CLI does
        assert len(expected["segments"]) == 2
        assert answer.usage.prompt_tokens > 88 * 2 + 20


def test_seeded_sampling_equals_cli(server, audio, model_flags):
    """temperature > 0 with a seed: each chunk draws from its own seeded generator, so the server
    (which batches the chunks of concurrent requests together) answers as the CLI does one chunk
    at a time; two sampled requests of equal decoding may share a decode."""
    sampled = ["--do-sample", "--temperature", "1.5", "--seed", "3", "--batch-size", "1"]
    expected = [
        cli_records(model_flags, "prompt", "--text", INSTRUCTION, audio[which], *sampled)[0]["text"]
        for which in ("long", "short")
    ]
    client = server.client()
    start = threading.Barrier(2)

    def ask(which):
        start.wait()
        answer = client.chat.completions.create(
            model="salmonn", messages=audio_message(audio[which]), temperature=1.5, seed=3
        )
        return answer.choices[0].message.content

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(ask, ("long", "short"))) == expected


def test_audio_url_data_and_local_file(server, audio):
    client = server.client()
    path = audio["many"][0]
    base = client.chat.completions.create(model="salmonn", messages=audio_message(path))
    data_url = {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64(path)}"}}
    by_data = client.chat.completions.create(
        model="salmonn", messages=audio_message(path, part=data_url)
    )
    local = {"type": "audio_url", "audio_url": {"url": path.as_uri()}}
    by_file = client.chat.completions.create(
        model="salmonn", messages=audio_message(path, part=local)
    )
    texts = {base.choices[0].message.content, by_data.choices[0].message.content}
    assert texts == {by_file.choices[0].message.content}
    outside = {"type": "audio_url", "audio_url": {"url": audio["short"].as_uri()}}
    error = status_error(
        lambda: client.chat.completions.create(
            model="salmonn", messages=audio_message(path, part=outside)
        )
    )
    assert error.status_code == 400 and "outside the allowed folder" in error.body["message"]
    remote = {"type": "audio_url", "audio_url": {"url": "https://example.com/a.wav"}}
    error = status_error(
        lambda: client.chat.completions.create(
            model="salmonn", messages=audio_message(path, part=remote)
        )
    )
    assert error.status_code == 400 and "does not fetch remote URLs" in error.body["message"]


@pytest.mark.parametrize("extra", [{}, {"num_beams": 4}])
def test_streaming_equals_non_streaming(server, audio, extra):
    client = server.client()
    kwargs = {"model": "salmonn", "messages": audio_message(audio["short"]), "max_tokens": 10}
    whole = client.chat.completions.create(**kwargs, extra_body=extra)
    parts, finish, usage = [], None, None
    stream = client.chat.completions.create(
        **kwargs, extra_body=extra, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(parts) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.total_tokens == whole.usage.total_tokens


def stream_parts(client, **kwargs) -> tuple[list[str], str | None]:
    """The content deltas of a streamed chat request (empty ones dropped) and its finish reason."""
    parts, finish = [], None
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            if choice.delta.content:
                parts.append(choice.delta.content)
            finish = choice.finish_reason or finish
    return parts, finish


def expected_deltas(tiny_paths, ids: list[int], strip: bool) -> int:
    """The content deltas of a stream of ``ids``: one per step where the text that no later token
    can change grows, plus the remainder at the end if any."""
    from salmonn.model.llm import PromptTokenizer

    tokenizer = PromptTokenizer(tiny_paths.llm)
    grown, sent = 0, ""
    for n in range(1, len(ids) + 1):
        text = tokenizer.decode_stable(ids[:n]).rstrip("\ufffd")
        text = text.strip() if strip else text
        grown, sent = grown + (text != sent), text
    final = tokenizer.decode(ids)
    return grown + ((final.strip() if strip else final) != sent)


STREAMED = {  # request extras -> (options of the same decoding in the library)
    "greedy": ({"extra_body": {"num_beams": 1}}, {"num_beams": 1}),
    "sampled": (
        {"temperature": 0.9, "seed": 11, "extra_body": {"num_beams": 1}},
        {"num_beams": 1, "do_sample": True, "temperature": 0.9, "seed": 11},
    ),
}


STREAM_INSTRUCTION, STREAM_TEXT = "Describe the audio.", "Tell me a joke."  # 16 tokens greedy


@pytest.fixture(scope="module")
def library(tiny_paths):
    """The tiny model in this process (the library's answers to compare with)."""
    import salmonn

    return salmonn.load_model(
        tiny_paths.whisper, tiny_paths.beats, tiny_paths.llm, tiny_paths.checkpoint, device="cpu"
    )


@pytest.mark.parametrize("decoding", sorted(STREAMED))
@pytest.mark.parametrize("audio_or_text", ["audio", "text"])
def test_stream_sends_tokens_as_they_are_decoded(
    server, audio, tiny_paths, library, decoding, audio_or_text
):
    """Greedy and sampling stream token by token; the deltas add up to the non-streamed answer."""
    import salmonn

    request, options = STREAMED[decoding]
    if audio_or_text == "audio":
        messages = audio_message(audio["short"], STREAM_INSTRUCTION)
    else:
        messages = [{"role": "user", "content": STREAM_TEXT}]
    client = server.client()
    kwargs = {"model": "salmonn", "messages": messages, "max_tokens": 16, **request}
    whole = client.chat.completions.create(**kwargs)
    parts, finish = stream_parts(client, **kwargs)
    content = whole.choices[0].message.content
    assert "".join(parts) == content and finish == whole.choices[0].finish_reason
    assert len(parts) > 1, parts
    # the library's ids for the same request say how often the stable text grows
    generation = salmonn.GenerationOptions(max_new_tokens=16, **options)
    if audio_or_text == "audio":
        wave, _ = sf.read(audio["short"], dtype="float32")
        result = library.generate([wave], STREAM_INSTRUCTION, generation)[0]
        assert result.text.strip() == content
    else:
        result = library.generate_text(STREAM_TEXT, generation)[0]
        assert result.text == content
    deltas = expected_deltas(tiny_paths, result.token_ids, strip=audio_or_text == "audio")
    assert deltas >= 5 and len(result.token_ids) == 16  # the check below means something
    assert len(parts) == deltas, (
        parts
    )  # a delta for every token that adds text, whatever the timing


def test_concurrent_streams_each_equal_their_answer(server, audio):
    """Streams batched together (one decode for the greedy ones) each add up to their own
    non-streamed answer; beam search and long audio come as one delta at the end."""
    files = audio["many"]
    cases = [  # (request, token by token)
        ({"messages": audio_message(files[1], STREAM_INSTRUCTION)}, True),
        ({"messages": audio_message(files[2], STREAM_INSTRUCTION)}, True),
        ({"messages": [{"role": "user", "content": STREAM_TEXT}]}, True),
        ({"messages": audio_message(files[3], STREAM_INSTRUCTION), **STREAMED["sampled"][0]}, True),
        ({"messages": audio_message(files[1], STREAM_INSTRUCTION), "extra_body": {"num_beams": 3}},
         False),
        ({"messages": audio_message(audio["long"], STREAM_INSTRUCTION)}, False),  # two chunks
    ]  # fmt: skip
    client = server.client()
    expected = []
    for request, _ in cases:
        answer = client.chat.completions.create(model="salmonn", max_tokens=16, **request)
        expected.append((answer.choices[0].message.content, answer.choices[0].finish_reason))
    start = threading.Barrier(len(cases))

    def ask(i):
        start.wait()
        return stream_parts(client, model="salmonn", max_tokens=16, **cases[i][0])

    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(ask, range(len(cases))))
    assert [("".join(parts), finish) for parts, finish in got] == expected
    for (parts, _), (_, by_token), (content, _) in zip(got, cases, expected, strict=True):
        if by_token:
            assert len(parts) >= 3, parts
        else:
            assert parts == ([content] if content else []), parts


def test_stream_arrives_while_decoding_and_survives_a_client_leaving(server, audio):
    """The first delta comes while the request is still decoding; a client that leaves mid-stream
    harms neither the worker nor the requests decoding beside it."""
    client = server.client()
    for seed in range(10):  # a long answer (hot sampling rarely picks EOS): time to look
        long_answer = {
            "model": "salmonn", "messages": [{"role": "user", "content": STREAM_TEXT}],
            "temperature": 3.0, "seed": seed, "max_tokens": 160,
        }  # fmt: skip
        whole = client.chat.completions.create(**long_answer)
        if whole.usage.completion_tokens >= 100:
            break
    assert whole.usage.completion_tokens >= 100
    other = {"model": "salmonn", "messages": audio_message(audio["short"], STREAM_INSTRUCTION)}
    expected = client.chat.completions.create(**other, max_tokens=16).choices[0].message.content
    stream = client.chat.completions.create(**long_answer, stream=True)
    first = ""
    for chunk in stream:
        first = "".join(c.delta.content or "" for c in chunk.choices)
        if first:
            break
    assert whole.choices[0].message.content.startswith(first)
    assert server.metrics()["salmonn_queue_depth"] >= 1  # still in flight: it is decoding
    stream.close()  # the client leaves mid-answer
    parts, _ = stream_parts(client, **other, max_tokens=16)  # decodes beside the abandoned one
    assert "".join(parts) == expected and len(parts) >= 3
    deadline = time.monotonic() + 60
    while server.metrics()["salmonn_queue_depth"] > 0:  # the abandoned answer is cancelled
        assert time.monotonic() < deadline
        time.sleep(0.05)
    again = client.chat.completions.create(**long_answer)
    assert again.choices[0].message.content == whole.choices[0].message.content
    assert "Traceback" not in server.log.read_text()


def test_text_only_and_other_turns(server, tiny_paths):
    import salmonn

    model = salmonn.load_model(
        tiny_paths.whisper, tiny_paths.beats, tiny_paths.llm, tiny_paths.checkpoint, device="cpu"
    )
    expected = model.generate_text(
        ["Tell me a joke."], salmonn.GenerationOptions(max_new_tokens=8, num_beams=1)
    )
    client = server.client()
    plain = client.chat.completions.create(
        model="salmonn", messages=[{"role": "user", "content": "Tell me a joke."}], max_tokens=8
    )
    assert plain.choices[0].message.content == expected[0].text
    # SALMONN v1 is single-turn: system and earlier turns are not shown to the model
    turns = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Ahoy"},
        {"role": "user", "content": "Tell me a joke."},
    ]
    multi = client.chat.completions.create(model="salmonn", messages=turns, max_tokens=8)
    assert multi.choices[0].message.content == expected[0].text
    error = status_error(
        lambda: client.chat.completions.create(model="salmonn", messages=turns[:3], max_tokens=8)
    )
    assert error.status_code == 400 and error.body["param"] == "messages"


def test_finish_reason_length_and_stop(server, audio):
    client = server.client()
    seen = set()
    for path in audio["many"][:4]:
        answer = client.chat.completions.create(
            model="salmonn", messages=audio_message(path), max_tokens=3
        )
        reason = answer.choices[0].finish_reason
        seen.add(reason)
        if reason == "length":
            assert answer.usage.completion_tokens == 3
        else:
            assert reason == "stop" and answer.usage.completion_tokens <= 3
    assert "length" in seen


def test_transcriptions_every_format(server, audio, model_flags):
    path = audio["long"]
    (record,) = cli_records(model_flags, "transcribe", path)
    client = server.client()

    def create(fmt):
        with open(path, "rb") as handle:
            return client.audio.transcriptions.create(
                model="salmonn", file=handle, response_format=fmt
            )

    assert create("json").text == record["text"]
    for hint in ("", "Vocabulary: SALMONN, Vicuna."):  # prompt: accepted and ignored
        with open(path, "rb") as handle:
            got = client.audio.transcriptions.create(model="salmonn", file=handle, prompt=hint)
        assert got.text == record["text"]
    assert create("text") == cli_output(model_flags, "transcribe", path, "-f", "text")
    for fmt in ("srt", "vtt"):
        body = create(fmt)
        assert body == cli_output(model_flags, "transcribe", path, "-f", fmt)
        assert body.count(" --> ") == 2
    verbose = create("verbose_json")
    assert verbose.text == record["text"] and verbose.duration == record["duration"] == 40.0
    assert verbose.language == "en"
    got = [(s.id, s.start, s.end, s.text) for s in verbose.segments]
    want = [(i, s["start"], s["end"], s["text"]) for i, s in enumerate(record["segments"])]
    assert got == want and len(got) == 2


def test_translations(server, audio, model_flags):
    """``language`` is the spoken (source) language: optional, any code the library names; it
    changes nothing in the prompt, so the text is ``salmonn translate --to LANG``'s."""
    client = server.client()
    path = audio["short"]

    def translate(**fields):
        with open(path, "rb") as handle, pytest.warns(DeprecationWarning):
            return client.audio.translations.create(model="salmonn", file=handle, **fields)

    for extra, target in (({}, "zh"), ({"to_language": "de"}, "de")):
        (record,) = cli_records(model_flags, "translate", "--to", target, path)
        assert translate(extra_body=extra).text == record["text"]
        for source in ("en", "de", "FR"):
            got = translate(
                extra_body={**extra, "language": source}, response_format="verbose_json"
            )
            assert got.text == record["text"] and got.language == source.lower()
    error = status_error(lambda: translate(extra_body={"language": "xx"}))
    assert error.status_code == 400 and error.body["param"] == "language"
    assert "xx" in error.body["message"]


# ---------------------------------------------------------------------------------------- errors


def test_error_codes(server, audio):
    client = server.client()

    def chat(messages, **kw):
        return lambda: client.chat.completions.create(
            model=kw.pop("model", "salmonn"), messages=messages, **kw
        )

    bad = {"type": "input_audio", "input_audio": {"data": b64(audio["bad"]), "format": "wav"}}
    error = status_error(chat(audio_message(audio["bad"], part=bad)))
    assert error.status_code == 400 and error.body["code"] == "invalid_audio"
    not_b64 = {
        "type": "input_audio",
        "input_audio": {"data": "%%% not base64 %%%", "format": "wav"},
    }
    error = status_error(chat(audio_message(audio["short"], part=not_b64)))
    assert error.status_code == 400 and error.body["code"] == "invalid_base64"
    odd = {"type": "input_audio", "input_audio": {"data": b64(audio["short"]), "format": "xyz"}}
    error = status_error(chat(audio_message(audio["short"], part=odd)))
    assert error.status_code == 400 and error.body["param"].endswith("input_audio.format")
    for kw, param in (
        ({"n": 2}, "n"),
        ({"top_p": 7.0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
    ):
        error = status_error(chat([{"role": "user", "content": "hi"}], **kw))
        assert error.status_code == 400 and error.body["param"] == param
        assert param in error.body["message"] and "\n" not in error.body["message"]
    error = status_error(chat([{"role": "user", "content": "hi"}], model="gpt-4o"))
    assert error.status_code == 404 and error.body["code"] == "model_not_found"

    def transcribe(path, name="x.wav", **kw):
        return lambda: client.audio.transcriptions.create(
            model=kw.pop("model", "salmonn"), file=(name, Path(path).read_bytes()), **kw
        )

    error = status_error(transcribe(audio["bad"]))
    assert error.status_code == 400 and error.body["code"] == "invalid_audio"
    error = status_error(transcribe(audio["short"], model="whisper-1"))
    assert error.status_code == 404
    error = status_error(transcribe(audio["short"], language="fr"))
    assert error.status_code == 400 and error.body["param"] == "language"
    big = server.tmpdir.parent / "big.wav"
    big.write_bytes(os.urandom(6_000_000))  # over --max-upload-mb 5
    error = status_error(transcribe(big))
    assert error.status_code == 413 and error.body["code"] == "file_too_large"
    error = status_error(transcribe(audio["over"]))  # 70 s, over --max-audio-seconds 60
    assert error.status_code == 413 and error.body["code"] == "audio_too_long"
    error = status_error(chat(audio_message(audio["over"])))
    assert error.status_code == 413


# ---------------------------------------------------------------------------------- batching


def _model_calls(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("salmonn_batch_size_count"))


def test_concurrent_requests_are_batched_and_correct(server, audio, model_flags):
    files = audio["many"]
    greedy = cli_records(model_flags, "prompt", "--text", INSTRUCTION, *files[:8])
    beams = cli_records(
        model_flags, "prompt", "--text", INSTRUCTION, "--num-beams", "3", *files[8:]
    )
    expected = [r["text"] for r in greedy + beams]
    client = server.client()
    before = server.metrics()
    start = threading.Barrier(16)

    def ask(i):
        extra = {"num_beams": 3} if i >= 8 else {}
        start.wait()
        answer = client.chat.completions.create(
            model="salmonn", messages=audio_message(files[i]), extra_body=extra
        )
        return answer.choices[0].message.content

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, range(16)))
    after = server.metrics()
    assert got == expected
    calls = _model_calls(after) - _model_calls(before)
    assert 2 <= calls < 16  # two decodings never share a call; requests of one decoding do
    merged = after["salmonn_batch_requests_sum"] - before["salmonn_batch_requests_sum"]
    assert merged == 16
    key = 'salmonn_requests_total{endpoint="/v1/chat/completions",status="200"}'
    assert after[key] - before[key] == 16


# ------------------------------------------------------------------------------------ lifecycle


def test_no_upload_left_on_disk(server):
    leftovers = [p.name for p in server.tmpdir.iterdir()]
    assert leftovers == []


def test_verbose_json_times_are_milliseconds_and_413_gives_the_upload_size(server, tmp_path):
    odd = tone(tmp_path / "odd.wav", 19753 / SR)  # 1.2345625 s
    client = server.client()
    with open(odd, "rb") as f:
        verbose = client.audio.transcriptions.create(
            model="salmonn", file=f, response_format="verbose_json"
        )
    assert verbose.duration == 1.235  # as the CLI's records say it
    assert all(s.end == round(s.end, 3) for s in verbose.segments)
    big = tmp_path / "big.wav"
    big.write_bytes(os.urandom(7_300_000))  # over --max-upload-mb 5
    with open(big, "rb") as f:
        error = status_error(lambda: client.audio.transcriptions.create(model="salmonn", file=f))
    assert error.status_code == 413 and "the upload is 7.3 MB" in error.body["message"]


def test_the_preset_name_reaches_a_server_given_paths(server, audio):
    client = server.client()
    (card,) = client.models.list().data
    assert card.id == "salmonn"
    with open(audio["short"], "rb") as f:  # README's examples name the default preset
        answer = client.audio.transcriptions.create(model="salmonn-7b", file=f)
    assert isinstance(answer.text, str)
    error = status_error(lambda: client.models.retrieve("gpt-4o"))
    assert error.status_code == 404 and "it serves 'salmonn'" in error.body["message"]


def test_sigterm_stops_cleanly(server, audio):
    """Last in the module: SIGTERM during a request; the request ends cleanly, the server exits 0."""
    outcome = {}

    def ask():
        try:
            answer = server.client().chat.completions.create(
                model="salmonn", messages=audio_message(audio["long"]), max_tokens=MAX_NEW
            )
            outcome["text"] = answer.choices[0].message.content
        except openai.APIStatusError as err:
            outcome["status"] = err.status_code
        except openai.APIConnectionError as err:
            outcome["connection"] = str(err)

    thread = threading.Thread(target=ask)
    thread.start()
    deadline = time.monotonic() + 30
    while server.metrics().get("salmonn_queue_depth", 0) < 1:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(60) == 0
    thread.join(60)
    assert "text" in outcome or outcome.get("status") == 503, outcome
    log = server.log.read_text()
    assert "salmonn serve: stopped" in log and "Traceback" not in log
    assert re.search(r"ready at http://127\.0\.0\.1:\d+/v1", log)
    assert [p.name for p in server.tmpdir.iterdir()] == []


# ------------------------------------------------------------------------- what a new user meets


def test_start_up_errors_are_one_line(tiny_paths, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALMONN_")}
    env.update(HF_HUB_OFFLINE="1", XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    base = [sys.executable, "-m", "salmonn_cli", "serve", "--device", "cpu"]
    paths = ["--whisper", tiny_paths.whisper, "--beats", tiny_paths.beats, "--llm", tiny_paths.llm,
             "--checkpoint", tiny_paths.checkpoint]  # fmt: skip
    try:
        taken = subprocess.run([*base, *paths, "--port", str(port)], env=env, capture_output=True,
                               text=True, timeout=120)  # fmt: skip
    finally:
        busy.close()
    assert taken.returncode == 1, taken.stderr
    assert f"Error: --port {port}: already in use" in taken.stderr and "Errno" not in taken.stderr
    host = subprocess.run([*base, *paths, "--host", "nope.invalid", "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert host.returncode == 2 and "--host nope.invalid" in host.stderr
    missing = subprocess.run([*base, "--whisper", str(tmp_path / "nope"), *paths[2:], "--port",
                              "0"], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.count("nope") == 1, missing.stderr  # reported once


def test_ctrl_c_during_the_load_stops_cleanly(tiny_paths, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALMONN_")}
    env.update(HF_HUB_OFFLINE="1", XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    args = [sys.executable, "-m", "salmonn_cli", "serve", "--device", "cpu", "--port", "0", "-v",
            "--whisper", tiny_paths.whisper, "--beats", tiny_paths.beats, "--llm", tiny_paths.llm,
            "--checkpoint", tiny_paths.checkpoint]  # fmt: skip
    for delay in (0.5, 2.0, 4.0):  # before uvicorn runs, while torch loads, while the model loads
        process = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(delay)
            process.send_signal(signal.SIGINT)
            _, rest = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
        # stopped, or interrupted before it served; -SIGINT: the interpreter ends itself with the
        # signal when the Ctrl-C landed in code that an extension ran through PyRun_String (torch's
        # import); a shell reports 130 for that as well
        assert process.returncode in (0, 130, -signal.SIGINT), rest
        assert "terminate called" not in rest and "Traceback" not in rest
