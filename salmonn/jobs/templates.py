"""Prompt templates as data: ``prompts/*.json`` (package ``salmonn.prompt_data``) and a user folder.

A template file is::

    {"task": "caption",
     "templates": {
       "caption.audio": {"text": "<Speech><SpeechHere></Speech> Please describe the audio.",
                         "description": "...", "summary": "summary.caption"}}}

Template keys: ``text`` (required), ``description``, ``kind`` (``"audio"``, the default, or
``"text"``) and ``summary`` (the text template that merges the per-chunk answers of long audio).
Every name is the file's ``task`` or starts with ``task + "."``. Placeholders are ``{identifier}``;
``{{`` and ``}}`` are literal braces; anything else inside braces is an error. Audio templates hold
exactly one ``<SpeechHere>``, text templates none.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..constants import SPEECH_PLACEHOLDER, SPEECH_PREFIX
from ..errors import PromptError
from .records import Segment

BUILTIN_PACKAGE = "salmonn.prompt_data"
KINDS = ("audio", "text")
_FILE_KEYS = {"task", "templates"}
_TEMPLATE_KEYS = {"text", "description", "kind", "summary"}
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class PromptTemplate:
    """One validated template.

    Attributes:
        name: dotted name, e.g. ``"transcribe.en"``.
        text: the template text.
        kind: ``"audio"`` (exactly one ``<SpeechHere>``) or ``"text"`` (none; the long-audio
            summary pass).
        description: one line for ``salmonn prompts``.
        variables: names of the ``{placeholders}`` in order of first appearance.
        source: the file it came from.
        summary: name of the text template that merges the per-chunk answers of long audio;
            ``None`` means the chunk answers are the output, in order (transcription, translation).
    """

    name: str
    text: str
    kind: str
    description: str
    variables: tuple[str, ...]
    source: str
    summary: str | None = None


def parse_template(
    name: str,
    text: str,
    *,
    kind: str = "audio",
    description: str = "",
    source: str = "<string>",
    summary: str | None = None,
) -> PromptTemplate:
    """Validate ``text`` and build a :class:`PromptTemplate`.

    Raises:
        PromptError: naming the template and what is wrong with it.
    """
    where = f"template {name!r} ({source})"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise PromptError(
            f"{where}: bad name; use letters, digits, '_' or '-', parts joined by '.'"
        )
    if not isinstance(text, str) or not text.strip():
        raise PromptError(f"{where}: 'text' must be a non-empty string")
    if kind not in KINDS:
        raise PromptError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(description, str):
        raise PromptError(f"{where}: 'description' must be a string")
    if summary is not None and (not isinstance(summary, str) or not _NAME_RE.match(summary)):
        raise PromptError(f"{where}: 'summary' must be a template name, got {summary!r}")
    count = text.count(SPEECH_PLACEHOLDER)
    if kind == "audio" and count != 1:
        raise PromptError(
            f"{where}: an audio template needs exactly one {SPEECH_PLACEHOLDER}, found {count} "
            f"(write it as {SPEECH_PREFIX!r} followed by the instruction)"
        )
    if kind == "text" and count:
        raise PromptError(f"{where}: a text template must not contain {SPEECH_PLACEHOLDER}")
    if kind == "text" and summary is not None:
        raise PromptError(f"{where}: only audio templates have a 'summary'")
    parts = _parse(text, where)
    variables = tuple(dict.fromkeys(value for is_var, value in parts if is_var))
    return PromptTemplate(name, text, kind, description, variables, source, summary)


def render(template: PromptTemplate, **variables: str) -> str:
    """The template text with each ``{name}`` replaced by its value, inserted verbatim.

    Raises:
        PromptError: a variable is missing or unknown, a value is not a string, or a value of an
            audio template contains ``<SpeechHere>``.
    """
    missing = [v for v in template.variables if v not in variables]
    extra = sorted(set(variables) - set(template.variables))
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing variable(s) {', '.join(missing)}")
        if extra:
            problems.append(f"unknown variable(s) {', '.join(extra)}")
        takes = ", ".join(template.variables) or "no variables"
        raise PromptError(f"template {template.name!r}: {'; '.join(problems)} (it takes {takes})")
    for key, value in variables.items():
        if not isinstance(value, str):
            raise PromptError(f"template {template.name!r}: value of {key} must be a string")
        if template.kind == "audio" and SPEECH_PLACEHOLDER in value:
            raise PromptError(
                f"template {template.name!r}: the value of {key} "
                f"must not contain {SPEECH_PLACEHOLDER}"
            )
    parts = _parse(template.text, f"template {template.name!r}")
    return "".join(variables[value] if is_var else value for is_var, value in parts)


def load_templates(user_dir: str | os.PathLike[str] | None = None) -> dict[str, PromptTemplate]:
    """Built-in templates, extended or overridden by the ``*.json`` files of the user folder.

    ``user_dir`` ``None`` means :func:`user_prompt_dir` (which may be none). A user template with
    a built-in's name replaces it and must keep its kind and variables (the CLI fills them). The
    result is sorted by name.
    """
    templates = dict(builtin_templates())
    folder = user_prompt_dir() if user_dir is None else Path(user_dir)
    if folder is not None:
        if not folder.is_dir():
            raise PromptError(f"prompt folder {folder} does not exist or is not a folder")
        user: dict[str, PromptTemplate] = {}
        for path in sorted(folder.glob("*.json")):
            _add_all(user, _parse_file(path.read_text(encoding="utf-8"), str(path)))
        for name, new in user.items():
            old = templates.get(name)
            if old is not None:
                _check_override(old, new)
            templates[name] = new
    _check_summaries(templates)
    return dict(sorted(templates.items()))


def builtin_templates() -> dict[str, PromptTemplate]:
    """The templates shipped in ``salmonn.prompt_data`` (read with importlib.resources), by name."""
    return dict(_builtin_templates())


@lru_cache(maxsize=1)
def _builtin_templates() -> dict[str, PromptTemplate]:
    templates: dict[str, PromptTemplate] = {}
    files = sorted(
        (f for f in resources.files(BUILTIN_PACKAGE).iterdir() if f.name.endswith(".json")),
        key=lambda f: f.name,
    )
    if not files:
        raise PromptError(
            f"no prompt files found in the package {BUILTIN_PACKAGE} (broken install?)"
        )
    for entry in files:
        _add_all(
            templates,
            _parse_file(entry.read_text(encoding="utf-8"), f"{BUILTIN_PACKAGE}/{entry.name}"),
        )
    _check_summaries(templates)
    return templates


def get_template(name: str, user_dir: str | os.PathLike[str] | None = None) -> PromptTemplate:
    """The template called ``name``; unknown: :class:`PromptError` naming close ones."""
    templates = load_templates(user_dir)
    if name in templates:
        return templates[name]
    close = [n for n in templates if n.startswith(name + ".")]
    close += [
        n for n in difflib.get_close_matches(name, templates, n=5, cutoff=0.6) if n not in close
    ]
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(templates)}"
    raise PromptError(f"unknown prompt template {name!r}{hint}")


def user_prompt_dir() -> Path | None:
    """``$SALMONN_PROMPTS_DIR`` when set, else ``$XDG_CONFIG_HOME/salmonn/prompts`` (default
    ``~/.config/salmonn/prompts``) when that folder exists, else ``None``."""
    explicit = os.environ.get("SALMONN_PROMPTS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    folder = Path(config_home).expanduser() / "salmonn" / "prompts"
    return folder if folder.is_dir() else None


def format_time(seconds: float) -> str:
    """``mm:ss`` (``h:mm:ss`` from one hour), the time format of the summary pass."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def format_segments(segments: Iterable[Segment]) -> str:
    """The ``{segments}`` value of the summary templates: a ``[mm:ss-mm:ss] text`` line a segment.

    Line breaks inside a text become spaces; segments with empty text are left out.
    """
    lines = []
    for seg in segments:
        text = " ".join(seg.text.split())
        if text:
            lines.append(f"[{format_time(seg.start)}-{format_time(seg.end)}] {text}")
    return "\n".join(lines)


def instruction_text(prompt: str) -> str:
    """A rendered audio prompt without ``<Speech><SpeechHere></Speech>`` (for ``{task_prompt}``)."""
    return prompt.replace(SPEECH_PREFIX.strip(), " ").replace(SPEECH_PLACEHOLDER, " ").strip()


def render_summary(
    summary: PromptTemplate, segments: Iterable[Segment], prompt: str, **variables: str
) -> str:
    """Render the long-audio summary pass.

    Args:
        summary: the text template named by the audio template's ``summary``.
        segments: the per-chunk answers with their times; they fill ``{segments}``.
        prompt: the rendered per-chunk prompt; it fills ``{task_prompt}`` (without the speech tags).
        variables: the audio template's variables (``question``, ...); those the summary does not
            take are dropped.
    """
    available = {
        **variables,
        "segments": format_segments(segments),
        "task_prompt": instruction_text(prompt),
    }
    return render(summary, **{k: v for k, v in available.items() if k in summary.variables})


def _parse(text: str, where: str) -> list[tuple[bool, str]]:
    """Split ``text`` into (is_variable, value) parts; ``{{``/``}}`` in literal parts are undone."""
    parts: list[tuple[bool, str]] = []
    pos = 0
    for match in _TOKEN_RE.finditer(text):
        if match.start() > pos:
            parts.append((False, text[pos : match.start()]))
        pos = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            parts.append((False, token[0]))
        elif match.group(1) is not None and _IDENT_RE.match(match.group(1)):
            parts.append((True, match.group(1)))
        else:
            raise PromptError(
                f"{where}: bad placeholder {token!r} at character {match.start()}; use {{name}} "
                "with a plain identifier, and {{ or }} for literal braces"
            )
    if pos < len(text):
        parts.append((False, text[pos:]))
    return parts


def _parse_file(content: str, source: str) -> list[PromptTemplate]:
    try:
        data = json.loads(content, object_pairs_hook=_no_duplicates)
    except (json.JSONDecodeError, ValueError) as err:
        raise PromptError(f"{source}: not valid JSON: {err}") from err
    _check_keys(data, _FILE_KEYS, {"task", "templates"}, source)
    task, entries = data["task"], data["templates"]
    if not isinstance(task, str) or not _NAME_RE.match(task):
        raise PromptError(f"{source}: 'task' must be a name, got {task!r}")
    if not isinstance(entries, dict) or not entries:
        raise PromptError(f"{source}: 'templates' must be a non-empty object")
    result = []
    for name, entry in entries.items():
        where = f"{source}: template {name!r}"
        if name != task and not name.startswith(task + "."):
            raise PromptError(
                f"{where}: names in this file must be {task!r} or start with {task + '.'!r}"
            )
        _check_keys(entry, _TEMPLATE_KEYS, {"text"}, where)
        result.append(
            parse_template(
                name,
                entry["text"],
                kind=entry.get("kind", "audio"),
                description=entry.get("description", ""),
                source=source,
                summary=entry.get("summary"),
            )
        )
    return result


def _check_keys(obj: Any, allowed: set[str], required: set[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise PromptError(f"{where}: expected a JSON object")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise PromptError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    missing = sorted(required - set(obj))
    if missing:
        raise PromptError(f"{where}: missing key(s) {', '.join(missing)}")


def _no_duplicates(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _add_all(into: dict[str, PromptTemplate], templates: Iterable[PromptTemplate]) -> None:
    for tpl in templates:
        if tpl.name in into:
            raise PromptError(
                f"template {tpl.name!r} is defined twice: {into[tpl.name].source} and {tpl.source}"
            )
        into[tpl.name] = tpl


def _check_override(old: PromptTemplate, new: PromptTemplate) -> None:
    where = f"template {new.name!r} ({new.source}) overrides {old.source}"
    if new.kind != old.kind:
        raise PromptError(f"{where}: it must stay a {old.kind} template")
    if set(new.variables) != set(old.variables):
        want = ", ".join(old.variables) or "none"
        raise PromptError(f"{where}: it must use the same variables ({want})")


def _check_summaries(templates: dict[str, PromptTemplate]) -> None:
    for tpl in templates.values():
        if tpl.summary is None:
            continue
        target = templates.get(tpl.summary)
        if target is None or target.kind != "text":
            raise PromptError(
                f"template {tpl.name!r} ({tpl.source}): "
                f"summary {tpl.summary!r} is not a text template"
            )
        if "segments" not in target.variables:
            raise PromptError(
                f"summary template {target.name!r} ({target.source}) lacks {{segments}}"
            )
        unknown = set(target.variables) - {"segments", "task_prompt", *tpl.variables}
        if unknown:
            raise PromptError(
                f"summary template {target.name!r} ({target.source}) used by {tpl.name!r} takes "
                f"{', '.join(sorted(unknown))}, which only {{segments}}, {{task_prompt}} and the "
                f"variables of {tpl.name!r} can fill"
            )
