"""The audio routes, ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` (multipart forms).

The form is read whole first (the guard bounds its size and time; starlette spools the file), then
checked, and only then is the request admitted: its :class:`~salmonn.serve.admission.Ticket`
holds the queue slot and the saved upload until its work ends. The answer is the text of
``salmonn transcribe`` / ``salmonn translate`` in the asked ``response_format``.
"""

from __future__ import annotations

from io import StringIO
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile

from ..errors import PromptError
from ..jobs.tasks import (
    EMERGENT_LANGUAGES,
    LANGUAGE_NAMES,
    TRAINED_LANGUAGES,
    TRANSCRIBE_LANGUAGES,
    make_task,
)
from . import schema
from .errors import APIError, bad_audio, bad_request
from .media import FORMATS, check_size, save
from .openai_api import check_model, check_text, decoding_options
from .service import Answer
from .state import ServerState

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
SOURCE_LANGUAGES = tuple(sorted({*LANGUAGE_NAMES, *TRAINED_LANGUAGES, *EMERGENT_LANGUAGES}))


def install(app: FastAPI, state: ServerState) -> None:
    """Add the routes to ``app``."""
    name = state.config.served_model_name

    async def audio_task(request: Request, task_name: str) -> Response:
        service = state.ready()
        prepared, upload = await _read_form(request, state, task_name)
        ticket = state.admit()
        try:
            ticket.hold(save(upload, prepared["suffix"]))
        except BaseException:
            ticket.release()
            raise
        audio = ticket.upload
        assert audio is not None

        def work() -> Answer:
            try:  # the server's --max-new-tokens, lowered to what the context leaves
                options = service.fit_prompt("", prepared["task"], prepared["options"], False)
                return service.run_task(
                    prepared["task"], audio, options, cancelled=ticket.cancelled
                )
            finally:
                ticket.release()

        answer = await state.run(ticket, work, request.receive)
        return _audio_response(answer, prepared["format"], task_name, prepared["language"])

    @app.post("/v1/audio/transcriptions", openapi_extra=schema.audio("transcriptions", name))
    async def transcriptions(request: Request) -> Response:
        return await audio_task(request, "transcribe")

    @app.post("/v1/audio/translations", openapi_extra=schema.audio("translations", name))
    async def translations(request: Request) -> Response:
        return await audio_task(request, "translate")


def _field(form: Any, key: str, default: str | None = None) -> str | None:
    value = form.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad_request(f"{key} must be a text field", key)
    check_text({key: value})
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


async def _read_form(
    request: Request, state: ServerState, task_name: str
) -> tuple[dict[str, Any], bytes]:
    """The checked fields of the form (task, options, format, language, file suffix) and the
    uploaded bytes."""
    config = state.config
    try:
        form = await request.form(max_files=1, max_fields=32)
    except APIError:  # over the size limit, or too slow (the guard)
        raise
    except Exception as err:  # noqa: BLE001 - a malformed body is the client's error
        raise bad_request(f"expected a multipart/form-data body with a file: {err}") from None
    try:
        check_model(
            {"model": _field(form, "model")}, config.served_model_name, config.model_aliases
        )
        fmt = _field(form, "response_format", "json") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise bad_request(
                f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}",
                "response_format",
            )
        language = _language(form, task_name)
        # ``prompt`` (OpenAI's hint of vocabulary or style) is accepted and ignored: SALMONN's
        # task prompts are fixed, and clients send it routinely (often empty)
        _field(form, "prompt")
        temperature = _field(form, "temperature")
        body: dict[str, Any] = {}
        if temperature is not None:
            try:
                body["temperature"] = float(temperature)
            except ValueError:
                raise bad_request(
                    f"temperature must be a number, got {temperature!r}", "temperature"
                ) from None
        for key in ("num_beams", "max_tokens"):  # extra fields, as chat's (the web page sends them)
            if (value := _field(form, key)) is not None:
                try:
                    body[key] = int(value)
                except ValueError:
                    raise bad_request(f"{key} must be an integer, got {value!r}", key) from None
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
    finally:
        await form.close()
    prepared = {
        "task": task,
        "options": options,
        "format": fmt,
        "language": language,
        "suffix": suffix if suffix in FORMATS else "bin",
    }
    return prepared, raw


def _ms(seconds: float) -> float:
    return round(float(seconds), 3)


def _audio_response(answer: Answer, fmt: str, task_name: str, language: str) -> Response:
    from ..jobs.writers import get_writer

    record = answer.record
    assert record is not None
    if fmt == "json":
        return JSONResponse({"text": answer.text})
    if fmt == "verbose_json":
        segments = [
            {"id": i, "start": _ms(s.start), "end": _ms(s.end), "text": s.text}  # ms, as the CLI
            for i, s in enumerate(record.segments)
        ]
        return JSONResponse(
            {
                "task": "transcribe" if task_name == "transcribe" else "translate",
                "language": language,
                "duration": None if record.duration is None else _ms(record.duration),
                "text": answer.text,
                "segments": segments,
            }
        )
    buffer = StringIO()
    with get_writer(fmt)(buffer) as writer:
        writer.write(record)
    return PlainTextResponse(buffer.getvalue())


__all__ = ["RESPONSE_FORMATS", "install"]
