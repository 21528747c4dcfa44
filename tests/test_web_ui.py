"""The browser page of ``salmonn serve`` (``GET /``), driven by a real headless Chromium.

The browser is Debian's ``chromium`` package, driven by Playwright's Python package pointed at it
(``executable_path``: Playwright downloads nothing). Without a chromium on PATH, or without the
playwright package, the browser tests skip saying so. Two real servers run on 127.0.0.1 with the
tiny model: one open, one with ``--api-key``. The page's answers are compared with the real CLI's
(a ``salmonn`` subprocess, or Click's CliRunner) and the API's for the same file and settings.
Every test records the browser's console errors and every URL the page requests: none may leave
the server's origin. ``SALMONN_WEB_SCREENSHOT=docs/web-ui.png`` saves the README's screenshot.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import helpers
import numpy as np
import pytest

from salmonn.jobs.writers import srt_time
from salmonn.serve.webui import CHAT_TEMPLATES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = "web-key"
DECODING = ["--max-new-tokens", "8", "--num-beams", "1"]  # the servers' defaults
FLAGS = [*DECODING, "--max-upload-mb", "2", "--max-queue", "8", "--batch-wait-ms", "0"]
BROWSER_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
RUN_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def playwright_api():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); the page is untested")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is missing (pip install playwright)"
    )
    with sync_api.sync_playwright() as api:
        yield api


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """short.wav (3 s), long.wav (35 s: two chunks), mic.wav (the fake microphone's sound),
    big.wav (3.2 MB, over the servers' 2 MB limit), bad.wav (not audio)."""
    root = tmp_path_factory.mktemp("web-audio")
    out = {
        "short": helpers.tone(root / "short.wav", 3.0, 440.0, wobble_hz=0.3),
        "long": helpers.tone(root / "long.wav", 35.0, 220.0, wobble_hz=0.3),
        "mic": helpers.tone(root / "mic.wav", 4.0, 660.0, rate=48_000),
        "big": helpers.tone(root / "big.wav", 100.0, 330.0),
    }
    (root / "bad.wav").write_bytes(b"RIFF this is not audio at all" * 20)
    out["bad"] = root / "bad.wav"
    return out


@pytest.fixture(scope="module")
def browser(playwright_api, files):
    capture = f"--use-file-for-fake-audio-capture={files['mic']}"
    media = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", capture]
    browser = playwright_api.chromium.launch(
        executable_path=CHROMIUM, args=[*BROWSER_ARGS, *media], headless=True
    )
    yield browser
    browser.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def client(self, key: str = "none"):
        import openai

        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)


def start_server(tiny_paths, root: Path, *extra: str, wait_for_model: bool = True) -> Server:
    port = free_port()
    log = root / f"server-{port}.log"
    args = [
        *helpers.salmonn_command(), "serve",
        "--whisper", tiny_paths.whisper, "--beats", tiny_paths.beats, "--llm", tiny_paths.llm,
        "--checkpoint", tiny_paths.checkpoint, "--device", "cpu", "--port", str(port), *extra,
    ]  # fmt: skip
    env = helpers.cli_env(OMP_NUM_THREADS="1", TMPDIR=str(root))
    with open(log, "w") as handle:
        process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env)
    server = Server(process, port, log)

    def up() -> bool:
        try:
            status = server.get("/health")[0]
        except OSError:
            return False
        return status == 200 or (not wait_for_model and status == 503)

    helpers.wait_until(
        up, 240, f"the server ({log.read_text()})", alive=lambda: process.poll() is None
    )
    return server


@pytest.fixture(scope="module")
def server(tiny_paths, tmp_path_factory):
    srv = start_server(tiny_paths, tmp_path_factory.mktemp("web-serve"), *FLAGS)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keyed_server(tiny_paths, tmp_path_factory):
    srv = start_server(tiny_paths, tmp_path_factory.mktemp("web-keyed"), *FLAGS, "--api-key", KEY)
    yield srv
    srv.stop()


class Watch:
    """One browser tab on a server: its console errors, page errors and every requested URL."""

    def __init__(self, browser, server: Server, viewport: dict | None = None) -> None:
        self.server = server
        self.context = browser.new_context(
            viewport=viewport or {"width": 1280, "height": 900}, accept_downloads=True
        )
        self.page = self.context.new_page()
        self.console_errors: list[str] = []
        self.urls: list[str] = []
        self.page.on(
            "console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None
        )
        self.page.on("pageerror", lambda e: self.console_errors.append(f"page error: {e}"))
        self.page.on("request", lambda r: self.urls.append(r.url))

    def open(self, ready: bool = True):
        self.page.goto(self.server.base + "/")
        if ready:
            self.page.get_by_test_id("model-name").filter(has_text="model salmonn").wait_for()
        return self.page

    def run_and_wait(self) -> None:
        self.page.get_by_test_id("run").click()
        self.wait_done()

    def wait_done(self) -> None:
        page = self.page
        page.wait_for_function(
            "() => !document.querySelector('[data-testid=run]').disabled", timeout=RUN_TIMEOUT_MS
        )
        error = page.get_by_test_id("error")
        assert not error.is_visible(), error.text_content()
        assert page.get_by_test_id("status").text_content().startswith("Done in")

    def assert_clean(self, allowed: tuple[str, ...] = ()) -> None:
        """No console error (but those naming an expected status), no request off the origin."""
        errors = [e for e in self.console_errors if not any(a in e for a in allowed)]
        assert errors == []
        origin = self.server.base + "/"
        outside = [
            u for u in self.urls if not (u.startswith(origin) or u.startswith("blob:" + origin))
        ]
        assert outside == [] and len(self.urls) >= 5

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser, server):
    watch = Watch(browser, server)
    yield watch
    watch.close()


def cli(model_flags, command: str, *args) -> str:
    """``salmonn COMMAND ...`` as a subprocess (the real console script); its stdout."""
    words = [*helpers.salmonn_command(), command, *DECODING, *model_flags, "--device", "cpu"]
    out = subprocess.run(
        [*words, *map(str, args), "-q"],
        capture_output=True, text=True, check=False, timeout=300,
        env=helpers.cli_env(OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def in_process(model_flags, command: str, *args) -> str:
    """The same through Click's CliRunner (cheaper: no new interpreter)."""
    result = helpers.invoke([command, *DECODING, *model_flags, "--device", "cpu", *args, "-q"])
    assert result.exit_code == 0, result.output
    return result.stdout


def parse_srt(text: str) -> list[tuple[int, str, str, str]]:
    """SubRip cues as (number, start, end, text); fails on anything else."""
    cue = re.compile(
        r"(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n((?:[^\n]+\n)+)\n", re.ASCII
    )
    cues, at = [], 0
    while at < len(text):
        match = cue.match(text, at)
        assert match, f"not SubRip at {at}: {text[at : at + 80]!r}"
        cues.append((int(match[1]), match[2], match[3], match[4].rstrip("\n")))
        at = match.end()
    return cues


def download(page, testid: str) -> str:
    with page.expect_download() as info:
        page.get_by_test_id(testid).click()
    return Path(info.value.path()).read_text(encoding="utf-8")


# ------------------------------------------------------------------- subtitles written in the page

TRICKY = [  # texts that the writers' rules change: blanks, control characters, "-->", markup
    " plain ",
    "two\n\nlines \r\n and\rmore",
    "a --> b ---> c",
    "<i>&amp;</i> & <",
    "\x1b[31mred\x07",
    "\u2028sep\u2029ara\u2028",
    "\xa0nbsp\u3000",
    "\ufeffbom\ufeff",
    "\t tab\t",
    "",
    "   ",
    "\x85",
    "\u00e9\u4e2d\U0001f600",
    "line\x0bv\x0cf\x1cgs",
]


def test_page_subtitles_equal_the_cli_writers(tab):
    """formats.js writes SRT and VTT from verbose_json as salmonn/writers.py does: byte for byte
    over texts that exercise every rule, times that round at a half millisecond, and a record
    with a text but no segments."""
    from salmonn.jobs.records import Record, Segment
    from salmonn.jobs.writers import get_writer

    rng = np.random.default_rng(0)
    records = []
    for i in range(6):
        times = np.sort(rng.uniform(0, 4000, 2 * len(TRICKY))).round(4)
        times[:4] = [0.0005, 1.0005, 59.9995, 3599.9995]
        segments = [
            Segment(float(times[2 * k]), float(times[2 * k + 1]), TRICKY[(k + i) % len(TRICKY)])
            for k in range(len(TRICKY))
        ]
        records.append(Record("a.wav", "transcribe", "p", " ".join(TRICKY), segments, 4000.0))
    records.append(Record("b.wav", "transcribe", "p", "no --> segments", [], 12.3456))
    records.append(Record("c.wav", "transcribe", "p", "", [], 1.0))
    bodies = [
        {  # as the server's verbose_json: the times unrounded
            "text": r.text,
            "duration": r.duration,
            "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in r.segments],
        }
        for r in records
    ]
    page = tab.open()  # the page's own module, run by the browser
    written = page.evaluate(
        "async (bodies) => { const { srt, vtt } = await import('/web/formats.js');"
        " return bodies.map((r) => [srt(r), vtt(r)]); }",
        bodies,
    )
    for record, (srt, vtt) in zip(records, written, strict=True):
        for fmt, got in (("srt", srt), ("vtt", vtt)):
            buffer = io.StringIO()
            with get_writer(fmt)(buffer) as writer:
                writer.write(record)
            assert got == buffer.getvalue(), fmt
    srt, vtt = written[0]  # the rules did apply
    assert "a -> b" in srt and "<i>&amp;</i>" in srt and "&lt;i&gt;&amp;amp;" in vtt
    assert "\x1b" not in srt and "00:00:01,001" in srt and "01:00:00.000" in vtt


# ------------------------------------------------------------------------------------ the page


def test_page_and_files_are_served_with_a_strict_policy(server):
    status, headers, body = server.get("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    html = body.decode()
    for testid in ("audio-file", "record", "task", "question", "run", "answer"):
        assert f'data-testid="{testid}"' in html
    # nothing on the page points outside this server
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == [
        "/web/favicon.svg", "/web/style.css", "/web/app.js", "#", "#", "#",
    ]  # fmt: skip
    scripts = [(n, "text/javascript") for n in ("app.js", "api.js", "formats.js", "recorder.js")]
    for name, kind in (*scripts, ("style.css", "text/css")):
        status, headers, body = server.get(f"/web/{name}")
        assert status == 200 and headers["content-type"].startswith(kind)
        assert not re.search(rb"https?://|@import|url\(", body), name
    assert server.get("/web/index.html")[0] == 404 and server.get("/web/..%2Fapp.py")[0] == 404
    status, _, body = server.get("/web/info")
    info = json.loads(body)
    assert info["max_upload_bytes"] == 2_000_000 and info["api_key_required"] is False
    assert info["decoding"] == {
        "num_beams": 1,
        "max_tokens": 8,
        "do_sample": False,
        "temperature": 1.0,
    }
    from salmonn import make_task

    assert info["tasks"]["caption"] == make_task("caption").spec().prompt
    assert info["tasks"]["ask"] == make_task("ask", question="{question}").spec().prompt
    assert set(info["tasks"]) == set(CHAT_TEMPLATES)


def test_transcriptions_take_num_beams_and_max_tokens(server, files, model_flags):
    """The extra form fields the page sends: applied as the CLI's flags, checked as chat's."""
    import openai

    client = server.client()

    def post(fmt: str = "json", **fields) -> str:
        return client.audio.transcriptions.create(
            model="salmonn", file=files["short"], response_format=fmt, extra_body=fields
        )

    answer = post("text", max_tokens="2", num_beams="3")
    flags = ["--max-new-tokens", "2", "--num-beams", "3"]
    assert answer == in_process(model_flags, "transcribe", "-f", "text", files["short"], *flags)
    assert post("text") != answer  # the server's 8 tokens, 1 beam
    for name, value in (("num_beams", "two"), ("max_tokens", "0"), ("num_beams", "1.5")):
        with pytest.raises(openai.BadRequestError) as error:
            post(**{name: value})
        assert error.value.body["param"] == name


def test_transcribe_equals_the_cli_with_segments_and_downloads(tab, files, model_flags):
    """A 35 s upload (two chunks) with the page's own decoding (2 beams, 6 tokens, not the
    server's): the transcript, the segments and the SRT/VTT downloads are those of
    ``salmonn transcribe`` with the same settings."""
    page = tab.open()
    page.get_by_test_id("audio-file").set_input_files(str(files["long"]))
    assert page.get_by_test_id("player").get_attribute("src").startswith("blob:")
    page.get_by_test_id("task").select_option("transcribe")
    page.get_by_test_id("beams").fill("2")
    page.get_by_test_id("max-tokens").fill("6")
    tab.run_and_wait()
    settings = ["--num-beams", "2", "--max-new-tokens", "6"]  # after DECODING: these win
    (record,) = helpers.jsonl(
        cli(model_flags, "transcribe", files["long"], *settings, "-f", "jsonl")
    )
    answer = page.get_by_test_id("answer").text_content()
    assert answer == record["text"] and answer
    assert len(record["segments"]) == 2
    shown = page.get_by_test_id("segments").locator("li span").all_text_contents()
    assert shown == [s["text"] for s in record["segments"]]
    srt = download(page, "download-srt")
    assert srt == in_process(model_flags, "transcribe", files["long"], *settings, "-f", "srt")
    cues = parse_srt(srt)
    assert [c[0] for c in cues] == list(range(1, len(cues) + 1))
    timed = [(srt_time(s["start"]), srt_time(s["end"])) for s in record["segments"] if s["text"]]
    assert [c[1:3] for c in cues] == timed and timed[0][0] == "00:00:00,000"
    vtt = download(page, "download-vtt")
    assert vtt == in_process(model_flags, "transcribe", files["long"], *settings, "-f", "vtt")
    body = json.loads(download(page, "download-json"))
    assert body["text"] == answer and body["duration"] == pytest.approx(35.0, abs=1e-3)
    path = os.environ.get("SALMONN_WEB_SCREENSHOT") or str(files["short"].parent / "web-ui.png")
    page.screenshot(path=path, full_page=True)
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tab.assert_clean()


@pytest.mark.parametrize("task", ["ask", "caption"])
def test_chat_tasks_equal_the_cli_and_the_api(tab, server, files, model_flags, task):
    """``ask`` with a question and ``caption``: streamed through /v1/chat/completions, the answer
    equals ``salmonn ask FILE QUESTION`` / ``salmonn caption`` (one chunk) and the API's answer."""
    question = "What can you hear? <b>loud</b>"
    page = tab.open()
    page.get_by_test_id("audio-file").set_input_files(str(files["short"]))
    page.get_by_test_id("task").select_option(task)
    extra = []
    if task == "ask":
        page.get_by_test_id("question").fill(question)
        extra = [question]  # salmonn ask [PATH]... QUESTION
    with page.expect_request("**/v1/chat/completions") as request:
        page.get_by_test_id("run").click()
    tab.wait_done()
    sent = request.value.post_data_json
    assert sent["stream"] is True and "num_beams" not in sent  # empty fields: the server's
    answer = page.get_by_test_id("answer").text_content()
    (record,) = helpers.jsonl(in_process(model_flags, task, "-f", "jsonl", files["short"], *extra))
    assert answer == record["text"]
    text = question if task == "ask" else "Please describe the audio."
    audio = {"data": sent["messages"][0]["content"][1]["input_audio"]["data"], "format": "wav"}
    messages = [{"role": "user", "content": [
        {"type": "text", "text": text}, {"type": "input_audio", "input_audio": audio},
    ]}]  # fmt: skip
    client = server.client()
    whole = client.chat.completions.create(model="salmonn", messages=messages)
    assert whole.choices[0].message.content == answer
    stream = client.chat.completions.create(model="salmonn", messages=messages, stream=True)
    deltas = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    # token by token: the page appended each delta as it came, as a text node of its own
    shown = page.get_by_test_id("answer").evaluate("node => node.childNodes.length")
    assert shown == len(deltas) > 1
    tab.assert_clean()


def test_microphone_recording_is_transcribed(tab, files, model_flags, tmp_path):
    """Chromium's fake microphone plays mic.wav; the page records it with MediaRecorder, shows it
    in the player and sends it (caption: JSON whose bytes the test reads back); the caption and
    the transcript equal the CLI's on the very bytes it sent."""
    page = tab.open()
    record = page.get_by_test_id("record")
    record.click()
    page.get_by_test_id("status").filter(has_text="Recording… 2 s").wait_for(timeout=30_000)
    assert record.get_attribute("aria-pressed") == "true"
    record.click()
    page.get_by_test_id("source").filter(has_text="recording.webm").wait_for()
    assert record.get_attribute("aria-pressed") == "false"
    assert page.get_by_test_id("player").get_attribute("src").startswith("blob:")
    page.get_by_test_id("task").select_option("caption")
    with page.expect_request("**/v1/chat/completions") as request:
        page.get_by_test_id("run").click()
    tab.wait_done()
    caption = page.get_by_test_id("answer").text_content()
    audio = request.value.post_data_json["messages"][0]["content"][1]["input_audio"]
    assert audio["format"] == "webm"
    recorded = tmp_path / "recording.webm"
    recorded.write_bytes(base64.b64decode(audio["data"]))
    from salmonn.audio.decode import load_audio

    wave = load_audio(recorded)
    assert len(wave) > 1.5 * 16_000  # about 2 s recorded
    spectrum = np.abs(np.fft.rfft(wave[8000:24000]))
    assert abs(int(np.argmax(spectrum)) - 660) <= 3  # mic.wav's 660 Hz tone, at 1 Hz per bin
    (expected,) = helpers.jsonl(in_process(model_flags, "caption", "-f", "jsonl", recorded))
    assert caption == expected["text"]
    page.get_by_test_id("task").select_option("transcribe")
    tab.run_and_wait()
    (expected,) = helpers.jsonl(in_process(model_flags, "transcribe", "-f", "jsonl", recorded))
    assert page.get_by_test_id("answer").text_content() == expected["text"]
    tab.assert_clean()


def test_wrong_api_key_shows_the_servers_message(browser, keyed_server):
    status, _, body = keyed_server.get("/v1/models", {"Authorization": "Bearer wrong"})
    assert status == 401
    message = json.loads(body)["error"]["message"]
    watch = Watch(browser, keyed_server)
    try:
        page = watch.open(ready=False)
        page.get_by_test_id("api-key-panel").wait_for()
        assert not any("/v1/" in u for u in watch.urls)  # /web/info said a key is needed
        page.get_by_test_id("api-key").fill("wrong")
        page.get_by_test_id("api-key-save").click()
        error = page.get_by_test_id("api-key-error")
        error.wait_for()
        assert error.text_content() == message
        stored = "() => [sessionStorage.getItem('salmonn.apiKey'), localStorage.length]"
        assert page.evaluate(stored) == [None, 0]
        page.get_by_test_id("api-key").fill(KEY)
        page.get_by_test_id("api-key").press("Enter")
        page.get_by_test_id("model-name").filter(has_text="model salmonn").wait_for()
        assert page.evaluate(stored) == [KEY, 0]
        assert not page.get_by_test_id("api-key-panel").is_visible()
        page.reload()  # the same tab keeps it
        page.get_by_test_id("model-name").filter(has_text="model salmonn").wait_for()
        watch.assert_clean(allowed=("401",))
    finally:
        watch.close()
    other = Watch(browser, keyed_server)  # another tab (context) does not have it
    try:
        other.open(ready=False).get_by_test_id("api-key-panel").wait_for()
        other.assert_clean()
    finally:
        other.close()


def test_model_output_is_shown_as_text(tab):
    """Answers and segments holding HTML appear as text: the server's answers are replaced (the
    page is what is tested here) with markup that would run script if it were parsed."""
    markup = '<img src="/web/x.png" onerror="document.title=\'pwned\'"><b>bold</b> & more'
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": markup[:20]}}]},
        {"choices": [{"index": 0, "delta": {"content": markup[20:]}, "finish_reason": "stop"}]},
    ]
    stream = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    verbose = {"task": "transcribe", "language": "en", "duration": 3.0, "text": markup,
               "segments": [{"id": 0, "start": 0.0, "end": 3.0, "text": markup}]}  # fmt: skip
    page = tab.open()
    page.route("**/v1/chat/completions", lambda r: r.fulfill(
        status=200, content_type="text/event-stream", body=stream))  # fmt: skip
    page.route("**/v1/audio/transcriptions", lambda r: r.fulfill(
        status=200, content_type="application/json", body=json.dumps(verbose)))  # fmt: skip
    title = page.title()
    page.get_by_test_id("audio-file").set_input_files(
        {"name": "a.wav", "mimeType": "audio/wav", "buffer": b"RIFF"}
    )
    for task in ("caption", "transcribe"):
        page.get_by_test_id("task").select_option(task)
        tab.run_and_wait()
        answer = page.get_by_test_id("answer")
        assert answer.text_content() == markup
        assert answer.evaluate("node => node.children.length") == 0
    assert page.get_by_test_id("segments").locator("li span").text_content() == markup
    assert page.locator("img, b").count() == 0 and page.title() == title
    assert "&lt;img" in download(page, "download-vtt")
    assert not any(u.endswith("/web/x.png") for u in tab.urls)
    tab.assert_clean()


def test_errors_appear_in_words(tab, server, files):
    """No audio, a file over the upload limit, a file that is not audio: each says so on the page
    and the run button stays usable."""
    page = tab.open()
    run, error = page.get_by_test_id("run"), page.get_by_test_id("error")
    run.click()
    assert error.text_content() == "Choose an audio file or record one first."
    page.get_by_test_id("audio-file").set_input_files(str(files["big"]))
    assert "over the server's upload limit of 2.0 MB" in error.text_content()
    run.click()
    assert "over the server's upload limit of 2.0 MB" in error.text_content()
    assert not any("/v1/audio" in u for u in tab.urls) and run.is_enabled()
    page.get_by_test_id("audio-file").set_input_files(str(files["bad"]))
    with page.expect_response("**/v1/audio/transcriptions") as response:
        run.click()
    assert response.value.status == 400
    server_message = response.value.json()["error"]["message"]
    page.wait_for_function("() => !document.querySelector('[data-testid=run]').disabled")
    assert error.text_content() == server_message
    assert error.is_visible() and run.is_enabled()
    page.get_by_test_id("task").select_option("ask")
    run.click()
    assert error.text_content() == "Type a question first."
    # a full queue: the server's own 503 answer (its error object and Retry-After), replayed
    from salmonn.serve.errors import queue_full

    busy = queue_full(3)
    page.route("**/v1/chat/completions", lambda r: r.fulfill(
        status=503, headers=busy.headers, content_type="application/json",
        body=json.dumps(busy.body()),
    ))  # fmt: skip
    page.get_by_test_id("audio-file").set_input_files(str(files["short"]))
    page.get_by_test_id("task").select_option("caption")
    run.click()
    page.wait_for_function("() => !document.querySelector('[data-testid=run]').disabled")
    assert error.text_content() == f"{busy.message} (try again in 3 s)"
    assert run.is_enabled()
    tab.assert_clean(allowed=("400", "503"))


def test_keyboard_alone_runs_a_task(tab, files):
    """Tab reaches every control in order; Enter and Space on Run run the task; Ctrl+Enter in the
    question field too."""
    page = tab.open()
    order = []
    for _ in range(12):  # from the top of the page, transcribe chosen
        page.keyboard.press("Tab")
        order.append(page.evaluate("() => document.activeElement.dataset.testid || ''"))
    wanted = ["audio-file", "record", "task", "language", "beams", "max-tokens", "temperature"]
    assert [t for t in order if t][: len(wanted) + 1] == [*wanted, "run"]
    page.get_by_test_id("audio-file").set_input_files(str(files["short"]))
    page.get_by_test_id("task").focus()
    page.keyboard.press("End")  # the last task, prompt: its instruction field follows
    assert page.get_by_test_id("task").input_value() == "prompt"
    page.get_by_test_id("task").select_option("ask")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.dataset.testid") == "question"
    page.keyboard.type("Is it music?")
    answers = []
    for key in ("Enter", " "):
        page.get_by_test_id("run").focus()
        page.keyboard.press(key)
        tab.wait_done()
        answers.append(page.get_by_test_id("answer").text_content())
    page.get_by_test_id("question").focus()
    page.keyboard.press("Control+Enter")
    tab.wait_done()
    answers.append(page.get_by_test_id("answer").text_content())
    assert answers[0] and answers == [answers[0]] * 3  # greedy: the same answer each time
    tab.assert_clean()


def test_fits_a_phone(browser, server):
    watch = Watch(browser, server, viewport={"width": 390, "height": 844})
    try:
        page = watch.open()
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        run = page.get_by_test_id("run").bounding_box()
        answer = page.get_by_test_id("answer").bounding_box()
        assert run["width"] >= 44 and answer["y"] > run["y"]  # one column: the answer below
        watch.assert_clean()
    finally:
        watch.close()


def test_no_web_ui_gives_404(tiny_paths, tmp_path):
    srv = start_server(tiny_paths, tmp_path, "--no-web-ui", wait_for_model=False)
    try:
        for path in ("/", "/web/app.js", "/web/info"):
            status, _, body = srv.get(path)
            assert status == 404 and json.loads(body)["error"]["code"] == "not_found", path
    finally:
        srv.stop()
    assert "web page at" not in srv.log.read_text()


def test_cli_names_the_page(server):
    assert f"web page at http://127.0.0.1:{server.port}/" in server.log.read_text()
