"""Benchmark manifests: the five formats read into :class:`Item` lists and written back.

=============  ===============================================================  ===============
format         entries                                                          written back as
=============  ===============================================================  ===============
``jsonl``      ours, one object a line: ``audio``, ``reference`` (text or       ``prediction``
               list), optional ``id``, ``task``, ``question``, ``choices``,
               ``answer``
``nemo``       NeMo / Open ASR Leaderboard JSONL: ``audio_filepath``, ``text``  ``pred_text``
``salmonn``    the original's annotation JSON ``{"annotation": [{"path",        ``prediction``
               "text", "task", "Q"}]}``
``mmau``       MMAU's JSON list: ``id``, ``audio_id``, ``question``,            ``model_output``
               ``choices``, ``answer``
``air-bench``  AIR-Bench Foundation meta JSON: ``path``, ``question``,          ``response``
               ``choice_a``..``choice_d``, ``answer_gt``, ``task_name``,
               ``dataset_name``, ``uniq_id``
=============  ===============================================================  ===============

Relative audio paths are relative to the manifest's folder (AIR-Bench's to
``<folder>/<task_name>_<dataset_name>/`` when that file exists, as its release lays them out).
:func:`read_manifest` checks every entry and collects *all* problems, each naming the file, the line
(JSONL) or entry (JSON) number and the field, before anything runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

FORMATS = ("jsonl", "nemo", "salmonn", "mmau", "air-bench")
WRITE_BACK_FIELD = {
    "jsonl": "prediction",
    "nemo": "pred_text",
    "salmonn": "prediction",
    "mmau": "model_output",
    "air-bench": "response",
}
_AIR_CHOICES = ("choice_a", "choice_b", "choice_c", "choice_d")


@dataclass
class Item:
    """One evaluation item.

    Attributes:
        id: unique within the manifest (the entry's own id, else its line/entry number).
        audio: the audio file to open.
        reference: the reference text, or a list of references (captions, BLEU).
        task: one of the six task names or a template name; ``None``: the run's default.
        question: the question (``ask``, QA templates, multiple choice).
        choices: the options of a multiple-choice item.
        answer: the right choice (its text or its letter).
        variables: further template variables (the original's ``Q`` of slot filling).
        number: line (JSONL) or entry (JSON) number, 1-based.
    """

    id: str
    audio: str
    reference: str | list[str] | None = None
    task: str | None = None
    question: str | None = None
    choices: list[str] | None = None
    answer: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    number: int = 0


@dataclass
class Manifest:
    """A read manifest: its items and what is needed to write it back."""

    path: Path
    fmt: str
    items: list[Item]
    entries: list[dict[str, Any]]  # the original objects, one per item
    container: Any = None  # the original JSON document (salmonn's {"annotation": [...]})


class ManifestError(ConfigError):
    """A manifest with bad entries; ``problems`` lists them all (one line each)."""

    def __init__(self, problems: list[str]) -> None:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(problems[0] + more)
        self.problems = problems


def detect_format(path: Path) -> str:
    """The format of the manifest at ``path``, from its extension and its first entry."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl" or not text.lstrip().startswith(("[", "{")):
        first = next((line for line in text.splitlines() if line.strip()), "{}")
        try:
            return "nemo" if "audio_filepath" in json.loads(first) else "jsonl"
        except (json.JSONDecodeError, TypeError):
            return "jsonl"
    try:
        document = json.loads(text)
    except json.JSONDecodeError:  # several JSON objects, one a line
        return "jsonl"
    if isinstance(document, dict):
        return "salmonn" if "annotation" in document else "jsonl"
    first_item = document[0] if document and isinstance(document[0], dict) else {}
    if "audio_id" in first_item:
        return "mmau"
    if "answer_gt" in first_item or "choice_a" in first_item:
        return "air-bench"
    return "mmau" if "choices" in first_item else "salmonn"


def read_manifest(path: str | os.PathLike[str], fmt: str = "auto") -> Manifest:
    """Read and check a manifest.

    Raises:
        ConfigError: an unreadable file or an unknown format.
        ManifestError: bad entries (all of them listed in ``problems``).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such manifest file")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown manifest format {fmt!r}; choose from {', '.join(FORMATS)}")
    problems: list[str] = []
    container = None
    if fmt in ("jsonl", "nemo"):
        entries = _jsonl_entries(path, problems)
    else:
        try:
            container = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not a JSON document: {err}") from None
        listed = (
            container.get("annotation")
            if fmt == "salmonn" and isinstance(container, dict)
            else container
        )
        if not isinstance(listed, list):
            want = '{"annotation": [...]}' if fmt == "salmonn" else "a JSON list of objects"
            raise ConfigError(f"{path}: expected {want}")
        entries = [(i, e) for i, e in enumerate(listed, 1)]
    where = "line" if fmt in ("jsonl", "nemo") else "entry"
    items, kept = [], []
    reader = _READERS[fmt]
    for number, entry in entries:
        if not isinstance(entry, dict):
            problems.append(f"{path}: {where} {number}: not a JSON object")
            continue
        try:
            item = reader(entry, number, path.parent)
        except _Bad as err:
            problems.append(f"{path}: {where} {number}: {err}")
            continue
        if not os.path.isfile(item.audio):
            problems.append(f"{path}: {where} {number}: audio file not found: {item.audio}")
            continue
        items.append(item)
        kept.append(entry)
    seen: dict[str, int] = {}
    for item in items:
        if item.id in seen:
            problems.append(
                f"{path}: {where} {item.number}: id {item.id!r} repeats {where} {seen[item.id]}"
            )
        seen.setdefault(item.id, item.number)
    if problems:
        raise ManifestError(sorted(problems, key=_number_of))
    if not items:
        raise ConfigError(f"{path}: the manifest holds no entries")
    return Manifest(path, fmt, items, kept, container)


def write_back(manifest: Manifest, answers: dict[str, str | None], target: Path) -> Path:
    """Write ``manifest`` to ``target`` in its own format, each entry with the model's answer in the
    format's field (:data:`WRITE_BACK_FIELD`; ``""`` for an item that failed or was not run)."""
    name = WRITE_BACK_FIELD[manifest.fmt]
    updated = []
    for item, entry in zip(manifest.items, manifest.entries, strict=True):
        answer = answers.get(item.id)
        updated.append({**entry, name: "" if answer is None else answer})
    target.parent.mkdir(parents=True, exist_ok=True)
    if manifest.fmt in ("jsonl", "nemo"):
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in updated)
    elif manifest.fmt == "salmonn":
        document = {**(manifest.container or {}), "annotation": updated}
        text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    else:
        text = json.dumps(updated, ensure_ascii=False, indent=2) + "\n"
    target.write_text(text, encoding="utf-8")
    return target


def _number_of(problem: str) -> int:
    """The line/entry number of a problem message, for listing them in file order."""
    words = problem.split(": ", 2)[1].split()
    return int(words[1]) if len(words) == 2 and words[1].isdigit() else 0


class _Bad(Exception):
    """One entry's problem (the reader adds the file and the number)."""


def _jsonl_entries(path: Path, problems: list[str]) -> list[tuple[int, Any]]:
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            problems.append(f"{path}: line {number}: not JSON ({err.msg})")
    return entries


def _text(entry: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise _Bad(f"missing field '{key}'")
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise _Bad(f"field '{key}' must be text, got {type(value).__name__}")
    return str(value)


def _texts(entry: dict[str, Any], key: str) -> list[str] | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _Bad(f"field '{key}' must be a non-empty list of texts")
    return list(value)


def _checked_answer(answer: str | None, choices: list[str]) -> str | None:
    """``answer`` when it is one of ``choices`` (its text, any case) or a valid letter."""
    if answer is None:
        return None
    texts = [" ".join(c.lower().split()) for c in choices]
    letter = answer.strip().strip("().").upper()
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(choices)]
    if " ".join(answer.lower().split()) in texts or (len(letter) == 1 and letter in letters):
        return answer
    raise _Bad(f"the answer {answer!r} is not one of the choices")


def _audio(value: str, folder: Path) -> str:
    return value if os.path.isabs(value) else os.path.normpath(folder / value)


def _ours(entry: dict[str, Any], number: int, folder: Path) -> Item:
    audio = _text(entry, "audio")
    reference: str | list[str] | None
    if isinstance(entry.get("reference"), list):
        reference = _texts(entry, "reference")
    else:
        reference = _text(entry, "reference", required=False)
    answer = _text(entry, "answer", required=False)
    choices = _texts(entry, "choices")
    if reference is None and answer is None:
        raise _Bad("missing field 'reference' (or 'answer')")
    if choices is not None:
        if answer is None:
            raise _Bad("field 'choices' needs an 'answer'")
        _checked_answer(answer, choices)
    return Item(
        id=_text(entry, "id", required=False) or str(number),
        audio=_audio(audio or "", folder),
        reference=reference if reference is not None else answer,
        task=_text(entry, "task", required=False),
        question=_text(entry, "question", required=False),
        choices=choices,
        answer=answer,
        number=number,
    )


def _nemo(entry: dict[str, Any], number: int, folder: Path) -> Item:
    audio = _text(entry, "audio_filepath") or ""
    reference = _text(entry, "text") or ""
    return Item(id=str(number), audio=_audio(audio, folder), reference=reference, number=number)


def _salmonn(entry: dict[str, Any], number: int, folder: Path) -> Item:
    audio = _text(entry, "path") or ""
    task = _text(entry, "task", required=False)
    question = _text(entry, "Q", required=False)
    variables = {"slot": question} if task == "slot_filling" and question is not None else {}
    return Item(
        id=str(number),
        audio=_audio(audio, folder),
        reference=_text(entry, "text"),
        task=None if task is None else f"eval.{task}",
        question=None if variables else question,
        variables=variables,
        number=number,
    )


def _mmau(entry: dict[str, Any], number: int, folder: Path) -> Item:
    audio = _text(entry, "audio_id") or ""
    choices = _texts(entry, "choices")
    if choices is None:
        raise _Bad("missing field 'choices'")
    answer = _checked_answer(_text(entry, "answer"), choices)
    return Item(
        id=_text(entry, "id", required=False) or str(number),
        audio=_audio(audio, folder),
        reference=answer,
        question=_text(entry, "question"),
        choices=choices,
        answer=answer,
        number=number,
    )


def _air_bench(entry: dict[str, Any], number: int, folder: Path) -> Item:
    audio = _text(entry, "path") or ""
    choices = [c for c in (_text(entry, k, required=False) for k in _AIR_CHOICES) if c is not None]
    if len(choices) < 2:
        raise _Bad("needs at least 'choice_a' and 'choice_b'")
    answer = _checked_answer(_text(entry, "answer_gt"), choices)
    task, dataset = entry.get("task_name"), entry.get("dataset_name")
    nested = folder / f"{task}_{dataset}" / audio
    path = str(nested) if task and dataset and nested.is_file() else _audio(audio, folder)
    return Item(
        id=_text(entry, "uniq_id", required=False) or str(number),
        audio=path,
        reference=answer,
        question=_text(entry, "question"),
        choices=choices,
        answer=answer,
        number=number,
    )


_READERS = {
    "jsonl": _ours,
    "nemo": _nemo,
    "salmonn": _salmonn,
    "mmau": _mmau,
    "air-bench": _air_bench,
}
