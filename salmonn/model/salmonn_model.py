"""``SalmonnModel``: Whisper + BEATs -> window-level Q-Former -> projector -> Vicuna + LoRA.

Attribute names equal the official checkpoint's top-level names (``ln_speech``, ``ln_audio``,
``speech_query_tokens``, ``speech_Qformer``, ``speech_llama_proj``, ``llama_model``; the frozen
encoders are ``speech_encoder`` and ``beats``), so ``named_parameters()`` and the checkpoint keys
line up.

About 650 lines: ``SalmonnModel`` is one ``nn.Module`` whose attribute names must match the checkpoint,
so its stages (encoders, Q-Former windows, prompt assembly, generation entry points) stay methods of
one class; ``GenerationStream`` (continuous batching) sits beside it because it drives the same
private stages. ``encode_audio_stages`` and ``first_logits`` are documented API for fidelity checks
against the original (docs/parity.md).

Precision (see docs/original-model.md, "Prompt and LLM"): the encoders, Q-Former, projector and LoRA adapters hold float32
weights; the LLM holds ``dtype`` weights. With ``dtype`` other than float32 every forward runs under
``torch.autocast(device.type, dtype)``, which reproduces the reference's CUDA float16 regime.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import GenerationOptions
from ..constants import MIN_SAMPLES, SAMPLE_RATE, WINDOW_SAMPLES, WINDOW_SECONDS
from ..errors import ConfigError
from .llm import PromptTokenizer
from .prompt import split_prompt, text_prompt
from .qformer import QFormer, QFormerConfig, split_windows

ENCODER_LN_EPS = (
    1e-5  # ln_speech / ln_audio (torch default; see docs/original-model.md, "Q-Former and windows")
)

Wave = np.ndarray | torch.Tensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationResult:
    """One answer.

    ``token_ids``: generated ids after the dummy BOS, ending with EOS when one was produced;
    ``text``: those ids up to the first EOS, special tokens skipped (see docs/original-model.md, "Tokenizer").
    """

    text: str
    token_ids: list[int]


TokenCallback = Callable[[list[int]], None]
"""Receives an item's generated ids so far (see :attr:`WorkItem.on_tokens`)."""


@dataclass(frozen=True)
class WorkItem:
    """One unit of work for :meth:`SalmonnModel.generate_stream` and :class:`GenerationStream`.

    ``key``: anything hashable that identifies the item in the results; ``prompt``: the user text;
    ``wave``: a 16 kHz mono clip of at most 30 s, or ``None`` for a text-only prompt (like
    :meth:`SalmonnModel.generate_text`).

    ``on_tokens``: with one beam (greedy or sampling) in the fast mode, called after every decoding
    step of the item with its ids so far (a new list each time, one id longer than the last); the
    last call, in the step where the item finishes, gets exactly its result's ``token_ids``. Never
    called with beam search (the best hypothesis is known only at the end) nor in exact mode (one
    item runs from start to end at once). It runs in the thread that calls ``step``, so it should
    be quick; if it raises, the error is logged and the item is no longer reported (decoding goes
    on).
    """

    key: Hashable
    prompt: str
    wave: Any = None
    on_tokens: TokenCallback | None = None


@dataclass
class AudioStages:
    """Intermediate tensors of :meth:`SalmonnModel.encode_audio_stages` (to compare with the original code's).

    Shapes for B clips, official sizes: ``mel`` [B, 80, 3000]; ``whisper`` [B, 1500, 1280] (encoder
    output, before ln_speech); ``beats`` list of [N_i, 768] (before ln_audio); ``speech``
    [B, 1500, 1280] (after ln_speech); ``audio`` [B, 1500, 768] (after ln_audio, zero rows from N_i
    on); ``fused`` [B, 1500, 2048]; ``windows`` [B*88, 17, 2048]; ``qformer`` [B*88, 1, 768];
    ``projected`` [B, 88, d_llm].
    """

    mel: torch.Tensor | None = None
    whisper: torch.Tensor | None = None
    beats: list[torch.Tensor] = field(default_factory=list)
    speech: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    fused: torch.Tensor | None = None
    windows: torch.Tensor | None = None
    qformer: torch.Tensor | None = None
    projected: torch.Tensor | None = None


def _as_list(values: Any, count: int, what: str) -> list[Any]:
    if isinstance(values, str):
        return [values] * count
    values = list(values)
    if len(values) == 1 and count > 1:
        return values * count
    if len(values) != count:
        raise ConfigError(
            f"got {len(values)} {what} for {count} audio clips; give one or one per clip"
        )
    return values


def _prepare_wave(wave: Wave, index: int) -> np.ndarray:
    """One clip as a float64 1-D array, zero-padded to 1 s (see docs/original-model.md, "Audio front end"); over 30 s is an error."""
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(wave, dtype=np.float64)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ConfigError(
            f"clip {index}: expected mono samples [n], got shape {tuple(array.shape)}"
        )
    if array.size == 0:
        raise ConfigError(f"clip {index}: no samples")
    if array.size > WINDOW_SAMPLES:
        raise ConfigError(
            f"clip {index} is {array.size / SAMPLE_RATE:.2f} s long; the model takes at most "
            f"{WINDOW_SECONDS} s at {SAMPLE_RATE} Hz: cut it into chunks first "
            "(salmonn.iter_chunks)"
        )
    if array.size < MIN_SAMPLES:
        array = np.concatenate([array, np.zeros(MIN_SAMPLES - array.size, dtype=np.float64)])
    return array


class SalmonnModel(nn.Module):
    """The assembled model; build it with :func:`salmonn.load_model`.

    Args:
        speech_encoder: Whisper encoder, [B, 80, 3000] -> ``last_hidden_state`` [B, 1500, Dw].
        beats: BEATs module with ``extract_features(list of float64 waves) -> list of [N_i, Db]``.
        qformer_config: Q-Former sizes (from the checkpoint).
        llama_model: the peft-wrapped LLM; tokenizer: its :class:`PromptTokenizer`.
        identity: what was loaded (preset, component paths ...), reported by ``identity``.
        exact: default mode of generation (the ``exact`` attribute, settable): ``True`` follows
            the original's arithmetic and shapes (one clip at a time, 4.28 eager attention, beam
            step 0 on the prompt repeated per beam); ``False`` (fast) batches clips, decodes
            through :mod:`salmonn.model.kvcache` and lets the Whisper encoder use SDPA attention.
    """

    def __init__(
        self,
        speech_encoder: nn.Module,
        beats: nn.Module,
        qformer_config: QFormerConfig,
        llama_model: nn.Module,
        tokenizer: PromptTokenizer,
        *,
        device: torch.device,
        dtype: torch.dtype,
        identity: dict[str, Any] | None = None,
        exact: bool = False,
    ) -> None:
        super().__init__()
        whisper_width = int(speech_encoder.config.d_model)
        beats_width = int(beats.output_dim)
        d_llm = int(llama_model.get_input_embeddings().weight.shape[1])
        cfg = qformer_config
        self.speech_encoder = speech_encoder
        self.beats = beats
        f32 = {"device": device, "dtype": torch.float32}
        self.ln_speech = nn.LayerNorm(whisper_width, eps=ENCODER_LN_EPS, **f32)
        self.ln_audio = nn.LayerNorm(beats_width, eps=ENCODER_LN_EPS, **f32)
        self.speech_query_tokens = nn.Parameter(
            torch.zeros(1, cfg.num_query_tokens, cfg.hidden_size, **f32)
        )
        self.speech_Qformer = QFormer(cfg).to(**f32)
        self.speech_llama_proj = nn.Linear(cfg.hidden_size, d_llm, **f32)
        self.llama_model = llama_model
        self.tokenizer = tokenizer
        self._device = torch.device(device)
        self._dtype = dtype
        self._identity = dict(identity or {})
        self.exact = exact
        self.requires_grad_(False)
        self.eval()

    # ---- properties ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of every component."""
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """Weight dtype of the LLM and autocast dtype of every forward (float32: no autocast)."""
        return self._dtype

    @property
    def identity(self) -> dict[str, Any]:
        """Preset, component paths, dtype, device and LoRA scaling of this model (a copy)."""
        return {
            **self._identity,
            "dtype": str(self._dtype).removeprefix("torch."),
            "device": str(self._device),
            "lora_scaling": self.lora_scaling,
        }

    @property
    def context_length(self) -> int:
        """Positions the LLM was trained for (2048 for Vicuna v1.1, 4096 for v1.5)."""
        return int(self.llama_model.config.max_position_embeddings)

    def count_tokens(self, text: str) -> int:
        """LLM input length of the text-only prompt for ``text`` (BOS and chat template included)."""
        return 1 + len(self.tokenizer.encode(text_prompt(text)))

    def _lora_layers(self) -> list[nn.Module]:
        return [
            module
            for module in self.llama_model.modules()
            if isinstance(getattr(module, "scaling", None), dict) and hasattr(module, "lora_A")
        ]

    @property
    def lora_scaling(self) -> float:
        """LoRA alpha / r applied at inference (4.0 official; 0 disables the adapters)."""
        layers = self._lora_layers()
        return float(layers[0].scaling["default"]) if layers else 0.0

    @lora_scaling.setter
    def lora_scaling(self, value: float) -> None:
        for module in self._lora_layers():
            module.scaling["default"] = float(value)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self._device.type, dtype=self._dtype)

    # ---- audio -----------------------------------------------------------------------------------
    def encode_audio(self, waves: Sequence[Wave]) -> torch.Tensor:
        """Audio vectors for the LLM.

        Args:
            waves: 16 kHz mono clips (float32 arrays or tensors), each at most 30 s.
        Returns:
            ``[B, 88, d_llm]`` (float16 under the default CUDA precision, float32 on CPU).
        """
        with torch.inference_mode(), self._autocast():
            return self._encode(self._waves(waves), None)

    def encode_audio_stages(self, waves: Sequence[Wave]) -> AudioStages:
        """Like :meth:`encode_audio`, returning every intermediate tensor (:class:`AudioStages`)."""
        stages = AudioStages()
        with torch.inference_mode(), self._autocast():
            stages.projected = self._encode(self._waves(waves), stages)
        return stages

    @staticmethod
    def _waves(waves: Sequence[Wave] | Wave) -> list[np.ndarray]:
        if isinstance(waves, (np.ndarray, torch.Tensor)) and waves.ndim == 1:
            waves = [waves]
        prepared = [_prepare_wave(w, i) for i, w in enumerate(waves)]
        if not prepared:
            raise ConfigError("no audio clips given")
        return prepared

    def _encode(self, waves: list[np.ndarray], stages: AudioStages | None) -> torch.Tensor:
        from ..audio.features import whisper_log_mel

        mel = whisper_log_mel([w.astype(np.float32) for w in waves]).to(
            self._device
        )  # [B, 80, 3000]
        whisper = self.speech_encoder(mel).last_hidden_state  # [B, 1500, Dw]
        beats = self.beats.extract_features(
            [torch.from_numpy(w).to(self._device) for w in waves]
        )  # list of [N_i, Db], from the float64 waves
        speech = self.ln_speech(whisper)
        frames = speech.shape[1]
        rows = []
        for item in beats:
            if item.shape[0] > frames:
                raise ConfigError(f"BEATs gave {item.shape[0]} frames for a clip, Whisper {frames}")
            normed = self.ln_audio(
                item
            )  # zero rows are added after the LayerNorm (see docs/original-model.md, "BEATs encoder")
            rows.append(
                torch.cat([normed, normed.new_zeros(frames - normed.shape[0], normed.shape[1])])
            )
        audio = torch.stack(rows)  # [B, 1500, Db]
        fused = torch.cat([speech, audio], dim=-1)  # [B, 1500, Dw + Db], Whisper channels first
        windows = split_windows(fused)  # [B*88, 17, Dw + Db]
        query = self.speech_query_tokens.expand(windows.shape[0], -1, -1)  # [B*88, Q, H]
        qformer = self.speech_Qformer(query, windows)  # [B*88, Q, H]
        projected = self.speech_llama_proj(qformer)  # [B*88, Q, d_llm]
        projected = projected.reshape(len(waves), -1, projected.shape[-1])  # [B, 88*Q, d_llm]
        if stages is not None:
            stages.mel, stages.whisper, stages.beats, stages.speech = mel, whisper, beats, speech
            stages.audio, stages.fused, stages.windows, stages.qformer = (
                audio,
                fused,
                windows,
                qformer,
            )
        return projected

    # ---- LLM inputs ------------------------------------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """LLM input embeddings of token ids ``[...]`` -> ``[..., d_llm]`` (the resized table)."""
        return self.llama_model.get_input_embeddings()(ids)

    def prompt_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        """Ids of the text before and after the audio (no BOS; each piece encoded alone)."""
        before, after = split_prompt(prompt)
        return self.tokenizer.encode(before), self.tokenizer.encode(after)

    def _embed(self, ids: list[int]) -> torch.Tensor:
        return self.embed_tokens(torch.tensor(ids, dtype=torch.long, device=self._device))

    def build_inputs(
        self, audio: torch.Tensor, prompts: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LLM inputs ``[BOS] + p_before + audio + p_after`` per clip (see docs/original-model.md, "Prompt and LLM"), left-padded.

        Args:
            audio: ``[B, 88, d_llm]`` from :meth:`encode_audio`; prompts: one user prompt per clip.
        Returns:
            ``(inputs_embeds [B, L, d_llm], attention_mask [B, L])``; padding (zero vectors, mask
            0) sits before BOS, so no item sees another's length.
        """
        return self._left_pad([self._audio_row(audio[b], p) for b, p in enumerate(prompts)])

    def first_logits(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """LLM logits for the first generated token (the "step-0 logits" of a golden comparison).

        Args:
            inputs_embeds, attention_mask: from :meth:`build_inputs` (left-padded).
        Returns:
            ``[B, vocab + 1]`` float32, computed like generation's first step (same autocast,
            positions ``cumsum(mask) - 1``).
        """
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode(), self._autocast():
            out = self.llama_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=positions,
                use_cache=False,
            )
        return out.logits[:, -1].float()

    @staticmethod
    def _left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(r.shape[0] for r in rows)
        embeds = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=rows[0].device)
        for b, row in enumerate(rows):
            embeds[b, length - row.shape[0] :] = row
            mask[b, length - row.shape[0] :] = 1
        return embeds, mask

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
        texts = _as_list(prompts, len(clips), "prompts")
        if exact and len(clips) > 1:  # the original encodes and decodes one clip at a time
            return [
                self.generate([c], [t], options, exact=True)[0]
                for c, t in zip(clips, texts, strict=True)
            ]
        with torch.inference_mode(), self._autocast(), self._encoder_attention(exact):
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
        with torch.inference_mode(), self._autocast():
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

        config = (
            self.llama_model.get_base_model().config
            if hasattr(self.llama_model, "get_base_model")
            else self.llama_model.config
        )
        shape = LlmShape.from_config(config, self._dtype)
        return auto_batch_size(free_memory(self._device), shape, options or GenerationOptions())

    def open_stream(
        self, options: GenerationOptions | None = None, *, batch_size: int = 8, **overrides: Any
    ) -> GenerationStream:
        """A :class:`GenerationStream` (push-style continuous batching) over this model."""
        return GenerationStream(self, options, batch_size=batch_size, **overrides)

    def _join(self, decoder: Any, items: list[WorkItem]) -> list[tuple[Hashable, Exception]]:
        """Prefill ``items`` into ``decoder``; returns the items that could not be prepared."""
        failed: list[tuple[Hashable, Exception]] = []
        rows: list[torch.Tensor] = []
        keys: list[Hashable] = []
        with torch.inference_mode(), self._autocast(), self._encoder_attention(False):
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
            if keys:
                embeds, mask = self._left_pad(rows)
                decoder.add(keys, embeds, mask)
        return failed

    def _one(self, item: WorkItem, options: GenerationOptions, exact: bool) -> Any:
        try:
            if item.wave is None:
                return self.generate_text([item.prompt], options, exact=exact)[0]
            return self.generate([item.wave], [item.prompt], options, exact=exact)[0]
        except Exception as exc:  # noqa: BLE001 - reported for this item alone
            return exc

    def _text_row(self, text: str) -> torch.Tensor:
        return self._embed([self.tokenizer.bos_id, *self.tokenizer.encode(text_prompt(text))])

    def _audio_row(self, audio: torch.Tensor, prompt: str) -> torch.Tensor:
        before, after = self.prompt_ids(prompt)
        head = self._embed([self.tokenizer.bos_id, *before])
        return torch.cat([head, audio.to(head.dtype), self._embed(after)])

    def _encoder_attention(self, exact: bool) -> contextlib.AbstractContextManager:
        """Encoder attention for this call: the original's arithmetic when exact (eager Whisper,
        BEATs' own steps), else fused kernels (Whisper SDPA, BEATs ``fast_attention``)."""
        stack = contextlib.ExitStack()
        if exact:
            return stack
        config = getattr(self.speech_encoder, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == "eager":
            stack.enter_context(_attention_implementation(config, "sdpa"))
        if hasattr(self.beats, "fast_attention"):
            stack.enter_context(_set_attribute(self.beats, "fast_attention", True))
        return stack

    def _result(self, ids: list[int]) -> GenerationResult:
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
        return [self._result(x) for x in ids]


class GenerationStream:
    """Push-style continuous batching over one model: :meth:`put` work, :meth:`step` for answers.

    Up to ``batch_size`` items decode together; each :meth:`step` first lets waiting items join
    the running batch (encode, prefill) while there is room, then advances every running item by
    one token, and returns the items that finished: ``(key, GenerationResult)``, or
    ``(key, exception)`` for an item that could not be prepared. In exact mode a step answers one
    waiting item alone, from start to end (the original's loop).

    ``model.generate_stream`` wraps this for an iterable of work items.
    """

    def __init__(
        self,
        model: SalmonnModel,
        options: GenerationOptions | None = None,
        *,
        batch_size: int = 8,
        exact: bool | None = None,
        **overrides: Any,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.options = (options or GenerationOptions()).with_overrides(**overrides)
        self.batch_size = batch_size
        self.exact = model.exact if exact is None else exact
        self._waiting: deque[WorkItem] = deque()
        self._decoder: Any = None
        self._callbacks: dict[Hashable, TokenCallback] = {}  # running items with on_tokens

    @property
    def waiting(self) -> int:
        """Items put and not yet decoding."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Items decoding now."""
        return self._decoder.running if self._decoder is not None else 0

    @property
    def running_keys(self) -> set[Hashable]:
        """Keys of the items decoding now."""
        return {item.key for item in self._decoder.items} if self._decoder is not None else set()

    @property
    def room(self) -> int:
        """Items that could join now (``batch_size`` minus the running ones)."""
        return self.batch_size - self.running

    @property
    def busy(self) -> bool:
        """Whether any item is waiting or running."""
        return bool(self._waiting) or self.running > 0

    def put(self, item: WorkItem) -> None:
        """Queue one item; it joins at a later :meth:`step`."""
        self._waiting.append(item)

    def reset(self) -> None:
        """Forget every waiting and running item (after a failure)."""
        self._waiting.clear()
        self._decoder = None
        self._callbacks.clear()

    def discard(self, keep: Callable[[WorkItem], bool]) -> None:
        """Drop the waiting items for which ``keep`` is false (running ones finish)."""
        self._waiting = deque(item for item in self._waiting if keep(item))

    def step(self) -> list[tuple[Hashable, GenerationResult | Exception]]:
        """Join waiting items while there is room, then decode one token for every running item."""
        model = self.model
        if self.exact:
            if not self._waiting:
                return []
            item = self._waiting.popleft()
            return [(item.key, model._one(item, self.options, exact=True))]
        finished: list[tuple[Hashable, GenerationResult | Exception]] = []
        decoder = self._decoder
        if decoder is None or (not decoder.running and not decoder.can_join):
            decoder = self._decoder = self._new_decoder()
        if self._waiting and decoder.can_join and self.room > 0:
            joining = [self._waiting.popleft() for _ in range(min(self.room, len(self._waiting)))]
            if self.options.num_beams == 1:
                self._callbacks.update(
                    (item.key, item.on_tokens) for item in joining if item.on_tokens is not None
                )
            failed = model._join(decoder, joining)
            for key, _ in failed:
                self._callbacks.pop(key, None)
            finished += failed
        if decoder.running:
            with torch.inference_mode(), model._autocast():
                done = decoder.step()
            if self._callbacks:
                self._report(done, decoder.partial_ids())
            finished += [(key, model._result(ids)) for key, ids in done]
        return finished

    def _report(
        self, done: list[tuple[Hashable, list[int]]], running: list[tuple[Hashable, list[int]]]
    ) -> None:
        """Hand every item with an ``on_tokens`` callback its ids after this step."""
        for key, ids in running:
            callback = self._callbacks.get(key)
            if callback is not None:
                self._call(key, callback, ids)
        for key, ids in done:
            callback = self._callbacks.pop(key, None)
            if callback is not None:
                self._call(key, callback, [int(i) for i in ids])

    def _call(self, key: Hashable, callback: TokenCallback, ids: list[int]) -> None:
        try:
            callback(ids)
        except Exception:  # noqa: BLE001 - a caller's callback must not stop the decode of others
            logger.warning(
                "on_tokens of item %r failed; it is no longer called", key, exc_info=True
            )
            self._callbacks.pop(key, None)

    def _new_decoder(self) -> Any:
        from .generation import Decoder

        model = self.model
        return Decoder(
            model.llama_model,
            self.options,
            eos_token_id=model.tokenizer.eos_id,
            embed_tokens=model.embed_tokens,
            bos_token_id=model.tokenizer.bos_id,
        )


@contextlib.contextmanager
def _attention_implementation(config: Any, name: str) -> Iterator[None]:
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


@contextlib.contextmanager
def _set_attribute(obj: Any, name: str, value: Any) -> Iterator[None]:
    before = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, before)
