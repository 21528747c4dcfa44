"""The released SALMONN presets and the syntax of a component source (no network, no heavy imports).

A component source is one of

* a local path (``str`` or ``Path``) that exists: used as is, the hub is never touched;
* ``"hf://[models/|spaces/|datasets/]org/name[@revision][/path/in/repo]"``: a file when a path is
  given, else the whole repository (a folder component);
* ``"org/name[@revision][:path/in/repo]"``: the same, for a string that is not an existing path;
* a :class:`HubSource`.

:mod:`salmonn.hub.resolve` turns sources into local paths (cache look-up, download).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..constants import DEFAULT_LORA_SCALING
from ..errors import ConfigError

# Hugging Face model folders; the other components are single files
FOLDER_COMPONENTS = frozenset({"whisper", "llm"})
REPO_TYPES = ("model", "space", "dataset")


@dataclass(frozen=True)
class HubSource:
    """A Hub repository (``filename`` None: the whole repo, a folder) or one file in it."""

    repo_id: str
    filename: str | None = None
    repo_type: str = "model"
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.repo_type not in REPO_TYPES:
            raise ConfigError(
                f"repo_type must be one of {', '.join(REPO_TYPES)}, got {self.repo_type!r}"
            )

    def __str__(self) -> str:
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        rev = f"@{self.revision}" if self.revision else ""
        path = f"/{self.filename}" if self.filename else ""
        return f"hf://{kind}{self.repo_id}{rev}{path}"


Source = str | Path | HubSource


@dataclass(frozen=True)
class Preset:
    """A released SALMONN: its checkpoint and the encoders / LLM it was trained with.

    See docs/original-model.md, "Presets and downloads". ``lora_scaling`` is the default used here
    (alpha / r = 32 / 8); ``demo_lora_scaling`` is what the official demo used, when it differs.
    ``llm_hidden`` is the released LLM's width, for information: loading checks the components
    against each other (checkpoint projection vs LLM config), not against the preset.
    """

    name: str
    checkpoint: HubSource
    whisper: HubSource
    beats: HubSource
    llm: HubSource
    llm_hidden: int
    lora_scaling: float = DEFAULT_LORA_SCALING
    demo_lora_scaling: float | None = None
    description: str = ""

    def source(self, component: str) -> HubSource:
        return getattr(self, component)


# BEATs cpt2 has no model repository of its own: the official demo Space carries it.
_BEATS = HubSource(
    "tsinghua-ee/SALMONN-7B-gradio",
    "beats/BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt",
    repo_type="space",
)
_WHISPER = HubSource("openai/whisper-large-v2")

PRESETS: dict[str, Preset] = {
    "salmonn-13b": Preset(
        name="salmonn-13b",
        checkpoint=HubSource("tsinghua-ee/SALMONN", "salmonn_v1.pth"),
        whisper=_WHISPER,
        beats=_BEATS,
        llm=HubSource("lmsys/vicuna-13b-v1.1"),
        llm_hidden=5120,
        description="SALMONN-13B v1 (salmonn_v1.pth) with Vicuna-13B v1.1",
    ),
    "salmonn-7b": Preset(
        name="salmonn-7b",
        checkpoint=HubSource("tsinghua-ee/SALMONN-7B", "salmonn_7b_v0.pth"),
        whisper=_WHISPER,
        beats=_BEATS,
        llm=HubSource("lmsys/vicuna-7b-v1.5"),
        llm_hidden=4096,
        demo_lora_scaling=3.0,
        description="SALMONN-7B v0 (salmonn_7b_v0.pth) with Vicuna-7B v1.5; the official demo used "
        "LoRA scaling 3.0",
    ),
}


def get_preset(preset: str | Preset) -> Preset:
    """The :class:`Preset` named ``preset`` (a Preset is returned as is); unknown: ConfigError."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[preset]


_REPO = r"[A-Za-z0-9][\w.-]*/[\w.-]+"
_PLAIN_RE = re.compile(rf"^(?P<repo>{_REPO})(?:@(?P<rev>[^:/\s]+))?(?::(?P<file>\S.*))?$")
_URI_RE = re.compile(
    rf"^hf://(?:(?P<kind>models|spaces|datasets)/)?(?P<repo>{_REPO}?)"
    r"(?:@(?P<rev>[^/\s]+))?(?:/(?P<file>.+))?$"
)


def parse_source(source: Source) -> Path | HubSource:
    """Turn a component source into a local ``Path`` or a :class:`HubSource` (see module doc)."""
    if isinstance(source, HubSource):
        return source
    if isinstance(source, Path):
        return source.expanduser()
    text = str(source).strip()
    if text.startswith("hf://"):
        match = _URI_RE.match(text)
        if not match:
            raise ConfigError(
                f"bad hub source {text!r}: expected hf://[spaces/]org/name[@rev][/file]"
            )
        kind = (match["kind"] or "models")[:-1]
        return HubSource(match["repo"], match["file"], kind, match["rev"])
    local = Path(text).expanduser()
    if local.exists() or text.startswith((".", "/", "~")):
        return local
    match = _PLAIN_RE.match(text)
    return HubSource(match["repo"], match["file"], "model", match["rev"]) if match else local
