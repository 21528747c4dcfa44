"""An evaluation run without the model's loop: plan the manifest's items as tasks, group them, turn the
task engine's records into predictions, resume, and summarise.

The model itself is driven by the caller through the same engine as the task commands: each
:class:`Group` holds one :class:`~salmonn.engine.TaskSpec` and its inputs, ready for
``salmonn.process`` (or a Job of the CLI's executors, local or Ray). A prediction is the engine's
record (``Record.to_dict()``) plus ``id``, ``reference``, and for question items ``question``,
``choices`` and ``answer``; after scoring it also holds ``normalized_text``,
``normalized_reference`` and the per-item ``outcome``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PromptError
from .answers import LETTERS
from .manifests import Item, ManifestError

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
_QA_TASKS = ("ask", "reason")
CHOICE_INSTRUCTION = "Answer with the letter of the right choice."


@dataclass
class Group:
    """Items that share one task (same prompt), in manifest order.

    Attributes:
        task: the :class:`salmonn.Task`.
        spec: its engine spec.
        items: the manifest items.
        inputs: their engine inputs (``InputItem``), same order.
    """

    task: Any
    spec: Any
    items: list[Item] = field(default_factory=list)
    inputs: list[Any] = field(default_factory=list)


def choice_question(question: str | None, choices: Sequence[str]) -> str:
    """The question a multiple-choice item asks: the question, its lettered choices, and
    :data:`CHOICE_INSTRUCTION`."""
    lines = [question.strip()] if question and question.strip() else []
    lines += [f"({LETTERS[i]}) {choice}" for i, choice in enumerate(choices)]
    return "\n".join([*lines, CHOICE_INSTRUCTION])


def make_item_task(item: Item, default_task: str, language: str = "en") -> Any:
    """The :class:`salmonn.Task` of ``item``: its own ``task`` or ``default_task`` (a task name of
    ``salmonn.TASKS`` or a template name), with its question (choices folded in) as the variable.

    Raises:
        PromptError: the task does not fit the item (no question for ``ask``, unknown template ...).
    """
    from .. import TASKS, make_task
    from ..jobs.tasks import TRANSCRIBE_LANGUAGES
    from ..jobs.templates import get_template

    name = item.task or default_task
    question = item.question
    if item.choices:
        question = choice_question(question, item.choices)
    if name in TASKS and name != "prompt":
        if name == "transcribe":
            lang = language if language in TRANSCRIBE_LANGUAGES else "en"
            return make_task("transcribe", language=lang)
        if name == "translate":
            return make_task("translate", to=language)
        if name in _QA_TASKS:
            return make_task(name, question=question)
        return make_task(name)
    template = get_template(name)
    variables = dict(item.variables)
    if "question" in template.variables and question is not None:
        variables["question"] = question
    return make_task("prompt", template=name, variables=variables)


def plan(
    items: Sequence[Item], default_task: str, *, language: str = "en", where: str = "manifest"
) -> list[Group]:
    """Group ``items`` by their task, checking every item's task first.

    Raises:
        ManifestError: every item whose task cannot be built or rendered (all listed).
    """
    from .. import InputItem

    groups: dict[str, Group] = {}
    problems = []
    for item in items:
        try:
            task = make_item_task(item, default_task, language)
            spec = task.spec()
        except PromptError as err:
            problems.append(f"{where}: item {item.id} (number {item.number}): {err}")
            continue
        key = json.dumps([spec.task, spec.prompt], ensure_ascii=False)
        group = groups.setdefault(key, Group(task, spec))
        group.items.append(item)
        folder, name = os.path.split(item.audio)
        group.inputs.append(InputItem(item.audio, folder or ".", name))
    if problems:
        raise ManifestError(problems)
    return list(groups.values())


def prediction(record: Any, item: Item) -> dict[str, Any]:
    """The prediction of ``item``: the engine's record (a :class:`salmonn.Record` or its dict) with
    the item's id, reference and question fields."""
    data = record.to_dict() if hasattr(record, "to_dict") else dict(record)
    extra: dict[str, Any] = {"id": item.id, "reference": item.reference}
    if item.question is not None:
        extra["question"] = item.question
    if item.choices is not None:
        extra["choices"] = item.choices
        extra["answer"] = item.answer
    return {**data, **extra}


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The prediction records of a JSONL file (see :func:`read_numbered`)."""
    return [record for _, record in read_numbered(path)]


def read_numbered(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of each record of a JSONL file; a cut last line (a killed run) is
    ignored.

    Raises:
        ManifestError: any other line that is not a JSON object (all listed, with their numbers).
    """
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    last = max((i for i, line in enumerate(lines, 1) if line.strip()), default=0)
    records, problems = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if number != last:
                problems.append(f"{path}: line {number}: not JSON")
            continue
        if not isinstance(data, dict):
            problems.append(f"{path}: line {number}: not a JSON object")
            continue
        records.append((number, data))
    if problems:
        raise ManifestError(problems)
    return records


def latest_by_id(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last prediction of each id (a resumed run appends retried items)."""
    return {str(r.get("id")): r for r in records if r.get("id") is not None}


def done_ids(
    previous: dict[str, dict[str, Any]],
    groups: Sequence[Group],
    *,
    generation: Any,
    chunking: Any,
    same_model: Any = None,
) -> set[str]:
    """Ids whose earlier prediction can be kept: no error, the same audio, task, prompt and
    options (the task commands' resume key), and ``same_model(record["model"])`` when given."""
    from ..jobs.engine import planned_resume_key
    from ..jobs.records import resume_key

    done = set()
    for group in groups:
        for item, inp in zip(group.items, group.inputs, strict=True):
            old = previous.get(item.id)
            if old is None or old.get("error") is not None or old.get("text") is None:
                continue
            key = planned_resume_key(inp, group.spec, chunking=chunking, generation=generation)
            try:
                old_key = resume_key(old["path"], old["task"], old["prompt"], old["options"])
            except KeyError:
                continue
            if key == old_key and (same_model is None or same_model(old.get("model") or {})):
                done.add(item.id)
    return done


def attach_outcomes(
    predictions: Sequence[dict[str, Any]], outcomes: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Predictions with their scoring: ``normalized_text``, ``normalized_reference`` and
    ``outcome`` (errors, extracted answer, correct ...)."""
    merged = []
    for record, outcome in zip(predictions, outcomes, strict=True):
        rest = {k: v for k, v in outcome.items() if not k.startswith("normalized_")}
        merged.append(
            {
                **record,
                "normalized_text": outcome.get("normalized_text"),
                "normalized_reference": outcome.get("normalized_reference"),
                "outcome": rest,
            }
        )
    return merged


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write ``records`` to ``path`` atomically (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as stream:
        for record in records:
            stream.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
    os.replace(temporary, path)


def compare_with_paper(summary: dict[str, Any], paper: dict[str, float | None]) -> list[dict]:
    """Rows ``{"score", "paper", "measured"}`` for each number the paper reports."""
    rows = []
    for name, reported in paper.items():
        measured = summary.get("score") if name == summary.get("metric") else None
        if measured is None:
            measured = (summary.get("scores") or {}).get(name)
        rows.append({"score": name, "paper": reported, "measured": measured})
    return rows


def check_output_dir(folder: Path, resume: bool) -> None:
    """Refuse to overwrite earlier predictions without ``resume``.

    Raises:
        ConfigError: ``folder`` holds predictions and ``resume`` is off.
    """
    if (folder / PREDICTIONS).exists() and not resume:
        raise ConfigError(
            f"{folder / PREDICTIONS} exists: add --resume to continue it, or choose another -o DIR"
        )
