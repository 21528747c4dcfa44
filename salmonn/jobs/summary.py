"""The whole-recording answer for long audio: a text-only pass over the timestamped chunk answers.

A file of more than one chunk has one answer per chunk. For the tasks that answer about the whole
recording (caption, ask, story, reason, prompt), :class:`SummaryPass` asks the same LLM, without audio, to
answer from those chunk answers and their times. A recording too long for one prompt is reduced in
stages first (:meth:`SummaryPass.fit_context`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import GenerationOptions
from ..errors import error_line
from .records import Segment

if TYPE_CHECKING:  # pragma: no cover
    from .spec import EngineModel

SUMMARY_MARGIN_TOKENS = 8  # room between the summary prompt plus answer and the LLM's context

Render = Callable[[list[Segment]], str]
"""Turns chunk answers (with their times) into the text-only prompt of the pass."""


@dataclass(frozen=True)
class SummaryAnswer:
    """The pass's answer for one file: ``text``, or ``error`` (one line) when it failed."""

    text: str | None
    error: str | None
    seconds: float


class SummaryPass:
    """Answer for whole files from their chunk answers, with ``model.generate_text``."""

    def __init__(self, model: EngineModel, render: Render, options: GenerationOptions) -> None:
        self.model, self.render, self.options = model, render, options

    def run(self, files: Sequence[list[Segment]]) -> list[SummaryAnswer]:
        """One answer per file, in order: one batched call; file by file when that call fails."""
        prompts: list[str | None] = []
        answers: list[SummaryAnswer | None] = []
        for segments in files:
            try:
                prompts.append(self.render(self.fit_context(segments)))
                answers.append(None)
            except Exception as exc:  # noqa: BLE001 - becomes this file's error
                prompts.append(None)
                answers.append(SummaryAnswer(None, f"summary pass: {error_line(exc)}", 0.0))
        todo = [i for i, prompt in enumerate(prompts) if prompt is not None]
        if todo:
            for i, answer in zip(todo, self._answer([prompts[i] for i in todo]), strict=True):  # type: ignore[misc]
                answers[i] = answer
        return answers  # type: ignore[return-value]

    def _answer(self, prompts: list[str]) -> list[SummaryAnswer]:
        start = time.perf_counter()
        try:
            results = self.model.generate_text(prompts, self.options)
            if len(results) != len(prompts):
                raise RuntimeError(
                    f"model returned {len(results)} results for {len(prompts)} prompts"
                )
        except Exception:  # noqa: BLE001 - retried one by one
            return [self._answer_one(prompt) for prompt in prompts]
        share = (time.perf_counter() - start) / len(prompts)
        return [SummaryAnswer(result.text, None, share) for result in results]

    def _answer_one(self, prompt: str) -> SummaryAnswer:
        start = time.perf_counter()
        try:
            text, error = self.model.generate_text([prompt], self.options)[0].text, None
        except Exception as exc:  # noqa: BLE001 - becomes this file's error
            text, error = None, f"summary pass: {error_line(exc)}"
        return SummaryAnswer(text, error, time.perf_counter() - start)

    def fit_context(self, segments: list[Segment]) -> list[Segment]:
        """Shrink ``segments`` until the summary prompt fits the LLM's context.

        A long recording gives more chunk answers than one prompt holds (about 50 tokens per 30 s
        chunk; Vicuna v1.1 has 2048 positions). While the prompt is too long, consecutive segments
        are grouped into prompts that fit, each group is answered by the same text-only pass, and
        the group answers (spanning the group's times) replace the group.
        """
        count, render = self.model.count_tokens, self.render
        budget = self.model.context_length - self.options.max_new_tokens - SUMMARY_MARGIN_TOKENS
        while len(segments) > 1 and count(render(segments)) > budget:
            groups: list[list[Segment]] = [[]]
            for segment in segments:
                if groups[-1] and count(render([*groups[-1], segment])) > budget:
                    groups.append([])
                groups[-1].append(segment)
            if len(groups) == len(segments):
                groups = [segments[i : i + 2] for i in range(0, len(segments), 2)]
            results = self.model.generate_text([render(g) for g in groups], self.options)
            segments = [
                Segment(group[0].start, group[-1].end, result.text)
                for group, result in zip(groups, results, strict=True)
            ]
        return segments
