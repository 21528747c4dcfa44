"""The OpenAPI description of the server's real bodies and answers (``/openapi.json``).

The routes read their bodies themselves (to bound and check them, see :mod:`salmonn.serve.guard`),
so FastAPI cannot infer them: each route passes ``openapi_extra=...`` from here. The documents say
what the routes accept and every answer they give (400/401/403/404/408/413/415/503 in OpenAI's
error shape, ``/metrics`` as Prometheus text), so a schema-driven fuzzer such as Schemathesis can
test the server against them.
"""

from __future__ import annotations

from typing import Any

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_REASONS = {
    "400": "A field that cannot be used (the message and param name it)",
    "401": "Missing or wrong API key",
    "403": "A Host or Origin this server does not answer",
    "404": "Another model than the served one",
    "408": "The body did not arrive in time",
    "413": "A body, upload or audio over the server's limits",
    "415": "A body of the wrong Content-Type",
    "503": "Loading, busy (queue full) or shutting down; see Retry-After",
}


def errors(*codes: str) -> dict[str, Any]:
    """Error responses in OpenAI's shape for the given status codes."""
    return {
        code: {"description": _REASONS[code], "content": {"application/json": {"schema": ERROR}}}
        for code in codes
    }


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_NUMBER = {"type": ["number", "null"]}
_INTEGER = {"type": ["integer", "null"]}
_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": ["text", "input_audio", "audio_url"]},
        "text": {"type": "string"},
        "input_audio": {
            "type": "object",
            "properties": {"data": {"type": "string"}, "format": {"type": "string"}},
        },
        "audio_url": {"type": "object", "properties": {"url": {"type": "string"}}},
    },
}
CHAT_REQUEST = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"type": "string", "enum": ["system", "user", "assistant"]},
                    "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": _PART}]},
                },
            },
        },
        "max_tokens": {**_INTEGER, "minimum": 1},
        "max_completion_tokens": {**_INTEGER, "minimum": 1},
        "temperature": {
            "anyOf": [{"const": 0}, {"type": "number", "minimum": 0.01, "maximum": 100}]
        },
        "top_p": {**_NUMBER, "exclusiveMinimum": 0, "maximum": 1},
        "top_k": {**_INTEGER, "minimum": 0},
        "seed": {**_INTEGER, "minimum": 0, "maximum": 2**64 - 1},
        "num_beams": {**_INTEGER, "minimum": 1, "maximum": 16},
        "do_sample": {"type": ["boolean", "null"]},
        "repetition_penalty": {**_NUMBER, "minimum": 0.01, "maximum": 100},
        "length_penalty": {**_NUMBER, "minimum": -10, "maximum": 10},
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {
            "type": ["object", "null"],
            "properties": {"include_usage": {"type": "boolean"}},
        },
        "n": {**_INTEGER, "const": 1},
    },
}
_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        k: {"type": "integer"} for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    },
}
CHAT_RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "usage": _USAGE,
    },
}


def _served(schema: dict[str, Any], served: str) -> dict[str, Any]:
    """``schema`` (an object's) with its ``model`` property naming the served model."""
    properties = {**schema["properties"], "model": {"type": "string", "enum": [served]}}
    return {**schema, "properties": properties}


def chat(served: str) -> dict[str, Any]:
    """The JSON body and answers of ``/v1/chat/completions`` (``served``: the model's id)."""
    return {
        **CHAT,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _served(CHAT_REQUEST, served)}},
        },
    }


CHAT = {
    "responses": {
        "200": {
            "description": "The answer; with stream: true, server-sent chat.completion.chunk events",
            "content": {
                "application/json": {"schema": CHAT_RESPONSE},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        },
        **errors("400", "401", "403", "404", "408", "413", "415", "503"),
    },
}


def audio(task: str, served: str) -> dict[str, Any]:
    """The multipart form and answers of ``/v1/audio/{task}`` (``served``: the model's id)."""
    fields: dict[str, Any] = {
        "file": {"type": "string", "format": "binary"},
        "model": {"type": "string", "enum": [served]},
        "language": {"type": "string"},
        "prompt": {"type": "string"},
        "response_format": {
            "type": "string",
            "enum": ["json", "text", "srt", "vtt", "verbose_json"],
        },
        "temperature": {"type": "number"},
    }
    if task == "translations":
        fields["to_language"] = {"type": "string"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": fields}
                }
            },
        },
        "responses": {
            "200": {
                "description": "The text (json, verbose_json) or a subtitle file (text, srt, vtt)",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["text"],
                            "properties": {"text": {"type": "string"}},
                        }
                    },
                    "text/plain": {"schema": {"type": "string"}},
                },
            },
            **errors("400", "401", "403", "404", "408", "413", "415", "503"),
        },
    }


_MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}
MODELS = {
    "responses": {
        "200": _json(
            {"type": "object", "properties": {"data": {"type": "array", "items": _MODEL}}}
        ),
        **errors("401", "403"),
    }
}
MODEL = {"responses": {"200": _json(_MODEL), **errors("401", "403", "404")}}
_STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
HEALTH = {
    "responses": {
        "200": _json(_STATUS, "Alive and loaded; status says ok or saturated"),
        "503": _json(_STATUS, "Loading or shutting down"),
        **errors("403"),
    }
}
READY = {
    "responses": {
        "200": _json(_STATUS, "Ready for a request"),
        "503": _json(_STATUS, "Loading, shutting down, or every queue slot taken"),
        **errors("403"),
    }
}
METRICS = {
    "responses": {
        "200": {
            "description": "Prometheus text exposition",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **errors("403"),
    }
}
