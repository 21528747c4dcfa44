"""The chat route, ``POST /v1/chat/completions``: one instruction, at most one audio part, an answer.

The body is read whole (the guard bounds its size and time), checked, and only then admitted:
the request's :class:`~salmonn.serve.admission.Ticket` holds its queue slot and its saved audio
until its work ends. The prompt must fit the model's context with room for one token
(``context_length_exceeded`` otherwise, counting the audio's 88 positions), and ``max_tokens`` is
bounded by what the prompt leaves. Answers come whole, or with ``stream: true`` as server-sent
events (token by token where the decoding allows it). A client that leaves cancels the request's
work at the model worker's next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..jobs.tasks import make_task
from . import schema
from .admission import DISCONNECTED, Ticket
from .deltas import DeltaText, TokenFeed
from .errors import APIError, bad_request, internal
from .guard import CHAT
from .openai_api import chat_chunk, chat_completion, check_text, new_id, parse_chat, usage_dict
from .service import Answer
from .state import ServerState, retrieve

logger = logging.getLogger(__name__)


async def json_body(request: Request) -> Any:
    """The parsed JSON body (400 when it is not JSON, or nested too deep to parse)."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_request(f"the body is not valid JSON: {err}") from None
    except RecursionError:
        raise bad_request("the body is not valid JSON: nested too deep") from None
    check_text(body)
    return body


def install(app: FastAPI, state: ServerState) -> None:
    """Add the route to ``app``."""
    config = state.config
    name = config.served_model_name

    @app.post(CHAT, openapi_extra=schema.chat(name))
    async def chat(request: Request) -> Response:
        service = state.ready()
        body = await json_body(request)
        ticket = state.admit()
        try:
            parsed = parse_chat(
                body,
                config.generation,
                served=name,
                allowed_dir=config.allowed_local_media_path,
                max_bytes=config.max_upload_bytes,
                aliases=config.model_aliases,
            )
            ticket.hold(parsed.audio)
            task = None if parsed.audio is None else make_task("prompt", text=parsed.instruction)
            asked = any(body.get(k) is not None for k in ("max_tokens", "max_completion_tokens"))
            options = await asyncio.get_running_loop().run_in_executor(
                state.executor, service.fit_prompt, parsed.instruction, task, parsed.options, asked
            )
        except BaseException:
            ticket.release()
            raise
        audio = parsed.audio

        def work(on_tokens: TokenFeed | None = None) -> Answer:
            try:
                if audio is None or task is None:
                    return service.run_text(
                        parsed.instruction, options, on_tokens, ticket.cancelled
                    )
                return service.run_task(task, audio, options, on_tokens, ticket.cancelled)
            finally:
                ticket.release()

        if not parsed.stream:
            answer = await state.run(ticket, work, request.receive)
            return JSONResponse(chat_completion(answer, name))
        deltas = None
        if service.streams_tokens(options):
            assert service.decode_stable is not None
            # an audio answer is the chunk's text stripped (the engine's record text)
            deltas = DeltaText(service.decode_stable, strip=audio is not None)
        return StreamingResponse(
            _chat_events(state, ticket, work, parsed.include_usage, deltas),
            media_type="text/event-stream",
        )


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _chat_events(
    state: ServerState,
    ticket: Ticket,
    work: Callable[[TokenFeed | None], Answer],
    include_usage: bool,
    deltas: DeltaText | None,
) -> AsyncIterator[str]:
    """SSE chunks: the role, the answer, the finish reason, (usage), ``[DONE]``.

    With ``deltas`` (greedy or sampling; the answer is one generation's text) the answer comes as
    the tokens are decoded, each delta the text that no later token can change, and the rest at
    the end; otherwise as one delta once the engine has it (beam search knows its answer only at
    the end; the final text of long audio exists only after the whole-recording pass). A request
    cancelled by the shutdown ends with its error event and ``[DONE]``; one whose client left
    (the generator is closed before its end) has its work cancelled.
    """
    cid, created, name = new_id("chatcmpl"), int(time.time()), state.config.served_model_name
    finished = False
    yield _sse(chat_chunk(cid, created, name, {"role": "assistant", "content": ""}))
    loop = asyncio.get_running_loop()
    feed = TokenFeed(loop) if deltas is not None else None
    future = loop.run_in_executor(state.executor, work, feed)
    future.add_done_callback(retrieve)
    cancelled = asyncio.ensure_future(ticket.wait_cancelled())
    try:
        if feed is not None and deltas is not None:
            future.add_done_callback(lambda _: feed.end())
            cancelled.add_done_callback(lambda _: feed.end())
            while (ids := await feed.next()) is not None:
                if text := deltas.update(ids):
                    yield _sse(chat_chunk(cid, created, name, {"content": text}))
        racing: set[asyncio.Future[Any]] = {future, cancelled}
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        error = ticket.error()
        if error is not None and not (future.done() and future.exception() is None):
            finished = True
            yield _sse(error.body())
            yield "data: [DONE]\n\n"
            return
        answer = future.result()
    except APIError as err:
        finished = True
        yield _sse(err.body())
        yield "data: [DONE]\n\n"
        return
    except Exception as exc:
        finished = True
        logger.error("streamed request failed", exc_info=exc)
        yield _sse(internal().body())
        yield "data: [DONE]\n\n"
        return
    finally:
        cancelled.cancel()
        if feed is not None:
            feed.close()
        if not finished and not future.done():  # the client left: stop the work
            state.cancel(ticket, DISCONNECTED)
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
