"""The browser page of ``salmonn serve``: ``GET /`` and its static files, shipped as package data.

The page (``index.html``, ``style.css``, ``favicon.svg`` and the JavaScript modules ``app.js``,
``api.js``, ``formats.js``, ``recorder.js`` in ``salmonn/serve/web/``) is plain HTML, CSS and
JavaScript with no build step and nothing fetched from elsewhere; it talks only to the server's
own OpenAI-compatible endpoints, so what it shows is what the API answers. This module serves
those files under a strict Content-Security-Policy (everything from this origin only) and ``GET
/web/info``: what the page needs to know before its first request (limits, the server's default
decoding, the task prompts, whether ``/v1`` wants a key). ``--no-web-ui`` leaves all of it out
(404).
"""

from __future__ import annotations

import logging
from importlib.resources import files
from typing import Any

from ..audio.inputs import DEFAULT_EXTENSIONS
from ..jobs.tasks import EMERGENT_LANGUAGES, LANGUAGE_NAMES, TRAINED_LANGUAGES, TRANSCRIBE_LANGUAGES
from .config import ServeConfig

# file -> media type; nothing else under /web/ is served
STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "formats.js": "text/javascript; charset=utf-8",
    "recorder.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self' blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
    "Cache-Control": "no-cache",
}
# the audio tasks the page sends as chat instructions: task -> template name
CHAT_TEMPLATES = {
    "caption": "caption.audio",
    "caption.music": "caption.music",
    "ask": "ask",
    "story": "story",
    "reason": "reason",
    "reason.question": "reason.question",
}
QUESTION = "{question}"
logger = logging.getLogger(__name__)


def _read(name: str) -> bytes:
    return files(__package__).joinpath("web").joinpath(name).read_bytes()


def task_prompts() -> dict[str, str]:
    """The instruction text of each task the page sends to ``/v1/chat/completions``, as the CLI
    renders it (``{question}`` left for the page to fill in), so one-chunk answers equal the CLI's.
    A broken user prompt folder (which fails the CLI's tasks too) leaves the built-in prompts."""
    from ..errors import PromptError
    from ..jobs.templates import builtin_templates, load_templates, render

    try:
        templates = load_templates()
    except PromptError as err:
        logger.warning("the web page uses the built-in prompts: %s", err)
        templates = builtin_templates()
    prompts = {}
    for key, name in CHAT_TEMPLATES.items():
        template = templates[name]
        prompts[key] = render(template, **{v: QUESTION for v in template.variables})
    return prompts


def page_info(config: ServeConfig) -> dict[str, Any]:
    """The JSON of ``GET /web/info`` (no secrets: the limits and defaults every error names)."""
    generation = config.generation
    targets = {**TRAINED_LANGUAGES, **EMERGENT_LANGUAGES, **LANGUAGE_NAMES}
    return {
        "api_key_required": bool(config.api_key),
        "max_upload_bytes": config.max_upload_bytes,
        "max_audio_seconds": config.max_audio_seconds,
        "chunk_seconds": config.chunking.max_seconds,
        "decoding": {
            "num_beams": generation.num_beams,
            "max_tokens": generation.max_new_tokens,
            "do_sample": generation.do_sample,
            "temperature": generation.temperature,
        },
        "tasks": task_prompts(),
        "transcribe_languages": list(TRANSCRIBE_LANGUAGES),
        "translate_languages": {code: targets[code] for code in sorted(targets)},
        "trained_translation": sorted(TRAINED_LANGUAGES),
        "formats": sorted(ext.lstrip(".") for ext in DEFAULT_EXTENSIONS),
    }


def install_web_ui(app: Any, config: ServeConfig) -> None:
    """Add ``GET /``, ``GET /web/info`` and ``GET /web/{file}`` to the FastAPI ``app`` (the files
    and the info are read once, here)."""
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    page = _read("index.html")
    assets = {name: (_read(name), kind) for name, kind in STATIC.items()}
    info = page_info(config)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=HEADERS)

    @app.get("/web/info", include_in_schema=False)
    async def web_info() -> Response:
        return JSONResponse(info, headers=HEADERS)

    @app.api_route("/web/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404, "Not Found")
        body, kind = assets[name]
        return Response(body, media_type=kind, headers=HEADERS)
