"""The six tasks (and raw instructions) as library calls: what the CLI, the server and Ray workers run.

A :class:`Task` says what to ask about every input: a prompt template and its variables, or a raw
instruction, how chunk answers join, and whether long audio gets the whole-recording pass.
:func:`make_task` builds one from a task name and its arguments; :func:`run_task` runs it over inputs
with a loaded model and yields one :class:`~salmonn.jobs.records.Record` per input::

    import salmonn

    model = salmonn.load_model(preset="salmonn-7b")
    for record in salmonn.run_task(model, ["meeting.mp3"], "ask", question="Who is angry?"):
        print(record.text)

Everything here except :func:`run_task` is torch-free, so the CLI can check a task before it loads the
model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import ChunkingOptions, GenerationOptions
from ..errors import PromptError
from ..model.prompt import audio_instruction

if TYPE_CHECKING:  # pragma: no cover
    from .records import Record
    from .spec import ProgressEvent, TaskSpec

logger = logging.getLogger(__name__)

TASKS = ("transcribe", "translate", "caption", "ask", "story", "reason", "prompt")
TRANSCRIBE_LANGUAGES = ("en", "zh", "de")  # languages with a trained recognition prompt
TRAINED_LANGUAGES = {"zh": "Chinese"}  # English -> Chinese translation was trained
EMERGENT_LANGUAGES = {"de": "German", "ja": "Japanese"}  # zero-shot abilities shown in the paper
LANGUAGE_NAMES = {
    "en": "English",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "ru": "Russian",
    "ko": "Korean",
    "ar": "Arabic",
    "nl": "Dutch",
    "pl": "Polish",
    "tr": "Turkish",
    "sv": "Swedish",
    "hi": "Hindi",
    "vi": "Vietnamese",
    "uk": "Ukrainian",
    "cs": "Czech",
}
_CODE_OF_NAME = {
    name.lower(): code
    for names in (LANGUAGE_NAMES, TRAINED_LANGUAGES, EMERGENT_LANGUAGES)
    for code, name in names.items()
}
NO_SPACE_LANGUAGES = ("zh", "ja")  # chunk texts of these languages are joined without a space


@dataclass(frozen=True)
class Task:
    """What to ask about every input.

    Attributes:
        name: the task name written into each record (``"transcribe"``, ``"ask"``, ...).
        template: name of a prompt template (``salmonn prompts`` lists them); or ``None`` with
            ``text``.
        variables: values of the template's ``{placeholders}``.
        text: a raw instruction for the audio instead of a template.
        per_chunk: keep the chunk answers of long audio (no whole-recording pass).
        joiner: what separates chunk answers in a joined text (``""`` for Chinese and Japanese).
        note: a caveat for the user (e.g. an untrained translation direction), or ``None``.
    """

    name: str
    template: str | None = None
    variables: Mapping[str, str] = field(default_factory=dict)
    text: str | None = None
    per_chunk: bool = False
    joiner: str = " "
    note: str | None = None

    def __post_init__(self) -> None:
        if (self.template is None) == (self.text is None):
            raise PromptError("a task needs exactly one of a template name and a raw text")

    def spec(self, user_dir: str | os.PathLike[str] | None = None) -> TaskSpec:
        """The engine's :class:`~salmonn.jobs.engine.TaskSpec`: the rendered prompt and how to join.

        Raises:
            PromptError: unknown template, missing or unknown variables, a text template used as an
                audio instruction.
        """
        from .spec import TaskSpec
        from .templates import get_template, load_templates, parse_template, render, render_summary

        templates = load_templates(user_dir)
        if self.text is not None:
            escaped = audio_instruction(self.text).replace("{", "{{").replace("}", "}}")
            template = parse_template(
                self.name, escaped, source="raw text", summary="summary.prompt"
            )
        else:
            name = self.template or ""
            template = templates[name] if name in templates else get_template(name, user_dir)
            if template.kind != "audio":
                raise PromptError(
                    f"template {template.name!r} is a text template (the long-audio pass), "
                    "not an instruction for audio"
                )
        prompt = render(template, **self.variables)
        if template.summary is None:
            return TaskSpec(self.name, prompt, join="concat", joiner=self.joiner)
        summary = templates[template.summary]
        variables = dict(self.variables)

        def summary_prompt(segments: list[Any]) -> str:
            return render_summary(summary, segments, prompt, **variables)

        return TaskSpec(
            self.name,
            prompt,
            join="summary",
            summary_prompt=summary_prompt,
            per_chunk=self.per_chunk,
            joiner=self.joiner,
        )


def make_task(
    task: str,
    *,
    language: str = "en",
    to: str | None = None,
    question: str | None = None,
    music: bool = False,
    template: str | None = None,
    text: str | None = None,
    variables: Mapping[str, str] | None = None,
    per_chunk: bool = False,
) -> Task:
    """Build the :class:`Task` of one of :data:`TASKS` from its arguments.

    Args:
        task: ``"transcribe"`` (``language``), ``"translate"`` (``to``: a code such as ``"zh"`` or a
            language name), ``"caption"`` (``music`` for the music prompt), ``"ask"`` (``question``),
            ``"story"``, ``"reason"`` (optional ``question`` instead of the spoken one), or
            ``"prompt"`` (``template`` with ``variables``, or a raw ``text`` instruction).
        per_chunk: for the tasks that answer about the whole recording, keep the chunk answers.

    Raises:
        PromptError: an unknown task, or arguments that do not fit it.
    """
    given = {"question": question, "template": template, "text": text, "to": to}
    allowed = {
        "transcribe": set(),
        "translate": {"to"},
        "caption": set(),
        "ask": {"question"},
        "story": set(),
        "reason": {"question"},
        "prompt": {"template", "text"},
    }
    if task not in allowed:
        raise PromptError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    extra = sorted(k for k, v in given.items() if v is not None and k not in allowed[task])
    if extra or (variables and task != "prompt"):
        names = ", ".join(extra + (["variables"] if variables and task != "prompt" else []))
        raise PromptError(f"task {task!r} does not take {names}")
    if task == "transcribe":
        if language not in TRANSCRIBE_LANGUAGES:
            raise PromptError(
                f"no transcription prompt for language {language!r}; "
                f"choose from {', '.join(TRANSCRIBE_LANGUAGES)}"
            )
        joiner = "" if language in NO_SPACE_LANGUAGES else " "
        return Task("transcribe", f"transcribe.{language}", joiner=joiner)
    if task == "translate":
        return _translation(to)
    if task == "caption":
        return Task("caption", "caption.music" if music else "caption.audio", per_chunk=per_chunk)
    if task == "ask":
        if question is None or not question.strip():
            raise PromptError("the question is empty")
        return Task("ask", "ask", {"question": question}, per_chunk=per_chunk)
    if task == "story":
        return Task("story", "story", per_chunk=per_chunk)
    if task == "reason":
        if question is None:
            return Task("reason", "reason", per_chunk=per_chunk)
        return Task("reason", "reason.question", {"question": question}, per_chunk=per_chunk)
    if (template is None) == (text is None):
        raise PromptError("task 'prompt' needs exactly one of template and text")
    if text is not None:
        if variables:
            raise PromptError("variables go with a template, not with a raw text")
        return Task("prompt", text=text, per_chunk=per_chunk)
    return Task(template, template, dict(variables or {}), per_chunk=per_chunk)  # type: ignore[arg-type]


def _translation(to: str | None) -> Task:
    if to is None or not to.strip():
        raise PromptError("translation needs a target language (e.g. to='zh')")
    code = to.strip().lower()
    code = _CODE_OF_NAME.get(code, code)  # "Chinese" is "zh": the same trained prompt
    joiner = "" if code in NO_SPACE_LANGUAGES else " "
    if code in TRAINED_LANGUAGES or code in EMERGENT_LANGUAGES:
        return Task("translate", f"translate.{code}", joiner=joiner)
    language = LANGUAGE_NAMES.get(code, to.strip())
    note = f"translation into {language} was neither trained nor evaluated; expect weak results"
    return Task("translate", "translate.any", {"language": language}, joiner=joiner, note=note)


def run_task(
    model: Any,
    inputs: Sequence[Any],
    task: str | Task = "transcribe",
    *,
    generation: GenerationOptions | None = None,
    chunking: ChunkingOptions | None = None,
    batch_size: int | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    **task_args: Any,
) -> Iterator[Record]:
    """Run a task over ``inputs`` and yield one record per input, in input order.

    Args:
        model: a loaded model (:func:`salmonn.load_model`).
        inputs: paths (files, folders, glob patterns; expanded like the CLI does) or
            :class:`~salmonn.audio.inputs.InputItem` objects.
        task: a task name of :data:`TASKS` (its arguments in ``task_args``, see :func:`make_task`)
            or a :class:`Task`.
        generation, chunking: decoding and chunking options (defaults: the dataclass defaults).
        batch_size: chunks per model call, taken across files (default: the engine's).
        on_progress: called with :class:`~salmonn.jobs.engine.ProgressEvent` reports.

    Yields:
        One :class:`~salmonn.jobs.records.Record` per input: for long audio of the whole-recording tasks
        (caption, ask, story, reason, prompt) ``text`` answers for the whole recording and
        ``segments`` hold the chunk answers with their times. A file that fails gives a record whose
        ``error`` says why; the others go on.
    """
    from .engine import process

    if isinstance(task, Task):
        if task_args:
            raise PromptError(
                f"pass task arguments to make_task, not with a Task: {sorted(task_args)}"
            )
        chosen = task
    else:
        chosen = make_task(task, **task_args)
    if chosen.note:
        logger.warning(chosen.note)
    spec = chosen.spec()
    items = _as_items(inputs)
    kwargs: dict[str, Any] = {} if batch_size is None else {"batch_size": batch_size}
    yield from process(
        model,
        items,
        spec,
        chunking=chunking,
        generation=generation,
        on_progress=on_progress,
        **kwargs,
    )


def _as_items(inputs: Iterable[Any]) -> list[Any]:
    from ..audio.inputs import InputItem, expand_inputs

    items: list[Any] = []
    for entry in inputs:
        if isinstance(entry, InputItem):
            items.append(entry)
        else:
            items.extend(expand_inputs([os.fspath(entry)]))
    return items
