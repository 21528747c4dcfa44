"""Write a complete tiny random SALMONN in the official on-disk formats.

The files are written from the official layouts (:mod:`salmonn.model.formats`, docs/original-model.md,
"Checkpoints") with plain torch / transformers / sentencepiece, without our loaders or model classes, so
that they cross-check those loaders independently:

* ``whisper/``: a Hugging Face ``WhisperForConditionalGeneration`` folder (keys ``model.encoder.*``)
  and a ``preprocessor_config.json``;
* ``llm/``: a LLaMA folder (sharded safetensors with an index, ``generation_config.json``) and a
  LLaMA-like SentencePiece ``tokenizer.model`` trained on the fly;
* ``beats.pt``: ``{"cfg", "model", "label_dict"}`` with the official BEATs key names;
* ``salmonn.pth``: a raw training checkpoint ``{"model", "optimizer", "config", "scaler", "epoch"}``
  whose ``model`` holds exactly the official trainable keys plus the non-trainable tensors the released
  files carry (buffers, and copies of the shared BEATs position table).

Weights come from a seeded generator, wide enough that nothing is a silent no-op: with the usual small
initialisation a tiny LLaMA gives the same tokens for every input, and tests could not see an encoder bug.
``salmonn dev tiny-model DIR`` writes one from the command line.

About 400 lines on purpose: one writer per component, with the weight drawing they share, so that the
whole test model reads in one place; the key and shape tables live in :mod:`salmonn.model.formats`.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..constants import (
    QFORMER_HEAD_DIM,
    SAMPLE_RATE,
    WHISPER_ENCODER_FRAMES,
    WHISPER_HOP,
    WHISPER_MEL_FRAMES,
    WHISPER_N_FFT,
    WHISPER_N_MELS,
    WINDOW_SAMPLES,
    WINDOW_SECONDS,
)
from ..errors import ConfigError
from . import formats
from .formats import QFORMER_POSITIONS, salmonn_shapes, training_extras

# Token ids of the LLaMA vocabulary (docs/original-model.md, "Tokenizer"); the tiny tokenizer is
# trained with the same layout.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 0
EOS_ROW_GAIN = 2.4  # lm_head EOS row scale: about half the tiny generations stop early


def eval_prompts() -> tuple[str, ...]:
    """The 25 evaluation prompts of the original, from ``prompts/eval.json``, with the original's
    anonymous ``{}`` slots (the tokenizer corpus must cover them)."""
    data = json.loads(
        resources.files("salmonn.prompt_data").joinpath("eval.json").read_text("utf-8")
    )
    return tuple(re.sub(r"\{\w+\}", "{}", t["text"]) for t in data["templates"].values())


@dataclass(frozen=True)
class TinyModelPaths:
    """Where :func:`write_tiny_model` put each component (all absolute paths, as ``str``)."""

    root: str
    whisper: str  # HF Whisper folder
    beats: str  # BEATs .pt file
    llm: str  # HF LLaMA folder with tokenizer.model
    checkpoint: str  # SALMONN .pth file

    @classmethod
    def under(cls, root: str | Path) -> TinyModelPaths:
        """The file names a written model uses under ``root`` (absolute)."""
        root = Path(root).expanduser().absolute()
        return cls(
            root=str(root),
            whisper=str(root / "whisper"),
            beats=str(root / "beats.pt"),
            llm=str(root / "llm"),
            checkpoint=str(root / "salmonn.pth"),
        )


# ------------------------------------------------------------------------------------------ weights


_NORM_WEIGHT = re.compile(r"(norm|ln_speech|ln_audio)\.weight$", re.IGNORECASE)


def draw(
    gen: torch.Generator, name: str, shape: Sequence[int], std: float | None = None
) -> torch.Tensor:
    """A random float32 tensor for parameter ``name``, chosen so that it is never a no-op.

    Norm weights (and BEATs' ``grep_a`` gates and weight-norm gains) are ``1 ± 0.3``; biases
    ``N(0, 0.1²)``; matrices ``N(0, std²)`` with ``std`` defaulting to ``fan_in ** -0.5``.
    """
    shape = tuple(shape)
    if _NORM_WEIGHT.search(name) or name.endswith(("grep_a", "weight_g")):
        return 1.0 + 0.3 * (2.0 * torch.rand(shape, generator=gen) - 1.0)
    if name.endswith("bias") or len(shape) == 1:
        return 0.1 * torch.randn(shape, generator=gen)
    if std is None:
        std = math.prod(shape[1:]) ** -0.5
    return std * torch.randn(shape, generator=gen)


def _randomise(
    model: torch.nn.Module, gen: torch.Generator, stds: dict[str, float], skip: str = ""
) -> None:
    """Overwrite every parameter of ``model`` in place; ``stds`` maps name regexes to stds."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if skip and re.search(skip, name):
                continue
            std = next((s for pattern, s in stds.items() if re.search(pattern, name)), None)
            param.copy_(draw(gen, name, param.shape, std))


def _save_quietly(model: Any, folder: Path, **kwargs: Any) -> None:
    """``save_pretrained`` without transformers' progress bar (the library never prints)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder, **kwargs)
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------ whisper


def _write_whisper(folder: Path, gen: torch.Generator, d_model: int) -> None:
    """An HF Whisper folder: encoder of 2 layers × 2 heads, 1-layer decoder, 100-token vocab."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    # Small vocab: every special id must lie inside it, or the embedding's padding_idx check fails.
    config = WhisperConfig(
        vocab_size=100,
        num_mel_bins=WHISPER_N_MELS,
        d_model=d_model,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=2 * d_model,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=2 * d_model,
        max_source_positions=WHISPER_ENCODER_FRAMES,
        max_target_positions=32,
        pad_token_id=3,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    model = WhisperForConditionalGeneration(config).eval()
    # embed_positions keeps its sinusoidal table, as in the released checkpoints.
    _randomise(model, gen, {}, skip=r"embed_positions")
    _save_quietly(model, folder)
    write_whisper_preprocessor(folder)


def write_whisper_preprocessor(folder: Path) -> None:
    """The ``preprocessor_config.json`` of the released Whisper folders (80 mels, 30 s windows)."""
    _write_json(
        folder / "preprocessor_config.json",
        {
            "chunk_length": WINDOW_SECONDS,
            "feature_extractor_type": "WhisperFeatureExtractor",
            "feature_size": WHISPER_N_MELS,
            "hop_length": WHISPER_HOP,
            "n_fft": WHISPER_N_FFT,
            "n_samples": WINDOW_SAMPLES,
            "nb_max_frames": WHISPER_MEL_FRAMES,
            "padding_side": "right",
            "padding_value": 0.0,
            "processor_class": "WhisperProcessor",
            "return_attention_mask": False,
            "sampling_rate": SAMPLE_RATE,
        },
    )


# ---------------------------------------------------------------------------------------- tokenizer

_WORDS = (  # noqa: SIM905 - a word list reads better as text
    "the a an audio speech sound music song voice speaker person people man woman child dog bird "
    "car rain wind water door bell phone noise background clip story question answer word text "
    "language is are was were be has have had can could should would will do does did not no yes "
    "only very loud quiet soft fast slow happy sad angry calm clear short long first then after "
    "before while hear listen say says talk talking sing play describe write read give tell "
    "recognize transcribe translate answer think know see make go come take find explain "
    "summarize in on at of to for with from by about into over under between and or but because "
    "so if when where what who which how why this that these those it he she they we you I my "
    "your their his her our one two three four five"
).split()


def tokenizer_corpus() -> list[str]:
    """Deterministic English text with every word of the chat template and the evaluation prompts, one sentence
    per line.

    No line holds a newline, so that ``"\\n"`` becomes the byte-fallback piece ``<0x0A>`` as in
    LLaMA.
    """
    lines = [
        "USER: <Speech><SpeechHere></Speech> Describe the audio.\nASSISTANT: A dog barks twice.",
        "USER: <Speech>",
        "</Speech> Describe the audio.\nASSISTANT:",
        "</Speech> Please describe the audio.\nASSISTANT:",
    ]
    prompts = eval_prompts()
    lines += [f"USER: {prompt}\nASSISTANT:" for prompt in prompts]
    lines += list(prompts)
    n = len(_WORDS)
    for i in range(400):  # filler sentences: a fixed walk through the word list, with digits
        words = [_WORDS[(i * 7 + j * (i % 11 + 3)) % n] for j in range(6 + i % 9)]
        lines.append(" ".join(words).capitalize() + (". " if i % 3 else "? ") + f"{i * 37 % 1000}")
    return [part for line in lines for part in line.split("\n")]


def write_tokenizer(folder: Path, vocab_size: int) -> int:
    """Train a LLaMA-like BPE SentencePiece model and write the LLaMA tokenizer files."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenizer_corpus()),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="bpe",
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=-1,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        num_threads=1,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(buffer.getvalue())
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "LlamaTokenizer",
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": False,
            "clean_up_tokenization_spaces": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": None,
            "model_max_length": 2048,
            "padding_side": "right",
        },
    )
    _write_json(
        folder / "special_tokens_map.json",
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    )
    return spm.SentencePieceProcessor(model_proto=buffer.getvalue()).get_piece_size()


# ---------------------------------------------------------------------------------------------- llm


def _write_llm(
    folder: Path, gen: torch.Generator, hidden: int, layers: int, vocab_size: int
) -> Any:
    """A LLaMA folder (4 heads, FFN 2×hidden, eps 1e-6) in shards; returns its ``LlamaConfig``."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder, vocab_size)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    _randomise(model, gen, {r"embed_tokens|lm_head|self_attn\.[qkvo]_proj": 0.3})
    with torch.no_grad():
        model.lm_head.weight[EOS_ID] *= EOS_ROW_GAIN
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID
    )
    # Several shards and an index, like the released Vicuna folders.
    size_kb = math.ceil(sum(p.numel() for p in model.parameters()) * 4 / 1024 / 3)
    _save_quietly(model, folder, max_shard_size=f"{size_kb}KB")
    return config


def rotary_inv_freq(config: Any) -> torch.Tensor:
    """The ``rotary_emb.inv_freq`` buffer of transformers 4.28 LLaMA: ``[head_dim/2]`` float32."""
    head_dim = config.hidden_size // config.num_attention_heads
    theta = float(getattr(config, "rope_theta", None) or 10000.0)
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))


# -------------------------------------------------------------------------------------------- beats


def beats_cfg(d_model: int, layers: int = 2) -> dict[str, Any]:
    """The official BEATs ``cfg`` with tiny widths: patch embedding 32, feed-forward ``2 * d_model``."""
    return formats.beats_cfg(d_model, layers, embed_dim=32, ffn_dim=2 * d_model)


def draw_beats_state(gen: torch.Generator, cfg: dict[str, Any]) -> OrderedDict[str, torch.Tensor]:
    """Random BEATs weights; every layer carries the same relative-position table (layer 0's, shared)."""
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    table: torch.Tensor | None = None
    for name, shape in formats.beats_shapes(cfg):
        if name.endswith("relative_attention_bias.weight"):
            table = 0.5 * torch.randn(shape, generator=gen) if table is None else table
            state[name] = table.clone()
        else:
            state[name] = draw(gen, name, shape)
    return state


# ------------------------------------------------------------------------------------------ salmonn


def draw_salmonn_state(
    gen: torch.Generator,
    shapes: Iterable[tuple[str, tuple[int, ...]]],
    llm_config: Any,
    beats_state: dict[str, torch.Tensor],
    beats_layers: int,
) -> OrderedDict[str, torch.Tensor]:
    """The checkpoint's ``model`` dict: trainable tensors, plus the buffers and BEATs table copies."""
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, shape in shapes:
        std = 1.0 if name == "speech_query_tokens" else 0.1 if "lora_B" in name else None
        state[name] = draw(gen, name, shape, std)
    state["speech_Qformer.bert.embeddings.position_ids"] = torch.arange(
        QFORMER_POSITIONS
    ).unsqueeze(0)
    inv_freq = rotary_inv_freq(llm_config)
    for i in range(llm_config.num_hidden_layers):
        state[f"llama_model.base_model.model.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = (
            inv_freq.clone()
        )
    for i in range(
        1, beats_layers
    ):  # layers >= 1 share layer 0's frozen table; state_dict repeats it
        key = f"encoder.layers.{i}.self_attn.relative_attention_bias.weight"
        state[f"beats.{key}"] = beats_state[key].clone()
    return state


# -------------------------------------------------------------------------------------------- entry


def write_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    whisper_d: int = 64,
    beats_d: int = 128,
    qformer_hidden: int = 128,
    llm_hidden: int = 64,
    llm_layers: int = 2,
    vocab_size: int = 600,
) -> TinyModelPaths:
    """Write a complete tiny random SALMONN under ``out_dir`` (created if needed).

    The result is deterministic in ``seed`` (for a given transformers / sentencepiece version).

    Widths: Whisper ``whisper_d`` (2 layers, 2 heads), BEATs ``beats_d`` (2 layers, heads of 64),
    Q-Former ``qformer_hidden`` (2 layers, heads of 64, encoder width ``whisper_d + beats_d``),
    LLaMA ``llm_hidden`` (``llm_layers`` layers, 4 heads), SentencePiece vocab of ``vocab_size``.
    """
    for name, width in (("beats_d", beats_d), ("qformer_hidden", qformer_hidden)):
        if width <= 0 or width % QFORMER_HEAD_DIM:
            raise ConfigError(
                f"{name} must be a positive multiple of {QFORMER_HEAD_DIM}, got {width}"
            )
    if llm_hidden <= 0 or llm_hidden % 8 or whisper_d <= 0 or whisper_d % 2:
        raise ConfigError(
            f"llm_hidden must be a multiple of 8 and whisper_d even, got {llm_hidden}, {whisper_d}"
        )
    paths = TinyModelPaths.under(out_dir)
    Path(paths.root).mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # module constructors draw from the global RNG
        torch.manual_seed(seed)
        _write_whisper(Path(paths.whisper), gen, whisper_d)
        llm_config = _write_llm(Path(paths.llm), gen, llm_hidden, llm_layers, vocab_size)
    cfg = beats_cfg(beats_d)
    beats_state = draw_beats_state(gen, cfg)
    labels = {i: f"/m/tiny{i:03d}" for i in range(cfg["predictor_class"])}
    torch.save({"cfg": cfg, "model": beats_state, "label_dict": labels}, paths.beats)
    shapes = salmonn_shapes(whisper_d, beats_d, qformer_hidden, llm_hidden, llm_layers)
    model_state = draw_salmonn_state(gen, shapes, llm_config, beats_state, cfg["encoder_layers"])
    torch.save(
        {"model": model_state, **training_extras(model_state, len(shapes))}, paths.checkpoint
    )
    return paths
