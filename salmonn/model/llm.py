"""The language side of SALMONN: Vicuna/LLaMA, the ``[PAD]`` row, peft LoRA, prompt tokenisation.

* Weights load with ``transformers.LlamaForCausalLM.from_pretrained`` (never remote code), frozen.
* The original adds ``[PAD]`` as token ``len(tokenizer)`` (32000 for Vicuna) and resizes the
  embedding table and lm_head with a random, never saved row (see docs/original-model.md, "Prompt and LLM"). Here the extra row is
  **zero** in both tables: the extra logit is exactly 0, the deterministic stand-in for the
  original's near-zero row.
* LoRA on every ``q_proj``/``v_proj`` (see docs/original-model.md, "Prompt and LLM"); the adapter state-dict keys
  ``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.default.weight`` equal the
  checkpoint's names under ``llama_model.``.
* Tokenisation follows the original slow SentencePiece tokenizer: each prompt piece is
  ``sp.encode``-d on its own, without BOS/EOS (see docs/original-model.md, "Tokenizer").
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "v_proj")
LORA_DROPOUT = 0.1  # inactive: the model is always in eval mode


def base_model(lm: Any) -> Any:
    """The transformers model under a peft wrapper (``lm`` itself when it is not wrapped)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


@contextmanager
def attention_implementation(config: Any, name: str) -> Iterator[None]:
    """Within the block, a transformers ``config`` selects the attention implementation ``name``."""
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


class PromptTokenizer:
    """SentencePiece tokenizer with the original's semantics (``sp.encode`` per piece, no BOS/EOS).

    Falls back to ``transformers.AutoTokenizer`` when the folder has only ``tokenizer.json``.
    ``vocab_size`` is the tokenizer's own size; ``pad_id`` (``[PAD]``) is ``vocab_size`` and the LLM
    vocabulary is ``vocab_size + 1``.
    """

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self._sp: Any = None
        self._hf: Any = None
        self._bytes: frozenset[int] | None = None  # byte-fallback ids, found when first needed
        model_file = folder / "tokenizer.model"
        if model_file.is_file():
            import sentencepiece

            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
            self.vocab_size = int(self._sp.get_piece_size())
            self.bos_id, self.eos_id = int(self._sp.bos_id()), int(self._sp.eos_id())
            self.unk_id = int(self._sp.unk_id())
        elif (folder / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(str(folder))
            self.vocab_size = len(self._hf)
            self.bos_id, self.eos_id = self._hf.bos_token_id, self._hf.eos_token_id
            self.unk_id = self._hf.unk_token_id if self._hf.unk_token_id is not None else -1
        else:
            raise CheckpointError(
                f"no tokenizer.model or tokenizer.json in the LLM folder {folder}"
            )
        if self.bos_id is None or self.bos_id < 0 or self.eos_id is None or self.eos_id < 0:
            raise CheckpointError(f"the tokenizer in {folder} defines no BOS/EOS token")
        self.pad_id = self.vocab_size

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` alone: no BOS/EOS, SentencePiece's own dummy-prefix ``▁`` (see docs/original-model.md, "Tokenizer")."""
        if self._sp is not None:
            return list(self._sp.encode(text))
        return list(self._hf(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids (see docs/original-model.md, "Tokenizer"): up to the first EOS, special tokens skipped, no
        clean-up."""
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        special = {self.bos_id, self.eos_id, self.unk_id}
        kept = [i for i in ids if i not in special and 0 <= i < self.vocab_size]
        if self._sp is not None:
            return str(self._sp.decode(kept))
        return str(
            self._hf.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )

    def decode_stable(self, ids: list[int]) -> str:
        """The part of ``decode(ids)`` that more ids cannot change: a prefix of the text of any
        continuation of ``ids``.

        Trailing byte-fallback pieces (and the ids ``decode`` skips among them) are left out: they
        may still join the next bytes into one character, and both decoders turn a byte run that is
        not valid UTF-8 into U+FFFD as a whole.
        """
        if self.eos_id in ids:
            return self.decode(ids)
        bytes_ = self._byte_ids()
        special = {self.bos_id, self.eos_id, self.unk_id}
        end = len(ids)
        while end > 0 and (
            ids[end - 1] in bytes_
            or ids[end - 1] in special
            or not 0 <= ids[end - 1] < self.vocab_size
        ):
            end -= 1
        return self.decode(list(ids[:end]))

    def _byte_ids(self) -> frozenset[int]:
        cached = self._bytes
        if cached is None:
            if self._sp is not None:
                found = [i for i in range(self.vocab_size) if self._sp.is_byte(i)]
            else:
                pieces = self._hf.convert_ids_to_tokens(list(range(self.vocab_size)))
                found = [i for i, p in enumerate(pieces) if _is_byte_piece(p)]
            cached = self._bytes = frozenset(found)
        return cached


def _is_byte_piece(piece: Any) -> bool:
    """``<0xAB>``: a SentencePiece byte-fallback piece."""
    return (
        isinstance(piece, str)
        and len(piece) == 6
        and piece.startswith("<0x")
        and piece.endswith(">")
        and all(c in "0123456789abcdefABCDEF" for c in piece[3:5])
    )


def quantization_config(
    load_in_8bit: bool, load_in_4bit: bool, device: torch.device, dtype: torch.dtype
) -> Any:
    """``BitsAndBytesConfig`` for an 8-bit / 4-bit LLM, or None.

    Raises ConfigError without CUDA or without bitsandbytes.
    """
    if not (load_in_8bit or load_in_4bit):
        return None
    if load_in_8bit and load_in_4bit:
        raise ConfigError("choose one of load_in_8bit and load_in_4bit")
    if device.type != "cuda":
        raise ConfigError("8-bit / 4-bit loading needs a CUDA device (bitsandbytes)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            "8-bit / 4-bit loading needs bitsandbytes: pip install 'salmonn[gpu]'"
        ) from None
    from transformers import BitsAndBytesConfig

    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype)


def add_pad_row(model: PreTrainedModel, vocab_size: int) -> None:
    """Resize the input embeddings and lm_head to ``vocab_size`` rows; new rows are exactly zero."""
    # transformers types get_input_embeddings() as any nn.Module; a causal LM's is an nn.Embedding
    old = cast(nn.Embedding, model.get_input_embeddings()).weight.shape[0]
    if old == vocab_size:
        return
    if old != vocab_size - 1:
        log.warning(
            "LLM has %d embedding rows, tokenizer+[PAD] needs %d; resizing", old, vocab_size
        )
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    if vocab_size > old:
        with torch.no_grad():
            cast(nn.Embedding, model.get_input_embeddings()).weight[old:].zero_()
            model.get_output_embeddings().weight[old:].zero_()


def wrap_lora(lm: nn.Module, rank: int, scaling: float) -> nn.Module:
    """Wrap a causal LM with LoRA adapters on every ``q_proj``/``v_proj`` (see docs/original-model.md, "Prompt and LLM").

    The adapters are float32 (peft's default upcast, as peft 0.3.0 made them) whatever the LM dtype;
    the result is frozen and in eval mode.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=rank,
        # peft annotates lora_alpha as int; it only divides it by r, and a float alpha is what gives
        # the scalings that are not whole numbers
        lora_alpha=rank * scaling,  # type: ignore[arg-type]
        lora_dropout=LORA_DROPOUT,
        target_modules=list(LORA_TARGETS),
        inference_mode=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(lm, config)
    peft_model.requires_grad_(False)
    return peft_model.eval()


def load_llm(
    path: str | Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    lora_rank: int,
    lora_scaling: float,
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
) -> tuple[nn.Module, PromptTokenizer]:
    """Load the frozen LLM, add the ``[PAD]`` row and wrap it with (empty) LoRA adapters.

    Args:
        path: HF LLaMA folder (config.json, weights, tokenizer.model).
        dtype: weight dtype of the base LLM (float16 on CUDA by default); LoRA A/B stay float32.
        lora_rank: r of the adapters (8 in the official checkpoints; the ``lora_A`` row count).
        lora_scaling: alpha / r (4.0 official; 3.0 is the official 7B demo).
    Returns:
        ``(peft_model, tokenizer)``; ``peft_model`` is in eval mode with every parameter frozen.
    """
    from transformers import LlamaForCausalLM

    tokenizer = PromptTokenizer(path)
    quant = quantization_config(load_in_8bit, load_in_4bit, device, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": str(device)})
    elif device.type == "cuda":
        kwargs["device_map"] = {"": str(device)}
    try:
        with _no_weight_bar():
            lm = LlamaForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load the LLM from {path}: {err}".splitlines()[0]) from None
    if quant is None and device.type != "cuda":
        # transformers wraps PreTrainedModel.to with @wraps(nn.Module.to), which mypy types unbound
        lm.to(device)  # type: ignore[arg-type]
    lm.requires_grad_(False)
    add_pad_row(lm, tokenizer.vocab_size + 1)
    peft_model = wrap_lora(lm, lora_rank, lora_scaling)
    log.info(
        "LLM %s: %s layers, hidden %s, vocab %d, LoRA r=%d scaling %.3g, dtype %s",
        path,
        lm.config.num_hidden_layers,
        lm.config.hidden_size,
        tokenizer.vocab_size + 1,
        lora_rank,
        lora_scaling,
        dtype,
    )
    return peft_model, tokenizer


@contextmanager
def _no_weight_bar() -> Iterator[None]:
    """Hide transformers' per-tensor "Loading weights" bar (the library never prints)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
