"""Write random SALMONN weights at the released sizes, in the official on-disk layouts.

Real weights cannot be part of a test suite; memory and speed at scale can still be measured on
random ones (``benchmarks/bench_real_size.py``). :data:`SALMONN_7B` gives about 21 GB:

* ``whisper/``: whisper-large-v2's Hugging Face folder (encoder and decoder, one float32
  ``model.safetensors``, 6.2 GB; the encoder's position table is the sinusoidal one);
* ``beats.pt``: the fine-tuned BEATs file (``cfg``, ``model``, ``label_dict``), 0.36 GB;
* ``llm/``: a Vicuna-7B-shaped LLaMA folder (32 x 4096, FFN 11008, float16 safetensors shards with
  an index, 13.5 GB) and a 32,000-piece SentencePiece tokenizer, so that the embedding grows to
  32,001 rows as the released one does;
* ``salmonn.pth``: the 7B checkpoint's keys and shapes with the training state beside them.

Unlike :mod:`salmonn.model.tiny` no model is built: names and shapes come from models on the
``meta`` device (or :mod:`salmonn.model.formats`), and tensors are drawn, cast and written a shard
at a time, so that writing needs about Whisper's file in memory, not the whole model's.
:data:`SMALL` has the same files and vocabulary at small widths (seconds to write; tests use it).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from . import formats
from .footprint import llm_parameters
from .formats import salmonn_shapes, training_extras
from .tiny import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TinyModelPaths,
    draw,
    draw_beats_state,
    draw_salmonn_state,
    write_tokenizer,
    write_whisper_preprocessor,
)

SHARD_BYTES = 2 * 1024**3  # the LLM's shards, as save_pretrained's default of recent versions
WHISPER_VOCAB = 51865  # whisper-large-v2's multilingual vocabulary
WHISPER_EOT, WHISPER_SOT = 50257, 50258
SIZES_FILE = "random-model.json"  # what was written, so that a later run can reuse the folder


@dataclass(frozen=True)
class Sizes:
    """Widths of every component; the defaults are SALMONN-7B's."""

    whisper_d: int = 1280
    whisper_layers: int = 32
    whisper_heads: int = 20
    beats_d: int = 768
    beats_layers: int = 12
    beats_patch_dim: int = 512
    qformer_hidden: int = 768
    llm_hidden: int = 4096
    llm_layers: int = 32
    llm_heads: int = 32
    llm_ffn: int = 11008
    vocab: int = 32000

    def llm_config(self) -> dict[str, int]:
        """The LLaMA's ``config.json`` fields that fix its shapes."""
        return {
            "vocab_size": self.vocab,
            "hidden_size": self.llm_hidden,
            "intermediate_size": self.llm_ffn,
            "num_hidden_layers": self.llm_layers,
            "num_attention_heads": self.llm_heads,
        }

    def file_bytes(self) -> int:
        """About what the files take on disk (LLM float16, the rest float32)."""
        d, layers = self.whisper_d, self.whisper_layers
        whisper = layers * (12 + 16) * d * d + WHISPER_VOCAB * d + (1500 + 448) * d
        beats = 12 * self.beats_layers * self.beats_d**2
        return 2 * llm_parameters(self.llm_config()) + 4 * (whisper + beats) + 64 * 2**20


SALMONN_7B = Sizes()
SMALL = Sizes(
    whisper_d=64,
    whisper_layers=2,
    whisper_heads=2,
    beats_d=128,
    beats_layers=2,
    beats_patch_dim=32,
    qformer_hidden=128,
    llm_hidden=128,
    llm_layers=2,
    llm_heads=4,
    llm_ffn=256,
)


def written_sizes(root: str | Path) -> Sizes | None:
    """The sizes a finished :func:`write_random_model` left in ``root``; None if it did not finish."""
    marker = Path(root) / SIZES_FILE
    if not marker.is_file():
        return None
    return Sizes(**json.loads(marker.read_text(encoding="utf-8"))["sizes"])


# ------------------------------------------------------------------------------------------ writing


def _sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's encoder position table: sines then cosines, timescales from 1 to 10,000."""
    step = math.log(10_000) / (channels // 2 - 1)
    inv = torch.exp(-step * torch.arange(channels // 2, dtype=torch.float32))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _meta_shapes(model_class: type, config: object) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes of ``model_class(config)``, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = model_class(config)
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def _write_whisper(folder: Path, gen: torch.Generator, sizes: Sizes) -> None:
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    d, layers, heads = sizes.whisper_d, sizes.whisper_layers, sizes.whisper_heads
    config = WhisperConfig(
        vocab_size=WHISPER_VOCAB,
        num_mel_bins=80,
        d_model=d,
        encoder_layers=layers,
        encoder_attention_heads=heads,
        encoder_ffn_dim=4 * d,
        decoder_layers=layers,
        decoder_attention_heads=heads,
        decoder_ffn_dim=4 * d,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=WHISPER_EOT,
        bos_token_id=WHISPER_EOT,
        eos_token_id=WHISPER_EOT,
        decoder_start_token_id=WHISPER_SOT,
    )
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    write_whisper_preprocessor(folder)
    state = {}
    for name, shape in _meta_shapes(WhisperForConditionalGeneration, config):
        if name == "proj_out.weight":  # tied to the decoder's embedding, absent from the file
            continue
        if name == "model.encoder.embed_positions.weight":
            state[name] = _sinusoids(*shape)
        else:
            state[name] = draw(gen, name, shape)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _extend_tokenizer(folder: Path, vocab: int) -> None:
    """Pad ``tokenizer.model`` to ``vocab`` pieces with pieces no text can produce (no merge reaches
    them), so that the vocabulary has the released size and encoding is unchanged."""
    from sentencepiece import sentencepiece_model_pb2

    path = folder / "tokenizer.model"
    # protobuf's builder makes the message classes at import: no stub can name them
    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(path.read_bytes())
    score = min(piece.score for piece in proto.pieces) - 1.0
    n = 0
    while len(proto.pieces) < vocab:
        piece = proto.pieces.add()
        piece.piece, piece.score = f"\u2581<filler{n}>", score - n
        n += 1
    proto.trainer_spec.vocab_size = vocab
    path.write_bytes(proto.SerializeToString())


def _shards(named: list[tuple[str, tuple[int, ...]]], item_bytes: int) -> list[list[int]]:
    """Indices of ``named`` per shard, each shard at most SHARD_BYTES (or one tensor)."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, shape) in enumerate(named):
        nbytes = math.prod(shape) * item_bytes
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    return shards


def _write_llm(folder: Path, gen: torch.Generator, sizes: Sizes) -> object:
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder, 600)
    _extend_tokenizer(folder, sizes.vocab)
    shapes: dict[str, Any] = sizes.llm_config()  # int fields of LlamaConfig, by name
    config = LlamaConfig(
        **shapes,
        num_key_value_heads=sizes.llm_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    config.dtype = torch.float16
    config.save_pretrained(folder)
    GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID).save_pretrained(
        folder
    )
    named = _meta_shapes(LlamaForCausalLM, config)
    shards = _shards(named, 2)
    weight_map, total = {}, 0
    for k, indices in enumerate(shards, start=1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        state = {}
        for i in indices:
            name, shape = named[i]
            state[name] = draw(gen, name, shape).to(torch.float16)
            weight_map[name] = file
            total += state[name].numel() * 2
        save_file(state, str(folder / file), metadata={"format": "pt"})
        del state
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return config


def write_random_model(
    out_dir: str | Path, sizes: Sizes = SALMONN_7B, *, seed: int = 0
) -> TinyModelPaths:
    """Write random weights of ``sizes`` under ``out_dir`` (checks the free space first).

    Deterministic in ``seed``. A file ``random-model.json`` is written last: a folder without it
    holds an unfinished write and is written again.
    """
    paths = TinyModelPaths.under(out_dir)
    root = Path(paths.root)
    root.mkdir(parents=True, exist_ok=True)
    (root / SIZES_FILE).unlink(missing_ok=True)
    need, free = sizes.file_bytes(), shutil.disk_usage(root).free
    if free < need * 1.05:
        raise ConfigError(
            f"{root}: {free / 1e9:.1f} GB free, the random model needs about {need / 1e9:.1f} GB"
        )
    gen = torch.Generator().manual_seed(seed)
    _write_whisper(Path(paths.whisper), gen, sizes)
    llm_config = _write_llm(Path(paths.llm), gen, sizes)
    cfg = formats.beats_cfg(sizes.beats_d, sizes.beats_layers, embed_dim=sizes.beats_patch_dim)
    beats_state = draw_beats_state(gen, cfg)
    labels = {i: f"/m/random{i:03d}" for i in range(cfg["predictor_class"])}
    torch.save({"cfg": cfg, "model": beats_state, "label_dict": labels}, paths.beats)
    shapes = salmonn_shapes(
        sizes.whisper_d, sizes.beats_d, sizes.qformer_hidden, sizes.llm_hidden, sizes.llm_layers
    )
    state = draw_salmonn_state(gen, shapes, llm_config, beats_state, cfg["encoder_layers"])
    torch.save({"model": state, **training_extras(state, len(shapes))}, paths.checkpoint)
    written = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    marker = {"sizes": asdict(sizes), "seed": seed, "bytes": written}
    (root / SIZES_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return paths
