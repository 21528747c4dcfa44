"""OpenAI request fields -> salmonn tasks and decoding options; salmonn answers -> OpenAI responses.

When a request samples (the README's "Serving" section says the same):

* no sampling field in the request: the server's decoding (its flags; by default the original's
  4-beam search, as ``salmonn`` on the command line);
* ``temperature: 0``: no sampling, with the server's beam width;
* ``temperature > 0`` or ``do_sample: true``: sampling with that temperature; one beam unless the
  request gives ``num_beams`` (then beam-sample);
* ``do_sample: false``: never samples, whatever the temperature.

``top_p``, ``top_k`` and ``seed`` alone never turn sampling on; they apply when it is on. With a
``seed`` every chunk draws from its own generator seeded with it, so a sampled answer is the CLI's
(``--do-sample --seed N``) whatever the server batches it with.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..config import GenerationOptions
from ..errors import ConfigError
from .errors import bad_request, model_not_found
from .media import AudioFile, check_format, decode_base64, from_url, save

# request field -> GenerationOptions field, for the fields taken as they are
_NUMERIC = {
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "seed": ("seed", int),
    "num_beams": ("num_beams", int),
    "repetition_penalty": ("repetition_penalty", float),
    "length_penalty": ("length_penalty", float),
}
_UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "audio", "prediction")


# where a request's number stops making sense (or sound arithmetic) on this server; inclusive
_RANGES: dict[str, tuple[float, float]] = {
    "top_k": (0, 2**31 - 1),
    "seed": (0, 2**64 - 1),  # what torch.Generator.manual_seed takes
    "num_beams": (1, 16),
    "repetition_penalty": (0.01, 100.0),
    "length_penalty": (-10.0, 10.0),
    "temperature": (0.0, 100.0),
}
MIN_TEMPERATURE = 0.01  # below it (and above 0) logits / temperature overflows: 400


def _number(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"{name} must be a number, got {value!r}", name)
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_request(f"{name} must be a finite number, got {value!r}", name)
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise bad_request(f"{name} must be an integer, got {value!r}", name)
        value = int(value)
    else:
        value = float(value)
    low, high = _RANGES.get(name, (-math.inf, math.inf))
    if not low <= value <= high:
        raise bad_request(f"{name} must be in [{low:g}, {high:g}], got {value!r}", name)
    return value


def decoding_options(body: dict[str, Any], defaults: GenerationOptions) -> GenerationOptions:
    """The request's decoding: ``defaults`` with the request's fields applied (see module doc)."""
    overrides: dict[str, Any] = {}
    for name in ("max_completion_tokens", "max_tokens"):
        value = _number(body, name, int)
        if value is not None:
            if value < 1:
                raise bad_request(f"{name} must be >= 1, got {value}", name)
            overrides.setdefault("max_new_tokens", value)
    for name, (target, kind) in _NUMERIC.items():
        value = _number(body, name, kind)
        if value is not None:
            overrides[target] = value
    do_sample = body.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise bad_request(f"do_sample must be true or false, got {do_sample!r}", "do_sample")
    temperature = _number(body, "temperature", float)
    if temperature is not None and 0 < temperature < MIN_TEMPERATURE:
        raise bad_request(
            f"temperature must be 0 or at least {MIN_TEMPERATURE}, got {temperature!r}",
            "temperature",
        )
    if temperature is not None and temperature > 0:
        overrides["temperature"] = temperature
    if do_sample is None and temperature is not None:
        do_sample = temperature > 0
    if do_sample is not None:
        overrides["do_sample"] = do_sample
        if do_sample and "num_beams" not in overrides and not defaults.do_sample:
            overrides["num_beams"] = 1
    try:
        return defaults.with_overrides(**overrides)
    except ConfigError as err:
        field = str(err).split(" ", 1)[0]
        param = {"max_new_tokens": "max_tokens"}.get(field, field)
        raise bad_request(str(err), param) from None


def check_text(body: Any) -> None:
    """400 naming the field when a string of the parsed JSON ``body`` cannot be UTF-8 (a lone
    surrogate such as ``"\\ud800"``); walks without recursion (the body may be deeply nested)."""
    todo: list[tuple[Any, str]] = [(body, "")]
    while todo:
        value, where = todo.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise bad_request(
                    f"{where or 'the body'} holds a lone surrogate (not UTF-8 text)",
                    where or None,
                ) from None
        elif isinstance(value, dict):
            for key, item in value.items():
                todo.append((key, where or "the body"))
                todo.append((item, f"{where}.{key}" if where else str(key)))
        elif isinstance(value, list):
            todo.extend((item, f"{where}[{i}]") for i, item in enumerate(value))


def check_model(body: dict[str, Any], served: str, aliases: tuple[str, ...] = ()) -> None:
    """404 when the request names a model other than the served one (no name: the served one)."""
    name = body.get("model")
    if name not in (None, "", served, *aliases):
        raise model_not_found(str(name), served)


@dataclass
class ChatRequest:
    """A parsed chat request: the instruction, the audio (or ``None``), decoding, streaming."""

    instruction: str
    audio: AudioFile | None
    options: GenerationOptions
    stream: bool
    include_usage: bool


def parse_chat(
    body: Any,
    defaults: GenerationOptions,
    *,
    served: str,
    allowed_dir: str | None,
    max_bytes: int,
    aliases: tuple[str, ...] = (),
) -> ChatRequest:
    """Check a ``/v1/chat/completions`` body. The caller must ``cleanup()`` the audio it returns.

    The instruction is the text of the last message (which must come from the user); its audio part
    is the audio. Earlier messages (system, assistant, older user turns) are not shown to the model:
    SALMONN v1 was trained single-turn.
    """
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    check_model(body, served, aliases)
    _check_unsupported(body)
    options = decoding_options(body, defaults)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false", "stream")
    stream_options = body.get("stream_options") or {}
    include_usage = bool(isinstance(stream_options, dict) and stream_options.get("include_usage"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        raise bad_request(
            "the last message must come from the user (SALMONN answers single-turn)", "messages"
        )
    texts, audio_parts = _split_content(last.get("content"), len(messages) - 1)
    instruction = "\n".join(t for t in texts if t.strip()).strip()
    if not instruction:
        raise bad_request("the last user message has no text instruction", "messages")
    if len(audio_parts) > 1:
        raise bad_request("send one audio part per request", "messages")
    audio = None
    if audio_parts:
        audio = _audio(audio_parts[0], allowed_dir, max_bytes)
    return ChatRequest(instruction, audio, options, stream, include_usage)


def _check_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n not in (None, 1):
        raise bad_request(f"n must be 1 (one answer per request), got {n!r}", "n")
    for name in _UNSUPPORTED:
        if body.get(name):
            raise bad_request(f"{name} is not supported by this server", name)
    if body.get("stop"):
        raise bad_request("stop sequences are not supported; use max_tokens", "stop")
    if body.get("logprobs"):
        raise bad_request("logprobs are not supported", "logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, float) not in (None, 0.0):
            raise bad_request(f"{name} is not supported; use repetition_penalty", name)
    fmt = body.get("response_format")
    if fmt and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise bad_request("only the text response format is supported", "response_format")


def _split_content(content: Any, index: int) -> tuple[list[str], list[dict[str, Any]]]:
    where = f"messages[{index}].content"
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of parts", where)
    texts, audio = [], []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{where}[{i}].text must be a string", f"{where}[{i}].text")
            texts.append(part["text"])
        elif kind in ("input_audio", "audio_url"):
            audio.append({**part, "_param": f"{where}[{i}].{kind}"})
        else:
            shown = kind if isinstance(kind, str) else type(kind).__name__
            raise bad_request(
                f"{where}[{i}]: unsupported part type {shown!r} (text, input_audio, audio_url)",
                where,
            )
    return texts, audio


def _audio(part: dict[str, Any], allowed_dir: str | None, max_bytes: int) -> AudioFile:
    param = part["_param"]
    if part["type"] == "input_audio":
        spec = part.get("input_audio")
        if not isinstance(spec, dict):
            raise bad_request(f"{param} must be an object with data and format", param)
        fmt = check_format(spec.get("format"), f"{param}.format")
        raw = decode_base64(spec.get("data"), f"{param}.data", max_bytes)
        return save(raw, fmt)
    spec = part.get("audio_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    return from_url(url, allowed_dir, f"{param}.url", max_bytes)


# -- responses --------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage_dict(usage: Any) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def chat_completion(answer: Any, model: str) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": answer.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage_dict(answer.usage),
    }


def chat_chunk(
    cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
