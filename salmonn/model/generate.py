"""The generation entry points of :class:`~salmonn.model.salmonn_model.SalmonnModel`, as a mixin.

``generate`` (clips), ``generate_text`` (text only), ``generate_stream`` / ``open_stream``
(continuous batching) and the public preparation step they share with
:class:`~salmonn.model.stream.GenerationStream`: :meth:`GenerationMixin.prepare` (encode, embed,
left-pad), :meth:`~GenerationMixin.new_decoder`, :meth:`~GenerationMixin.answer`,
:meth:`~GenerationMixin.result`. The model's stages (``encode``, ``build_inputs``, ``precision``,
``encoder_attention``) are the class's own; the search itself is :mod:`salmonn.model.generation`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..config import GenerationOptions
from ..errors import ConfigError
from .llm import base_model
from .stream import GenerationStream
from .work import GenerationResult, Wave, WorkItem, as_list

if TYPE_CHECKING:
    import contextlib

    import numpy as np

    from .llm import PromptTokenizer
    from .work import AudioStages


@dataclass
class Prepared:
    """Work items made ready to join a decode (:meth:`SalmonnModel.prepare`).

    ``keys`` of the items that are ready, in row order; ``inputs_embeds`` [N, L, d_llm] and
    ``attention_mask`` [N, L], left-padded (``None`` when no item is ready); ``failed``: the items
    that could not be prepared, each with its error.
    """

    keys: list[Hashable]
    inputs_embeds: torch.Tensor | None
    attention_mask: torch.Tensor | None
    failed: list[tuple[Hashable, Exception]]


class GenerationMixin:
    """Generation over the model's stages; mixed into ``SalmonnModel`` (which provides
    ``_waves``, ``_encode``, ``build_inputs``, ``_left_pad``, ``_text_row``, ``_audio_row``,
    ``precision``, ``encoder_attention``, ``tokenizer``, ``llama_model``, ``exact``)."""

    if TYPE_CHECKING:  # what SalmonnModel provides (see there)
        exact: bool
        tokenizer: PromptTokenizer
        llama_model: Any
        _device: torch.device
        _dtype: torch.dtype

        def precision(self) -> contextlib.AbstractContextManager: ...
        def encoder_attention(self, exact: bool) -> contextlib.AbstractContextManager: ...
        @staticmethod
        def _waves(waves: Sequence[Wave] | Wave) -> list[np.ndarray]: ...
        def _encode(self, waves: list[np.ndarray], stages: AudioStages | None) -> torch.Tensor: ...
        def build_inputs(
            self, audio: torch.Tensor, prompts: Sequence[str]
        ) -> tuple[torch.Tensor, torch.Tensor]: ...
        @staticmethod
        def _left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]: ...
        def _text_row(self, text: str) -> torch.Tensor: ...
        def _audio_row(self, audio: torch.Tensor, prompt: str) -> torch.Tensor: ...
        def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor: ...

    # ---- generation ------------------------------------------------------------------------------
    def generate(
        self,
        waves: Sequence[Wave],
        prompts: str | Sequence[str],
        options: GenerationOptions | None = None,
        *,
        exact: bool | None = None,
        **overrides: Any,
    ) -> list[GenerationResult]:
        """Answer one prompt per clip (or one prompt for all clips).

        Args:
            waves: 16 kHz mono clips, each at most 30 s (see :meth:`encode_audio`).
            prompts: user text; ``"<Speech><SpeechHere></Speech> "`` is prepended unless it already
                contains ``<SpeechHere>``.
            options: decoding settings (default: the original's 4-beam search, 200 new tokens);
                ``overrides`` replace single fields, e.g. ``num_beams=1``.
            exact: the original's arithmetic and shapes for this call (default: ``self.exact``).
        Returns:
            One :class:`GenerationResult` per clip; each equals what the clip alone would give.
        """
        options = (options or GenerationOptions()).with_overrides(**overrides)
        exact = self.exact if exact is None else exact
        clips = self._waves(waves)
        texts = as_list(prompts, len(clips), "prompts")
        if exact and len(clips) > 1:  # the original encodes and decodes one clip at a time
            return [
                self.generate([c], [t], options, exact=True)[0]
                for c, t in zip(clips, texts, strict=True)
            ]
        with torch.inference_mode(), self.precision(), self.encoder_attention(exact):
            audio = self._encode(clips, None)
            embeds, mask = self.build_inputs(audio, texts)
            return self._generate(embeds, mask, options, exact)

    def generate_text(
        self,
        prompts: str | Sequence[str],
        options: GenerationOptions | None = None,
        *,
        exact: bool | None = None,
        **overrides: Any,
    ) -> list[GenerationResult]:
        """The same LLM without audio: ``[BOS] + tok("USER: {text}\\nASSISTANT:")`` per prompt."""
        options = (options or GenerationOptions()).with_overrides(**overrides)
        exact = self.exact if exact is None else exact
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not texts:
            raise ConfigError("no prompts given")
        with torch.inference_mode(), self.precision():
            embeds, mask = self._left_pad([self._text_row(t) for t in texts])
            return self._generate(embeds, mask, options, exact)

    def generate_stream(
        self,
        work: Iterable[WorkItem],
        options: GenerationOptions | None = None,
        *,
        batch_size: int = 8,
        exact: bool | None = None,
        **overrides: Any,
    ) -> Iterator[tuple[Hashable, GenerationResult | Exception]]:
        """Continuous batching: answer a stream of work items, ``batch_size`` of them at a time.

        Items are taken from ``work`` as room frees up: when an answer ends, the next items are
        encoded, their prompts prefilled, and they join the running decode; each item's ids equal
        what it gives alone (and what :meth:`generate` gives). ``work`` is read lazily, so it can
        be fed while results come out. See :class:`GenerationStream` for the push-style API.

        Yields:
            ``(key, result)`` in the order the answers finish. An item that cannot be prepared
            (a clip over 30 s, a bad prompt) yields ``(key, exception)`` and the others go on.
        """
        stream = GenerationStream(self, options, batch_size=batch_size, exact=exact, **overrides)
        source = iter(work)
        exhausted = False
        while True:
            while not exhausted and stream.waiting < stream.room:
                item = next(source, None)
                if item is None:
                    exhausted = True
                else:
                    stream.put(item)
            if not stream.busy:
                return
            yield from stream.step()

    def auto_batch_size(self, options: GenerationOptions | None = None) -> int:
        """The largest batch whose working memory fits the free memory of this model's CUDA
        device now (the weights already loaded); on other devices the default batch size."""
        from .capacity import LlmShape, auto_batch_size, free_memory

        shape = LlmShape.from_config(base_model(self.llama_model).config, self._dtype)
        return auto_batch_size(free_memory(self._device), shape, options or GenerationOptions())

    def open_stream(
        self, options: GenerationOptions | None = None, *, batch_size: int = 8, **overrides: Any
    ) -> GenerationStream:
        """A :class:`GenerationStream` (push-style continuous batching) over this model."""
        return GenerationStream(self, options, batch_size=batch_size, **overrides)

    def prepare(self, items: Sequence[WorkItem]) -> Prepared:
        """Make work items ready to join a decode: encode their clips (together, with the fast
        encoders), embed their prompts, left-pad the rows. An item that cannot be prepared (a clip
        over 30 s, a bad prompt) is returned in ``failed`` with its error; the others go on."""
        failed: list[tuple[Hashable, Exception]] = []
        rows: list[torch.Tensor] = []
        keys: list[Hashable] = []
        with torch.inference_mode(), self.precision(), self.encoder_attention(False):
            audio_items = []
            for item in items:
                if item.wave is None:
                    try:
                        rows.append(self._text_row(item.prompt))
                        keys.append(item.key)
                    except Exception as exc:  # noqa: BLE001 - reported for this item alone
                        failed.append((item.key, exc))
                    continue
                try:
                    audio_items.append((item, self._waves([item.wave])[0]))
                except Exception as exc:  # noqa: BLE001 - reported for this item alone
                    failed.append((item.key, exc))
            if audio_items:
                audio = self._encode([wave for _, wave in audio_items], None)
                for b, (item, _) in enumerate(audio_items):
                    try:
                        rows.append(self._audio_row(audio[b], item.prompt))
                        keys.append(item.key)
                    except Exception as exc:  # noqa: BLE001 - reported for this item alone
                        failed.append((item.key, exc))
            embeds, mask = self._left_pad(rows) if keys else (None, None)
        return Prepared(keys, embeds, mask, failed)

    def new_decoder(self, options: GenerationOptions) -> Any:
        """A :class:`~salmonn.model.generation.Decoder` over this model's LLM (the fast mode)."""
        from .generation import Decoder

        return Decoder(
            self.llama_model,
            options,
            eos_token_id=self.tokenizer.eos_id,
            embed_tokens=self.embed_tokens,
            bos_token_id=self.tokenizer.bos_id,
        )

    def answer(
        self, item: WorkItem, options: GenerationOptions, exact: bool
    ) -> GenerationResult | Exception:
        """One work item answered alone (the exact mode's loop); its error instead of raising."""
        try:
            if item.wave is None:
                return self.generate_text([item.prompt], options, exact=exact)[0]
            return self.generate([item.wave], [item.prompt], options, exact=exact)[0]
        except Exception as exc:  # noqa: BLE001 - reported for this item alone
            return exc

    def result(self, ids: list[int]) -> GenerationResult:
        """An answer from generated ids (decoded up to the first EOS)."""
        return GenerationResult(self.tokenizer.decode(list(ids)), [int(i) for i in ids])

    def _generate(
        self, embeds: torch.Tensor, mask: torch.Tensor, options: GenerationOptions, exact: bool
    ) -> list[GenerationResult]:
        from .generation import generate_ids

        ids = generate_ids(
            self.llama_model,
            embeds,
            mask,
            options,
            eos_token_id=self.tokenizer.eos_id,
            embed_tokens=self.embed_tokens,
            bos_token_id=self.tokenizer.bos_id,
            exact=exact,
        )
        return [self.result(x) for x in ids]
