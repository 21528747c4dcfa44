"""The FastAPI application: OpenAI-compatible endpoints over :class:`~salmonn.serve.service.Service`.

The model loads in a background thread after the server starts listening (``/health`` answers 503
until then). Each request's work runs in a thread of its own (at most ``max_queue`` at once); the
model calls of all of them meet in the service's single model worker.

About 460 lines: one route per OpenAI endpoint, each with its form/JSON parsing, kept
together so the whole HTTP surface reads in one file; the work behind the routes is in
``service.py``, ``openai_api.py``, ``media.py`` and ``deltas.py`` (streaming token by token).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import PromptError
from ..jobs.tasks import (
    EMERGENT_LANGUAGES,
    LANGUAGE_NAMES,
    TRAINED_LANGUAGES,
    TRANSCRIBE_LANGUAGES,
    make_task,
)
from .config import ServeConfig
from .deltas import DeltaText, TokenFeed
from .errors import (
    APIError,
    bad_audio,
    bad_request,
    internal,
    queue_full,
    unauthorized,
    unavailable,
)
from .media import FORMATS, check_size, save
from .metrics import CONTENT_TYPE, Metrics
from .openai_api import (
    chat_chunk,
    chat_completion,
    check_model,
    decoding_options,
    new_id,
    parse_chat,
    usage_dict,
)
from .service import Answer, Service

logger = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
JSON_SLACK_BYTES = 1_000_000  # room for the JSON around base64 audio
OPEN_PATHS = ("/health", "/metrics")
SOURCE_LANGUAGES = tuple(sorted({*LANGUAGE_NAMES, *TRAINED_LANGUAGES, *EMERGENT_LANGUAGES}))


class _State:
    """The app's shared state: the service once loaded, admissions, metrics, the request threads."""

    def __init__(
        self,
        config: ServeConfig,
        load_model: Callable[[], Any],
        on_ready: Callable[[], None] | None,
        on_error: Callable[[BaseException], None] | None,
    ) -> None:
        self.config = config
        self.load_model = load_model
        self.on_ready = on_ready
        self.on_error = on_error
        self.metrics = Metrics()
        self.service: Service | None = None
        self.created = int(time.time())
        self.executor = ThreadPoolExecutor(config.max_queue, thread_name_prefix="salmonn-request")
        self._lock = threading.Lock()
        self._admitted = 0
        self.closing = False

    def load(self) -> None:
        try:
            model = self.load_model()
            self.service = Service(model, self.config, on_batch=self.metrics.observe_batch)
        except BaseException as exc:  # noqa: BLE001 - reported to the runner, which stops the server
            logger.error("the model could not be loaded: %s", exc)
            if self.on_error is not None:
                self.on_error(exc)
            return
        if self.on_ready is not None:
            self.on_ready()

    def ready(self) -> Service:
        if self.closing:
            raise unavailable("the server is shutting down", code="shutting_down")
        if self.service is None:
            raise unavailable("the model is still loading", code="model_loading")
        return self.service

    def enter(self) -> None:
        with self._lock:
            if self._admitted >= self.config.max_queue:
                raise queue_full()
            self._admitted += 1
        self.metrics.in_flight.inc()

    def leave(self) -> None:
        with self._lock:
            self._admitted -= 1
        self.metrics.in_flight.dec()

    async def run(self, work: Callable[[], Answer]) -> Answer:
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    def shutdown(self) -> None:
        logger.debug("shutting down: closing the model worker")
        self.closing = True
        if self.service is not None:
            self.service.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
        logger.debug("shut down")


def create_app(
    config: ServeConfig,
    load_model: Callable[[], Any],
    *,
    on_ready: Callable[[], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The ASGI app. ``load_model()`` runs in a thread at startup; ``on_ready()`` follows it, or
    ``on_error(exc)`` when it fails."""
    state = _State(config, load_model, on_ready, on_error)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=state.load, name="salmonn-load", daemon=True).start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, state.shutdown)

    app = FastAPI(title="salmonn", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.salmonn = state
    _install_handlers(app, state)
    _install_routes(app, state)
    return app


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _install_handlers(app: FastAPI, state: _State) -> None:
    @app.middleware("http")
    async def auth_and_count(request: Request, call_next: Any) -> Response:
        path = request.url.path
        key = state.config.api_key
        if key and path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if given != f"Bearer {key}":
                response: Response = _error_response(unauthorized())
                state.metrics.requests.labels(path, "401").inc()
                return response
        endpoint = path if path in _KNOWN_PATHS else "other"
        try:
            response = await call_next(request)
        except Exception:  # a bug: the 500 handler answers it; counted here
            state.metrics.requests.labels(endpoint, "500").inc()
            raise
        state.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = APIError(exc.status_code, str(exc.detail), code=code)
        return _error_response(err)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error on %s", request.url.path, exc_info=exc)
        return _error_response(internal())


_KNOWN_PATHS = (
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
)


async def _json_body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        check_size(int(declared) * 3 // 4, (limit - JSON_SLACK_BYTES) * 3 // 4)
    raw = await request.body()
    if len(raw) > limit:
        check_size(len(raw) * 3 // 4, (limit - JSON_SLACK_BYTES) * 3 // 4)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_request(f"the body is not valid JSON: {err}") from None


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _install_routes(app: FastAPI, state: _State) -> None:
    config = state.config
    name = config.served_model_name

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.service is None or state.closing:
            status = "shutting down" if state.closing else "loading"
            return JSONResponse({"status": status}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    def model_card() -> dict[str, Any]:
        return {"id": name, "object": "model", "created": state.created, "owned_by": "salmonn"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        check_model({"model": model_id}, name)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        service = state.ready()
        body = await _json_body(request, config.max_upload_bytes * 4 // 3 + JSON_SLACK_BYTES)
        state.enter()
        try:
            parsed = parse_chat(
                body,
                config.generation,
                served=name,
                allowed_dir=config.allowed_local_media_path,
                max_bytes=config.max_upload_bytes,
            )
        except BaseException:
            state.leave()
            raise
        audio = parsed.audio

        def work(on_tokens: TokenFeed | None = None) -> Answer:
            try:
                if audio is None:
                    return service.run_text(parsed.instruction, parsed.options, on_tokens)
                task = make_task("prompt", text=parsed.instruction)
                return service.run_task(task, audio, parsed.options, on_tokens)
            finally:
                if audio is not None:
                    audio.cleanup()
                state.leave()

        if not parsed.stream:
            return JSONResponse(chat_completion(await state.run(work), name))
        deltas = None
        if service.streams_tokens(parsed.options):
            assert service.decode_stable is not None
            # an audio answer is the chunk's text stripped (the engine's record text)
            deltas = DeltaText(service.decode_stable, strip=audio is not None)
        return StreamingResponse(
            _chat_events(state, work, parsed.include_usage, deltas),
            media_type="text/event-stream",
        )

    async def audio_task(request: Request, task_name: str) -> Response:
        service = state.ready()
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit():
            check_size(int(declared) - JSON_SLACK_BYTES, config.max_upload_bytes, "file")
        state.enter()
        try:
            work, fmt, language = await _audio_work(request, state, service, task_name)
        except BaseException:
            state.leave()
            raise
        answer = await state.run(work)
        return _audio_response(answer, fmt, task_name, language)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await audio_task(request, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(request: Request) -> Response:
        return await audio_task(request, "translate")


async def _chat_events(
    state: _State,
    work: Callable[[TokenFeed | None], Answer],
    include_usage: bool,
    deltas: DeltaText | None,
) -> AsyncIterator[str]:
    """SSE chunks: the role, the answer, the finish reason, (usage), ``[DONE]``.

    With ``deltas`` (greedy or sampling; the answer is one generation's text) the answer comes as
    the tokens are decoded, each delta the text that no later token can change, and the rest at
    the end; otherwise as one delta once the engine has it (beam search knows its answer only at
    the end; the final text of long audio exists only after the whole-recording pass).
    """
    cid, created, name = new_id("chatcmpl"), int(time.time()), state.config.served_model_name
    yield _sse(chat_chunk(cid, created, name, {"role": "assistant", "content": ""}))
    loop = asyncio.get_running_loop()
    feed = TokenFeed(loop) if deltas is not None else None
    future = loop.run_in_executor(state.executor, work, feed)
    try:
        if feed is not None and deltas is not None:
            future.add_done_callback(lambda _: feed.end())
            while (ids := await feed.next()) is not None:
                if text := deltas.update(ids):
                    yield _sse(chat_chunk(cid, created, name, {"content": text}))
        answer = await future
    except APIError as err:
        yield _sse(err.body())
        yield "data: [DONE]\n\n"
        return
    except Exception as exc:
        logger.error("streamed request failed", exc_info=exc)
        yield _sse(internal().body())
        yield "data: [DONE]\n\n"
        return
    finally:  # also when the client left: the work goes on, its tokens go nowhere
        if feed is not None:
            feed.close()
        if not future.done():
            future.cancel()
    rest = answer.text if deltas is None else deltas.rest(answer.text)
    if rest is None:  # the streamed text is not a prefix of the answer: never send a wrong one
        logger.error("streamed deltas do not lead to the final answer; failing the request")
        yield _sse(internal().body())
        yield "data: [DONE]\n\n"
        return
    if rest:
        yield _sse(chat_chunk(cid, created, name, {"content": rest}))
    yield _sse(chat_chunk(cid, created, name, {}, answer.finish_reason))
    if include_usage:
        final = chat_chunk(cid, created, name, {})
        final["choices"] = []
        final["usage"] = usage_dict(answer.usage)
        yield _sse(final)
    yield "data: [DONE]\n\n"


def _field(form: Any, key: str, default: str | None = None) -> str | None:
    value = form.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad_request(f"{key} must be a text field", key)
    return value.strip() or default


def _language(form: Any, task_name: str) -> str:
    """The spoken language: ``en``, ``zh`` or ``de`` to transcribe (default ``en``); to translate,
    optional and any code the library names (it changes no prompt: SALMONN's translation prompt
    names only the target), default ``en``, the source it was trained on."""
    language = (_field(form, "language", "en") or "en").lower()
    known = TRANSCRIBE_LANGUAGES if task_name == "transcribe" else SOURCE_LANGUAGES
    if language not in known:
        raise bad_request(
            f"language must be one of {', '.join(known)}, got {language!r}", "language"
        )
    return language


async def _audio_work(
    request: Request, state: _State, service: Service, task_name: str
) -> tuple[Callable[[], Answer], str, str]:
    """Read the multipart form and prepare the request's work (the audio saved to a temp file)."""
    config = state.config
    try:
        form = await request.form(max_files=1, max_fields=32)
    except Exception as err:  # noqa: BLE001 - a malformed body is the client's error
        raise bad_request(f"expected a multipart/form-data body with a file: {err}") from None
    try:
        check_model({"model": _field(form, "model")}, config.served_model_name)
        fmt = _field(form, "response_format", "json") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise bad_request(
                f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}",
                "response_format",
            )
        language = _language(form, task_name)
        # ``prompt`` (OpenAI's hint of vocabulary or style) is accepted and ignored: SALMONN's
        # task prompts are fixed, and clients send it routinely (often empty)
        temperature = _field(form, "temperature")
        body: dict[str, Any] = {}
        if temperature is not None:
            try:
                body["temperature"] = float(temperature)
            except ValueError:
                raise bad_request(
                    f"temperature must be a number, got {temperature!r}", "temperature"
                ) from None
        options = decoding_options(body, config.generation)
        try:
            if task_name == "transcribe":
                task = make_task("transcribe", language=language)
            else:
                task = make_task("translate", to=_field(form, "to_language", "zh"))
        except PromptError as err:
            raise bad_request(
                str(err), "to_language" if task_name == "translate" else "language"
            ) from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise bad_request("the form needs a file field with the audio", "file")
        raw = await upload.read(config.max_upload_bytes + 1)
        check_size(len(raw), config.max_upload_bytes, "file")
        if not raw:
            raise bad_audio("the uploaded file is empty", "file")
        suffix = (upload.filename or "").rsplit(".", 1)[-1].lower()
        audio = save(raw, suffix if suffix in FORMATS else "bin")
    finally:
        await form.close()

    def work() -> Answer:
        try:
            return service.run_task(task, audio, options)
        finally:
            audio.cleanup()
            state.leave()

    return work, fmt, language


def _audio_response(answer: Answer, fmt: str, task_name: str, language: str) -> Response:
    from io import StringIO

    from ..jobs.writers import get_writer

    record = answer.record
    assert record is not None
    if fmt == "json":
        return JSONResponse({"text": answer.text})
    if fmt == "verbose_json":
        segments = [
            {"id": i, "start": s.start, "end": s.end, "text": s.text}
            for i, s in enumerate(record.segments)
        ]
        return JSONResponse(
            {
                "task": "transcribe" if task_name == "transcribe" else "translate",
                "language": language,
                "duration": record.duration,
                "text": answer.text,
                "segments": segments,
            }
        )
    buffer = StringIO()
    with get_writer(fmt)(buffer) as writer:
        writer.write(record)
    return PlainTextResponse(buffer.getvalue())
