"""``SalmonnModel``: Whisper + BEATs -> window-level Q-Former -> projector -> Vicuna + LoRA.

Attribute names equal the official checkpoint's top-level names (``ln_speech``, ``ln_audio``,
``speech_query_tokens``, ``speech_Qformer``, ``speech_llama_proj``, ``llama_model``; the frozen
encoders are ``speech_encoder`` and ``beats``), so ``named_parameters()`` and the checkpoint keys
line up.

``SalmonnModel`` is one ``nn.Module`` whose attribute names must match the checkpoint, so its stages
(encoders, Q-Former windows, prompt assembly, generation entry points) are methods of one class.
Continuous batching (:mod:`salmonn.model.stream`) drives it through one public preparation step,
:meth:`SalmonnModel.prepare`; the data types it takes and gives are in :mod:`salmonn.model.work`.
``encode_audio_stages`` and ``first_logits`` are documented API for fidelity checks against the
original (docs/parity.md).

Precision (see docs/original-model.md, "Prompt and LLM"): the encoders, Q-Former, projector and LoRA adapters hold float32
weights; the LLM holds ``dtype`` weights. With ``dtype`` other than float32 every forward runs under
``torch.autocast(device.type, dtype)``, which reproduces the reference's CUDA float16 regime.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .generate import GenerationMixin
from .llm import PromptTokenizer, attention_implementation
from .prompt import split_prompt, text_prompt
from .qformer import QFormer, QFormerConfig, split_windows
from .work import AudioStages, Wave, prepare_wave

if TYPE_CHECKING:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from .encoders.beats import Beats

ENCODER_LN_EPS = (
    1e-5  # ln_speech / ln_audio (torch default; see docs/original-model.md, "Q-Former and windows")
)

_TRAINED_PREFIXES = (
    "speech_query_tokens",
    "ln_speech.",
    "ln_audio.",
    "speech_Qformer.",
    "speech_llama_proj.",
)

logger = logging.getLogger(__name__)


class SalmonnModel(GenerationMixin, nn.Module):
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
        speech_encoder: WhisperEncoder,
        beats: Beats,
        qformer_config: QFormerConfig,
        llama_model: Any,
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
        f32: dict[str, Any] = {"device": device, "dtype": torch.float32}
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

    def _lora_layers(self) -> list[Any]:  # peft's LoRA layers: ``scaling`` is a dict by adapter
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

    def trainable_parameters(self, *, lora_only: bool = False) -> dict[str, nn.Parameter]:
        """Unfreeze what SALMONN trains and return it, keyed like the released checkpoints.

        The Q-Former, ``speech_query_tokens``, ``speech_llama_proj``, ``ln_speech``, ``ln_audio``
        and every LoRA A/B (float32) get ``requires_grad=True``; every other parameter is frozen.
        ``lora_only``: keep the Q-Former side frozen too (the paper's LoRA-only ablation).
        """
        self.requires_grad_(False)
        chosen = {
            name: param
            for name, param in self.named_parameters()
            if ".lora_" in name or (not lora_only and name.startswith(_TRAINED_PREFIXES))
        }
        for param in chosen.values():
            param.requires_grad_(True)
        return chosen

    def precision(self) -> contextlib.AbstractContextManager:
        """The autocast of every forward: none for float32, else ``dtype`` on the model's device."""
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
        with torch.inference_mode(), self.precision():
            return self._encode(self._waves(waves), None)

    def encode_audio_stages(self, waves: Sequence[Wave]) -> AudioStages:
        """Like :meth:`encode_audio`, returning every intermediate tensor (:class:`AudioStages`)."""
        stages = AudioStages()
        with torch.inference_mode(), self.precision():
            stages.projected = self._encode(self._waves(waves), stages)
        return stages

    @staticmethod
    def _waves(waves: Sequence[Wave] | Wave) -> list[np.ndarray]:
        if isinstance(waves, (np.ndarray, torch.Tensor)) and waves.ndim == 1:
            waves = [waves]
        prepared = [prepare_wave(w, i) for i, w in enumerate(waves)]
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

    def encoder_attention(self, exact: bool) -> contextlib.AbstractContextManager:
        """Encoder attention for this call: the original's arithmetic when exact (eager Whisper,
        BEATs' own steps), else fused kernels (Whisper SDPA, BEATs ``fast_attention``)."""
        stack = contextlib.ExitStack()
        if exact:
            return stack
        config = getattr(self.speech_encoder, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == "eager":
            stack.enter_context(attention_implementation(config, "sdpa"))
        if hasattr(self.beats, "fast_attention"):
            stack.enter_context(_set_attribute(self.beats, "fast_attention", True))
        return stack

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
        with torch.inference_mode(), self.precision():
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

    def _text_row(self, text: str) -> torch.Tensor:
        return self._embed([self.tokenizer.bos_id, *self.tokenizer.encode(text_prompt(text))])

    def _audio_row(self, audio: torch.Tensor, prompt: str) -> torch.Tensor:
        before, after = self.prompt_ids(prompt)
        head = self._embed([self.tokenizer.bos_id, *before])
        return torch.cat([head, audio.to(head.dtype), self._embed(after)])


@contextlib.contextmanager
def _set_attribute(obj: Any, name: str, value: Any) -> Iterator[None]:
    before = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, before)
