"""One request through the library task API: a :class:`~salmonn.jobs.tasks.Task` over one audio file.

:class:`Service` owns the model worker (:class:`~salmonn.serve.batcher.Batcher`). Its methods run
in a request's own thread and block until the answer is ready: :meth:`Service.run_task` runs the
engine (chunking, the whole-recording pass, record assembly, as ``salmonn`` on the command line),
:meth:`Service.run_text` asks the LLM without audio.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..config import GenerationOptions
from ..constants import AUDIO_TOKENS
from ..errors import AudioError, PromptError, SalmonnError
from ..jobs.records import Record
from ..jobs.tasks import Task
from .batcher import Batcher, BatchInfo, RequestModel, ServerClosing, Usage
from .config import ServeConfig
from .errors import (
    APIError,
    RequestCancelled,
    bad_audio,
    bad_request,
    context_exceeded,
    internal,
    too_large,
    unavailable,
)
from .media import AudioFile

logger = logging.getLogger(__name__)


@dataclass
class Answer:
    """A request's result: ``record`` (``None`` without audio), the final text, tokens, and why
    the final answer stopped (``"stop"`` at EOS, ``"length"`` at the token limit)."""

    text: str
    usage: Usage
    finish_reason: str
    record: Record | None = None


class Service:
    """The model and its worker, shared by every request."""

    def __init__(
        self,
        model: Any,
        config: ServeConfig,
        on_batch: Any = None,
    ) -> None:
        self.model = model
        self.config = config
        self.batcher = Batcher(
            model,
            max_batch_size=config.max_batch_size,
            wait_s=config.batch_wait_ms / 1000.0,
            on_batch=on_batch,
        )
        tokenizer = getattr(model, "tokenizer", None)
        self.eos_id = getattr(tokenizer, "eos_id", None)
        self.decode_stable: Callable[[list[int]], str] | None = getattr(
            tokenizer, "decode_stable", None
        )

    def close(self) -> None:
        self.batcher.close()

    def streams_tokens(self, generation: GenerationOptions) -> bool:
        """Whether ``on_tokens`` of :meth:`run_task` / :meth:`run_text` sees the answer grow token
        by token under ``generation`` (one beam, continuous batching, a tokenizer that can tell
        the stable part of a text)."""
        return (
            generation.num_beams == 1
            and self.batcher.streams_tokens
            and self.decode_stable is not None
        )

    # -- requests ----------------------------------------------------------------------------------
    def run_task(
        self,
        task: Task,
        audio: AudioFile,
        generation: GenerationOptions,
        on_tokens: Callable[[list[int]], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Answer:
        """Run ``task`` over the audio file exactly as the CLI does; raises :class:`APIError`.

        ``on_tokens``: when the audio is a single chunk (no whole-recording pass), called from the
        model worker with the ids so far of its one generation, whose text, stripped, is the
        answer (see :meth:`streams_tokens`); never called for longer audio. ``cancelled``: once
        set, the request's model calls stop at the worker's next step.
        """
        try:
            spec = task.spec()
        except PromptError as err:
            raise bad_request(str(err), "messages") from None
        self._check_duration(audio.path)
        decode_errors: list[AudioError] = []
        from ..audio.inputs import InputItem
        from ..jobs.engine import process

        item = InputItem(audio.path, os.path.dirname(audio.path), os.path.basename(audio.path))
        with RequestModel(self.batcher, self.model) as model:
            model.cancelled = cancelled

            def single_chunk() -> None:  # its answer is the record's text: let it stream
                model.on_tokens = on_tokens

            records = process(
                model,
                [item],
                spec,
                chunking=self.config.chunking,
                generation=generation,
                batch_size=self.config.max_batch_size,
                chunks=self._chunks(audio.path, decode_errors, single_chunk),
            )
            try:
                record = next(iter(records))
            finally:
                records.close()
            failure = model.failure
        if record.error is not None:
            if decode_errors:
                reason = _hide_path(decode_errors[0].reason, audio.path)
                raise bad_audio(f"the audio could not be decoded: {reason}")
            raise self._model_error(failure, record.error)
        text = record.text or ""
        return Answer(text, model.usage, self._finish_reason(model.usage, generation), record)

    def run_text(
        self,
        instruction: str,
        generation: GenerationOptions,
        on_tokens: Callable[[list[int]], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Answer:
        """The LLM's answer to ``instruction`` without audio (``USER: ...\\nASSISTANT:``).

        ``on_tokens``: called from the model worker with the ids so far, whose text is the answer
        (see :meth:`streams_tokens`).
        """
        with RequestModel(self.batcher, self.model) as model:
            model.on_tokens = on_tokens
            model.cancelled = cancelled
            try:
                result = model.generate_text([instruction], generation)[0]
            except Exception as exc:  # noqa: BLE001 - mapped to an HTTP error
                raise self._model_error(exc, str(exc)) from None
        return Answer(result.text, model.usage, self._finish_reason(model.usage, generation))

    def fit_prompt(
        self, instruction: str, task: Task | None, generation: GenerationOptions, asked: bool
    ) -> GenerationOptions:
        """``generation`` with ``max_new_tokens`` bounded by what the model's context leaves after
        the prompt (with the audio's positions for ``task``); 400 ``context_length_exceeded`` when
        the prompt itself does not fit, or when ``asked`` (the request set ``max_tokens``) and the
        asked tokens do not fit after it. Runs the tokenizer: call it from a request thread."""
        context = getattr(self.model, "context_length", None)
        if not context:
            return generation
        if task is None:
            prompt = int(self.model.count_tokens(instruction))
        else:
            before, after = self.model.prompt_ids(task.spec().prompt)
            prompt = 1 + len(before) + AUDIO_TOKENS + len(after)
        left = context - prompt
        if left < 1:
            what = f"with the audio's {AUDIO_TOKENS} positions" if task else "text only"
            raise context_exceeded(
                f"this model's context is {context} tokens, and the prompt alone takes {prompt} "
                f"({what}); shorten the messages",
                "messages",
            )
        if generation.max_new_tokens <= left:
            return generation
        if asked:
            raise context_exceeded(
                f"this model's context is {context} tokens; the prompt takes {prompt}, which "
                f"leaves {left} for the answer, but max_tokens asks for "
                f"{generation.max_new_tokens}",
                "max_tokens",
            )
        return generation.with_overrides(max_new_tokens=left)

    # -- helpers -----------------------------------------------------------------------------------
    def _check_duration(self, path: str) -> None:
        from ..audio.decode import probe

        try:
            info = probe(path)
        except AudioError as err:
            reason = _hide_path(err.reason, path)
            raise bad_audio(f"the audio could not be decoded: {reason}") from None
        if not info.has_audio:
            raise bad_audio("the file has no audio stream")
        limit = self.config.max_audio_seconds
        if info.duration is not None and info.duration > limit:
            raise _too_long(info.duration, limit)

    def _chunks(
        self, path: str, decode_errors: list[AudioError], single: Callable[[], None]
    ) -> Iterator[Any]:
        """The Prefetcher's chunks of ``path``; stops with 413 past ``max_audio_seconds``.
        ``single()`` runs before the chunk is handed on when the first chunk is also the last."""
        from ..audio.prefetch import Prefetcher

        limit = self.config.max_audio_seconds
        with Prefetcher(
            [path], self.config.chunking, max_chunks=max(4, 2 * self.config.max_batch_size)
        ) as chunks:
            for fc in chunks:
                if fc.error is not None:
                    decode_errors.append(fc.error)
                elif fc.chunk is not None and fc.chunk.end > limit:
                    raise _too_long(fc.chunk.end, limit)
                elif fc.chunk is not None and fc.chunk.index == 0 and fc.chunk.last:
                    single()
                yield fc

    def _model_error(self, exc: BaseException | None, message: str) -> APIError:
        if isinstance(exc, APIError):
            return exc
        if isinstance(exc, RequestCancelled):
            return unavailable("the request was cancelled", code="cancelled")
        if isinstance(exc, ServerClosing):
            return unavailable("the server is shutting down", code="shutting_down")
        if isinstance(exc, SalmonnError):
            return bad_request(message)
        logger.error("model call failed: %s", message, exc_info=exc)
        return internal()

    def _finish_reason(self, usage: Usage, generation: GenerationOptions) -> str:
        last = usage.last
        ids = list(getattr(last, "token_ids", []) or [])
        if ids and self.eos_id is not None and ids[-1] == self.eos_id:
            return "stop"
        return "length" if len(ids) >= generation.max_new_tokens else "stop"


def _hide_path(reason: str, path: str) -> str:
    """``reason`` without the server-side path of the file (a temporary folder, a symlink's target)."""
    return reason.replace(path, os.path.basename(path)).replace(os.path.dirname(path), "")


def _too_long(seconds: float, limit: float) -> APIError:
    return too_large(
        f"the audio lasts {seconds:.1f} s or more, over the server's limit of {limit:g} s "
        "(--max-audio-seconds)",
        code="audio_too_long",
    )


__all__ = ["Answer", "BatchInfo", "Service"]
