"""Training examples and the data files they come from.

A :class:`TrainExample` is one (audio, prompt, target) triple. :func:`read_data` reads a data file in
one of three formats (this package's JSONL, the original's annotation JSON, the records ``salmonn``
itself writes) into :class:`DataLine` objects; a line that names a task keeps that task's training
prompts and draws one per epoch, seeded, as the original drew one per sample. :func:`check_audio`
decodes every line's audio once, so that a missing or broken file is reported, with its line number,
before the first step. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from ..constants import SPEECH_PLACEHOLDER, WINDOW_SAMPLES
from ..errors import ConfigError, PromptError
from ..model.prompt import audio_instruction

DEFAULT_TASK = "asr"  # the original's task of an annotation entry without one


@dataclass(frozen=True)
class TrainExample:
    """One training example.

    ``audio``: a path (anything ffmpeg reads) or 16 kHz mono float samples; ``prompt``: the
    instruction with ``<SpeechHere>`` where the audio goes (the prefix
    ``"<Speech><SpeechHere></Speech> "`` is added when it has none); ``target``: the answer text.
    """

    audio: Any
    prompt: str
    target: str


@dataclass(frozen=True)
class DataLine:
    """One example of a data file: ``line`` (1-based), the audio path, the target, and the prompt
    choices (one fixed prompt, or the training prompts of the line's task)."""

    line: int
    audio: str
    target: str
    prompts: tuple[str, ...]

    def example(self, seed: int, epoch: int) -> TrainExample:
        """The example of this line in ``epoch``: a task's prompt is drawn from a generator seeded
        with ``(seed, epoch, line)``, so a resumed run draws what the uninterrupted one drew."""
        prompt = self.prompts[0]
        if len(self.prompts) > 1:
            prompt = random.Random(f"{seed}/{epoch}/{self.line}").choice(self.prompts)
        return TrainExample(self.audio, prompt, self.target)


@dataclass(frozen=True)
class BadLine:
    """A line that cannot train: its number and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class Data:
    """The lines of a data file that can train, the bad ones, and how many clips are over 30 s."""

    path: str
    lines: list[DataLine] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    cut: int = 0


@lru_cache(maxsize=1)
def training_prompts() -> dict[str, tuple[str, ...]]:
    """The original's training prompts by task (17 tasks, 96 prompts; ``{}`` takes the question)."""
    text = resources.files(__package__).joinpath("train_prompts.json").read_text("utf-8")
    return {task: tuple(prompts) for task, prompts in json.loads(text).items()}


def task_prompts(task: str, question: str | None, *, strict: bool = True) -> tuple[str, ...]:
    """The prompts of ``task``, the question put in their ``{}``.

    ``strict``: a task whose prompts take a question needs one (the original's annotation files
    use an empty one instead).
    """
    prompts = training_prompts()
    if task not in prompts:
        raise ConfigError(f"unknown task {task!r} (known: {', '.join(sorted(prompts))})")
    choices = prompts[task]
    if any("{}" in p for p in choices):
        if not question and strict:
            raise ConfigError(f"task {task!r} needs a 'question'")
        return tuple(p.replace("{}", (question or "").strip()) for p in choices)
    return choices


@overload
def _text(entry: dict[str, Any], key: str, *, required: Literal[True] = ...) -> str: ...
@overload
def _text(entry: dict[str, Any], key: str, *, required: bool) -> str | None: ...


def _text(entry: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise ConfigError(f"missing field {key!r}")
        return None
    if not isinstance(value, str):
        raise ConfigError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _resolve(audio: str, folder: Path) -> str:
    """A relative path is looked up beside the data file first, then in the working directory."""
    if os.path.isabs(audio) or "://" in audio:
        return audio
    beside = folder / audio
    return str(beside) if beside.exists() or not os.path.exists(audio) else audio


def _from_entry(entry: Any, folder: Path, *, annotation: bool) -> tuple[str, str, tuple[str, ...]]:
    """``(audio, target, prompts)`` of one entry of any of the three formats."""
    if not isinstance(entry, dict):
        raise ConfigError(f"expected a JSON object, got {type(entry).__name__}")
    if annotation:  # the original's {"path", "text", "task", "Q"}
        audio, target = _text(entry, "path"), _text(entry, "text")
        task_name = _text(entry, "task", required=False) or DEFAULT_TASK
        question = _text(entry, "Q", required=False)
        return audio, target, task_prompts(task_name, question, strict=False)
    if "schema_version" in entry and "path" in entry:  # a record that salmonn wrote
        if entry.get("error"):
            raise ConfigError(f"the record failed: {entry['error']}")
        audio, target, written = _text(entry, "path"), _text(entry, "text"), _text(entry, "prompt")
        return audio, target, (audio_instruction(written),)
    audio, target = _text(entry, "audio"), _text(entry, "target")
    prompt, task = _text(entry, "prompt", required=False), _text(entry, "task", required=False)
    if (prompt is None) == (task is None):
        raise ConfigError("give exactly one of 'prompt' and 'task'")
    if prompt is not None:
        return audio, target, (audio_instruction(prompt),)
    assert task is not None  # exactly one of the two, checked above
    return audio, target, task_prompts(task, _text(entry, "question", required=False))


def read_data(path: str | os.PathLike[str]) -> Data:
    """Read a data file without decoding any audio; every bad line is kept in ``Data.bad``.

    Formats: JSONL (``audio``, ``target``, and ``prompt`` or ``task`` [+ ``question``]), the
    original's ``{"annotation": [{"path", "text", "task", "Q"}]}`` (entry ``i`` is "line" ``i``,
    1-based), or the JSONL records of ``salmonn`` commands (``path``, ``prompt``, ``text``).

    Raises:
        ConfigError: the file cannot be read, or holds no example at all.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the data file {path}: {err}") from None
    data = Data(str(path))
    entries: list[tuple[int, Any]] = []
    annotation = False
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and "annotation" in whole:
        annotation = True
        if not isinstance(whole["annotation"], list):
            raise ConfigError(f"{path}: 'annotation' must be a list")
        entries = list(enumerate(whole["annotation"], 1))
    else:
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                entries.append((number, json.loads(raw)))
            except json.JSONDecodeError as err:
                data.bad.append(BadLine(number, f"not JSON ({err.msg})"))
    for number, entry in entries:
        try:
            audio, target, prompts = _from_entry(entry, source.parent, annotation=annotation)
            if not target.strip():
                raise ConfigError("the target is empty")
            for prompt in prompts:
                if prompt.count(SPEECH_PLACEHOLDER) != 1:
                    raise ConfigError(f"the prompt needs one {SPEECH_PLACEHOLDER}")
        except (ConfigError, PromptError) as err:
            data.bad.append(BadLine(number, str(err)))
            continue
        data.lines.append(DataLine(number, _resolve(audio, source.parent), target, prompts))
    if not data.lines and not data.bad:
        raise ConfigError(f"{path}: no examples")
    return data


def load_wave(audio: Any) -> np.ndarray:
    """16 kHz mono float32 samples of a path (decoded with ffmpeg) or of an array."""
    if isinstance(audio, (str, os.PathLike)):
        from ..audio.decode import load_audio

        return load_audio(audio)
    return np.asarray(audio, dtype=np.float32).reshape(-1)


def check_audio(
    data: Data,
    share: tuple[int, int] = (0, 1),
    on_line: Callable[[int], None] | None = None,
) -> tuple[list[BadLine], int]:
    """Decode the audio of this process's share of the lines (every ``world``-th from ``rank``).

    Returns:
        ``(bad lines, clips over 30 s)``; the bad lines are not removed from ``data``.
    """
    rank, world = share
    bad, cut = [], 0
    for i, line in enumerate(data.lines):
        if i % world != rank:
            continue
        try:
            wave = load_wave(line.audio)
            if wave.size == 0:
                raise ConfigError("the audio has no samples")
            cut += wave.size > WINDOW_SAMPLES
        except Exception as err:  # noqa: BLE001 - any failure makes the line bad
            bad.append(BadLine(line.line, f"{line.audio}: {getattr(err, 'reason', None) or err}"))
        if on_line is not None:
            on_line(i)
    return bad, cut


def drop_lines(data: Data, bad: Sequence[BadLine]) -> None:
    """Remove the lines named in ``bad`` from ``data.lines`` and add them to ``data.bad``."""
    numbers = {b.line for b in bad}
    data.lines = [line for line in data.lines if line.line not in numbers]
    data.bad = sorted([*data.bad, *bad], key=lambda b: b.line)
