"""``build_model``: assemble a :class:`SalmonnModel` from its four components, check the checkpoint.

The original loads the SALMONN checkpoint with ``strict=False``, so a wrong LLM or a misnamed key
gives empty answers without an error (see docs/original-model.md, "Checkpoints"). Here every checkpoint key must land
on a parameter or be one of the known extras, every trainable SALMONN parameter
(Q-Former, query, ln_speech, ln_audio, projector, every LoRA A/B) must be loaded, shapes must agree,
and the classic mismatches get one-line errors that say how to fix them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, name_some
from .qformer import QFormerConfig
from .salmonn_model import SalmonnModel
from .weights import load_torch_file

log = logging.getLogger(__name__)

PROJ_KEY = "speech_llama_proj.weight"
_LORA = re.compile(
    r"^llama_model\.base_model\.model\.model\.layers\.(\d+)\.self_attn\.\w+\.lora_([AB])\."
)
_OLD_LORA = re.compile(r"(\.lora_[AB])\.weight$")  # peft <= 0.2 naming, no ".default."
_TRAINABLE_PREFIXES = (
    "speech_query_tokens",
    "ln_speech.",
    "ln_audio.",
    "speech_Qformer.",
    "speech_llama_proj.",
)
_ROTARY = re.compile(r"^llama_model\..*\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
_ROTARY_OWN = "llama_model.base_model.model.model.rotary_emb.inv_freq"  # transformers 5: one table
_POSITION_IDS = "speech_Qformer.bert.embeddings.position_ids"
# The Q-Former's text branch: the October 2023 code kept these modules (a later revision deletes them); the query
# path never uses them (see docs/original-model.md, "Checkpoints"), so a checkpoint that carries them loads all the same.
_QFORMER_TEXT_BRANCH = re.compile(
    r"^speech_Qformer\.(cls\.|bert\.embeddings\.(word|position)_embeddings\."
    r"|bert\.encoder\.layer\.\d+\.(intermediate|output)\.)"
)
_BEATS_BIAS = re.compile(
    r"^beats\.encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.weight$"
)
_BEATS_BIAS0 = "beats.encoder.layers.0.self_attn.relative_attention_bias.weight"
_OFFICIAL = {5120: "SALMONN-13B, needs vicuna-13b-v1.1", 4096: "SALMONN-7B, needs vicuna-7b-v1.5"}
_OFFICIAL_QFORMER = 768


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``model`` state dict of a SALMONN training checkpoint (optimizer state is dropped).

    LoRA keys of peft <= 0.2 (``...lora_A.weight``) are renamed to the ``...lora_A.default.weight``
    form of peft 0.3 that the official checkpoints use. Zip-format files are memory-mapped, so the
    optimizer state (about 2/3 of an official file) is never read.
    """
    if not Path(path).is_file():
        raise CheckpointError(f"SALMONN checkpoint not found: {path}")
    raw = load_torch_file(path, error="cannot read the SALMONN checkpoint {path}: {reason}")
    if not isinstance(raw, Mapping) or not isinstance(raw.get("model"), Mapping):
        found = (
            ", ".join(map(str, list(raw)[:5])) if isinstance(raw, Mapping) else type(raw).__name__
        )
        raise CheckpointError(
            f"{path} is not a SALMONN checkpoint: it has no 'model' entry (found: {found})"
        )
    state = {}
    for key, value in raw["model"].items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} of 'model' is not a tensor")
        state[_OLD_LORA.sub(r"\1.default.weight", key) if ".lora_" in key else key] = value
    return state


@dataclass(frozen=True)
class CheckpointLayout:
    """What a SALMONN checkpoint implies: Q-Former sizes, LLM width, LoRA rank and layer count."""

    qformer: QFormerConfig
    llm_width: int
    lora_rank: int
    lora_layers: int

    @classmethod
    def from_state(
        cls, state: Mapping[str, torch.Tensor], path: str | Path = ""
    ) -> CheckpointLayout:
        """Infer the layout from tensor shapes; no projector or no LoRA is an error."""
        qformer = QFormerConfig.from_state_dict(state, "speech_Qformer.")
        if PROJ_KEY not in state:
            raise CheckpointError(
                f"{path}: no {PROJ_KEY} in the checkpoint; is it a SALMONN checkpoint?"
            )
        lora = [(m, v) for k, v in state.items() if (m := _LORA.match(k)) is not None]
        if not lora:
            raise CheckpointError(
                f"{path}: the checkpoint has no LoRA weights (llama_model.base_model.model.model."
                "layers.N.self_attn.q_proj.lora_A.default.weight); is it a SALMONN checkpoint?"
            )
        ranks = {v.shape[0] for m, v in lora if m.group(2) == "A"}
        if len(ranks) != 1:
            raise CheckpointError(f"{path}: LoRA A matrices have different ranks {sorted(ranks)}")
        layers = max(int(m.group(1)) for m, _ in lora) + 1
        return cls(qformer, int(state[PROJ_KEY].shape[0]), ranks.pop(), layers)


def _describe_width(width: int) -> str:
    return f"{width} ({_OFFICIAL[width]})" if width in _OFFICIAL else str(width)


def check_llm(layout: CheckpointLayout, llm_path: str | Path) -> None:
    """Fail fast (before loading weights) when the LLM folder does not fit the checkpoint."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(llm_path))
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot read the LLM config in {llm_path}: {err}".splitlines()[0]
        ) from None
    hidden, layers = int(config.hidden_size), int(config.num_hidden_layers)
    if layout.llm_width != hidden:
        raise CheckpointError(
            f"checkpoint projects to {_describe_width(layout.llm_width)} but the LLM at "
            f"{llm_path} has hidden size {hidden}: use the LLM the checkpoint was trained with"
        )
    if layout.lora_layers != layers:
        raise CheckpointError(
            f"checkpoint has LoRA weights for {layout.lora_layers} LLM layers but the LLM at "
            f"{llm_path} has {layers} layers: use the LLM the checkpoint was trained with"
        )


def check_encoders(
    layout: CheckpointLayout, whisper_path: str | Path, beats_path: str | Path, beats_width: int
) -> None:
    """The Q-Former reads Whisper + BEATs channels; official checkpoints need Whisper large-v2."""
    from .encoders.whisper import is_large_v2_shaped, whisper_encoder_width

    whisper_width = whisper_encoder_width(whisper_path)  # validates the folder's config.json
    whisper_config = json.loads((Path(whisper_path) / "config.json").read_text(encoding="utf-8"))

    official = layout.llm_width in _OFFICIAL and layout.qformer.hidden_size == _OFFICIAL_QFORMER
    if official and not is_large_v2_shaped(whisper_config):
        raise CheckpointError(
            f"the checkpoint is an official SALMONN checkpoint ({_OFFICIAL[layout.llm_width]}) "
            f"but the Whisper folder {whisper_path} is not whisper-large-v2 (width "
            f"{whisper_width}): use openai/whisper-large-v2"
        )
    expected = layout.qformer.encoder_width
    if whisper_width + beats_width != expected:
        raise CheckpointError(
            f"checkpoint's Q-Former reads {expected} channels but Whisper at {whisper_path} gives "
            f"{whisper_width} and BEATs at {beats_path} gives {beats_width} "
            f"(sum {whisper_width + beats_width}): use the encoders the checkpoint was trained "
            "with"
        )


def _is_trainable(name: str) -> bool:
    return name.startswith(_TRAINABLE_PREFIXES) or ".lora_" in name


def apply_checkpoint(
    model: SalmonnModel, state: Mapping[str, torch.Tensor], path: str | Path = ""
) -> None:
    """Copy the checkpoint into ``model`` after checking key coverage and shapes both ways."""
    own: dict[str, torch.Tensor] = dict(model.named_parameters())
    own.update(model.named_buffers())
    unexpected, wrong_shape, loaded = [], [], {}
    for key, value in state.items():
        if key in own:
            if tuple(own[key].shape) != tuple(value.shape):
                wrong_shape.append(f"{key} {list(value.shape)} vs model {list(own[key].shape)}")
            else:
                loaded[key] = value
        elif not _known_extra(own, key, value, path):
            unexpected.append(key)
    if unexpected:
        raise CheckpointError(
            f"{path}: {len(unexpected)} checkpoint key(s) match no model parameter: "
            f"{name_some(unexpected)}"
        )
    if wrong_shape:
        raise CheckpointError(
            f"{path}: {len(wrong_shape)} shape mismatch(es): {name_some(wrong_shape)}"
        )
    missing = sorted(k for k in own if _is_trainable(k) and k not in loaded)
    if missing:
        lora = [k for k in missing if ".lora_" in k]
        what = f" ({len(lora)} of them LoRA)" if lora else ""
        raise CheckpointError(
            f"{path}: the checkpoint lacks {len(missing)} SALMONN weight(s){what}: "
            f"{name_some(missing)}"
        )
    with torch.no_grad():
        for key, value in loaded.items():
            own[key].copy_(value)
    groups: dict[str, int] = {}
    for key in loaded:
        group = "lora" if ".lora_" in key else key.split(".", 1)[0]
        groups[group] = groups.get(group, 0) + 1
    log.info(
        "checkpoint %s: loaded %d tensors (%s)",
        path,
        len(loaded),
        ", ".join(f"{g} {n}" for g, n in sorted(groups.items())),
    )


def _known_extra(
    own: Mapping[str, torch.Tensor], key: str, value: torch.Tensor, path: str | Path
) -> bool:
    """Non-trainable tensors the original's checkpoint carries (see docs/original-model.md, "Checkpoints")."""
    if key == _POSITION_IDS or _QFORMER_TEXT_BRANCH.match(key):
        return True  # unused by the query path
    if _ROTARY.match(key):  # derived from the LLM config: check it against the loaded LLM's table
        table = own.get(_ROTARY_OWN)
        if (
            table is not None
            and table.shape == value.shape
            and not torch.allclose(table.detach().cpu().float(), value.float(), rtol=1e-3)
        ):
            raise CheckpointError(
                f"{path}: the checkpoint's rotary frequencies ({key}) differ from the LLM's: "
                "use the LLM the checkpoint was trained with"
            )
        return True
    match = _BEATS_BIAS.match(key)
    if match and int(match.group(1)) >= 1:
        table = own.get(_BEATS_BIAS0)
        if table is not None and not torch.equal(table.detach().cpu().float(), value.float()):
            raise CheckpointError(
                f"{path}: the checkpoint's copy of the BEATs relative position table ({key}) "
                "differs from the BEATs file: use the BEATs checkpoint SALMONN was trained with"
            )
        return True
    return False


def build_model(
    whisper: str | Path,
    beats: str | Path,
    llm: str | Path,
    checkpoint: str | Path,
    *,
    preset: str | None = None,
    device: torch.device,
    dtype: torch.dtype,
    lora_scaling: float,
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    exact: bool = False,
) -> SalmonnModel:
    """Build SALMONN from four local component files/folders and check the checkpoint against them.

    :func:`salmonn.load_model` (which resolves presets and the hub cache first) is the public way in;
    this is its second half. ``preset`` is only recorded in the model's identity.
    """
    from .encoders.beats_file import load_beats
    from .encoders.whisper import load_whisper_encoder
    from .llm import load_llm, quantization_config

    dev, dt = device, dtype
    quantization_config(load_in_8bit, load_in_4bit, dev, dt)  # fail before loading anything
    state = read_checkpoint(checkpoint)
    layout = CheckpointLayout.from_state(state, checkpoint)
    check_llm(layout, llm)
    beats_model = load_beats(beats, dev)
    check_encoders(layout, whisper, beats, int(beats_model.output_dim))
    speech_encoder = load_whisper_encoder(whisper, dev, torch.float32)
    lm, tokenizer = load_llm(
        llm,
        device=dev,
        dtype=dt,
        lora_rank=layout.lora_rank,
        lora_scaling=lora_scaling,
        load_in_8bit=load_in_8bit,
        load_in_4bit=load_in_4bit,
    )
    identity = {
        "preset": preset,
        "whisper": str(Path(whisper).resolve()),
        "beats": str(Path(beats).resolve()),
        "llm": str(Path(llm).resolve()),
        "checkpoint": str(Path(checkpoint).resolve()),
        "quantization": "8bit" if load_in_8bit else "4bit" if load_in_4bit else None,
    }
    model = SalmonnModel(
        speech_encoder,
        beats_model,
        layout.qformer,
        lm,
        tokenizer,
        device=dev,
        dtype=dt,
        identity=identity,
        exact=exact,
    )
    apply_checkpoint(model, state, checkpoint)
    log.info(
        "SALMONN ready on %s (%s), LoRA scaling %g",
        dev,
        str(dt).removeprefix("torch."),
        lora_scaling,
    )
    return model
