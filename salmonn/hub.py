"""Presets and resolution of the four SALMONN components: a local path or a Hugging Face source.

A component source is one of

* a local path (``str`` or ``Path``) that exists: used as is, the hub is never touched;
* ``"hf://[models/|spaces/|datasets/]org/name[@revision][/path/in/repo]"``: a file when a path is
  given, else the whole repository (a folder component);
* ``"org/name[@revision][:path/in/repo]"``: the same, for a string that is not an existing path;
* a :class:`HubSource`.

``huggingface_hub`` and ``torch`` are imported lazily so that the CLI starts fast. The cache folder
and offline mode (``HF_HUB_OFFLINE``) are read from the environment at each call.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .constants import DEFAULT_LORA_SCALING
from .errors import CheckpointError, ConfigError

COMPONENTS = ("whisper", "beats", "llm", "checkpoint")
FOLDER_COMPONENTS = frozenset({"whisper", "llm"})
REPO_TYPES = ("model", "space", "dataset")

# Files fetched for a folder component; weight files are added by format (safetensors preferred).
_FOLDER_FILES = {
    "whisper": ["config.json", "preprocessor_config.json", "generation_config.json"],
    "llm": [
        "config.json",
        "generation_config.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ],
}
_REQUIRED_FILES = {
    "whisper": ("config.json", "preprocessor_config.json"),
    "llm": ("config.json", "tokenizer.model"),
}
# Weight layouts in transformers' order of preference: (file that identifies it, patterns to fetch).
_WEIGHT_CHOICES = (
    ("model.safetensors",),
    ("model.safetensors.index.json", "model-*-of-*.safetensors"),
    ("pytorch_model.bin",),
    ("pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"),
)
_WEIGHT_FALLBACK = ("*.safetensors", "*.bin")


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
    """A released SALMONN: its checkpoint and the encoders / LLM it was trained with (spec §0, §12).

    ``lora_scaling`` is the default used here (α/r = 32/8); ``demo_lora_scaling`` is what the
    official demo used, when it differs.
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


@dataclass(frozen=True)
class ResolvedComponents:
    """Local paths: ``whisper``/``llm`` folders, ``beats``/``checkpoint`` files."""

    whisper: Path
    beats: Path
    llm: Path
    checkpoint: Path
    preset: str | None = None


@dataclass(frozen=True)
class ComponentStatus:
    """What :func:`cached_status` found for one component."""

    component: str
    source: str
    cached: bool
    path: Path | None
    size_bytes: int
    detail: str = ""


@dataclass(frozen=True)
class BeatsFileInfo:
    """Result of :func:`verify_beats_file`; ``official``: the released 12 × 768 cpt2 config."""

    path: Path
    official: bool
    encoder_layers: int
    encoder_embed_dim: int
    max_distance: int | None
    num_tensors: int


# ------------------------------------------------------------------------------------------ sources

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


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The hub cache in use: ``cache_dir``, else ``HF_HUB_CACHE``, else ``HF_HOME/hub``, ..."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return Path(env[name]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = (
        Path(env["XDG_CACHE_HOME"]).expanduser()
        if env.get("XDG_CACHE_HOME")
        else Path.home() / ".cache"
    )
    return xdg / "huggingface" / "hub"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value (1, true, yes, on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


# --------------------------------------------------------------------------------------- resolution


def get_preset(preset: str | Preset) -> Preset:
    """The :class:`Preset` named ``preset`` (a Preset is returned as is); unknown: ConfigError."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[preset]


def resolve_components(
    preset: str | Preset | None = None,
    whisper: Source | None = None,
    beats: Source | None = None,
    llm: Source | None = None,
    checkpoint: Source | None = None,
    *,
    download: bool = True,
    cache_dir: str | Path | None = None,
) -> ResolvedComponents:
    """Local paths for the four components; explicit arguments win over the preset's sources.

    An existing local path is used as is. A hub source is taken from the local cache, and
    downloaded when missing unless ``download`` is False or ``HF_HUB_OFFLINE`` is set. Raises
    ``ConfigError`` when a component has no source, ``CheckpointError`` (one line, with the fix)
    when one cannot be obtained.
    """
    chosen = get_preset(preset) if preset is not None else None
    explicit = {"whisper": whisper, "beats": beats, "llm": llm, "checkpoint": checkpoint}
    missing = [c for c in COMPONENTS if explicit[c] is None and chosen is None]
    if missing:
        flags = ", ".join(f"--{c} PATH" for c in missing)
        raise ConfigError(f"no source for {', '.join(missing)}: pass --preset NAME or {flags}")
    name = chosen.name if chosen else None
    paths: dict[str, Path] = {}
    for c in COMPONENTS:
        source = explicit[c]
        from_preset = source is None  # only then can `salmonn models download` fetch it
        if source is None:
            assert chosen is not None  # a missing source without a preset was rejected above
            source = chosen.source(c)
        hint = name if from_preset else None
        paths[c] = resolve_source(c, source, download=download, cache_dir=cache_dir, preset=hint)
    return ResolvedComponents(**paths, preset=name)


def resolve_source(
    component: str,
    source: Source,
    *,
    download: bool = True,
    cache_dir: str | Path | None = None,
    preset: str | None = None,
) -> Path:
    """Local path of one component (``whisper``/``llm``: folders, others: files)."""
    if component not in COMPONENTS:
        raise ConfigError(
            f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}"
        )
    parsed = parse_source(source)
    if isinstance(parsed, Path):
        return _check_local(component, parsed)
    is_folder = component in FOLDER_COMPONENTS
    if is_folder and parsed.filename:
        raise ConfigError(
            f"--{component} needs a folder (a whole repo), got the file source {parsed}"
        )
    if not is_folder and not parsed.filename:
        raise ConfigError(f"--{component} needs a file, got the repository {parsed}; add /FILENAME")
    return _resolve_hub(component, parsed, download=download, cache_dir=cache_dir, preset=preset)


def _check_local(component: str, path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"--{component}: {path} does not exist")
    want_dir = component in FOLDER_COMPONENTS
    if path.is_dir() != want_dir:
        kind = "a folder" if want_dir else "a file"
        raise CheckpointError(f"--{component}: {path} is not {kind}")
    return path


def _missing_hint(component: str, source: HubSource, preset: str | None, reason: str) -> str:
    if preset:
        fetch = f"`salmonn models download {preset}`"
    else:
        kind = "" if source.repo_type == "model" else f" --repo-type {source.repo_type}"
        file = f" {source.filename}" if source.filename else ""
        fetch = f"`hf download {source.repo_id}{file}{kind}`"
    return (
        f"{component}: {source} {reason}; fetch it with {fetch} while online, "
        f"or pass --{component} PATH"
    )


def _resolve_hub(
    component: str,
    source: HubSource,
    *,
    download: bool,
    cache_dir: str | Path | None,
    preset: str | None,
) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir(cache_dir)
    offline = hub_offline() or not download
    common: dict[str, Any] = {
        "repo_type": source.repo_type,
        "revision": source.revision,
        "cache_dir": str(cache),
        "local_files_only": offline,
    }
    try:
        if source.filename:
            return Path(huggingface_hub.hf_hub_download(source.repo_id, source.filename, **common))
        patterns = _FOLDER_FILES[component] + _weight_patterns(source, offline)
        folder = Path(
            huggingface_hub.snapshot_download(source.repo_id, allow_patterns=patterns, **common)
        )
    except LocalEntryNotFoundError as err:
        why = "offline mode is on (HF_HUB_OFFLINE=1)" if hub_offline() else "downloads are off"
        raise CheckpointError(
            _missing_hint(component, source, preset, f"is not in the cache {cache} and {why}")
        ) from err
    except (OSError, ValueError, huggingface_hub.errors.HfHubHTTPError) as err:
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{component}: could not fetch {source}: {cause}") from err
    absent = _absent_files(component, folder)
    if absent:
        reason = f"is incomplete in the cache (missing {', '.join(absent)})"
        raise CheckpointError(_missing_hint(component, source, preset, reason))
    return folder


def _absent_files(component: str, folder: Path) -> list[str]:
    """Files a folder component needs that ``folder`` lacks (shards named by an index included)."""
    absent = [f for f in _REQUIRED_FILES[component] if not (folder / f).is_file()]
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        absent.append("weights (*.safetensors or *.bin)")
    for index in sorted(folder.glob("*.index.json")):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            absent.append(f"a readable {index.name}")
            continue
        absent += sorted(f for f in shards if not (folder / f).is_file())
    return absent


def _weight_patterns(source: HubSource, offline: bool) -> list[str]:
    """Weight files to fetch, in transformers' order of preference: one safetensors file, sharded
    safetensors, one .bin, sharded .bin (so variants such as fp32 copies are not fetched too).
    Offline, every candidate (whatever the cache holds)."""
    if offline:
        return [p for names in _WEIGHT_CHOICES for p in names]
    from huggingface_hub import HfApi

    files = set(
        HfApi().list_repo_files(
            source.repo_id, repo_type=source.repo_type, revision=source.revision
        )
    )
    for names in _WEIGHT_CHOICES:
        if names[0] in files:
            return list(names)
    return [p for p in _WEIGHT_FALLBACK if any(fnmatch.fnmatch(f, p) for f in files)][:1]


# --------------------------------------------------------------------------------- status, download


def cached_status(
    preset: str | Preset, *, cache_dir: str | Path | None = None
) -> list[ComponentStatus]:
    """Per component of ``preset``: is it in the local cache, where, how many bytes (no network)."""
    chosen = get_preset(preset)
    report = []
    for component in COMPONENTS:
        source = chosen.source(component)
        try:
            path = _resolve_hub(
                component, source, download=False, cache_dir=cache_dir, preset=chosen.name
            )
        except CheckpointError as err:
            report.append(ComponentStatus(component, str(source), False, None, 0, str(err)))
            continue
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        size = sum(
            f.stat().st_size for f in files
        )  # stat follows the cache's symlinks to the blobs
        report.append(ComponentStatus(component, str(source), True, path, size))
    return report


def download(preset: str | Preset, *, cache_dir: str | Path | None = None) -> ResolvedComponents:
    """Fetch every component of ``preset`` into the hub cache (what is cached already is kept)."""
    resolved = resolve_components(preset, download=True, cache_dir=cache_dir)
    verify_beats_file(resolved.beats)
    return resolved


# -------------------------------------------------------------------------------------------- beats

_BEATS_CFG_KEYS = (
    "input_patch_size",
    "embed_dim",
    "encoder_layers",
    "encoder_embed_dim",
    "encoder_attention_heads",
)


def verify_beats_file(path: str | Path) -> BeatsFileInfo:
    """Check cheaply that ``path`` is a BEATs checkpoint (``{"cfg", "model", ...}``, §3.1, §9.2).

    Raises ``CheckpointError`` (one line) otherwise. ``official`` tells the released cpt2 config
    (12 layers, width 768, max_distance 800) from a smaller file in the same format.
    """
    import torch

    path = Path(path)
    try:
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip-format file: mmap is unsupported there
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means "not a BEATs file"
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path}: not a loadable BEATs checkpoint ({cause})") from err
    cfg, state = _beats_parts(path, ck)
    layers, width = int(cfg["encoder_layers"]), int(cfg["encoder_embed_dim"])
    patch, embed = int(cfg["input_patch_size"]), int(cfg["embed_dim"])
    expected = {
        "patch_embedding.weight": (embed, 1, patch, patch),
        "encoder.pos_conv.0.weight_v": None,
        f"encoder.layers.{layers - 1}.self_attn.q_proj.weight": (width, width),
    }
    for key, shape in expected.items():
        tensor = state.get(key)
        if not isinstance(tensor, torch.Tensor) or (
            shape is not None and tuple(tensor.shape) != shape
        ):
            got = "missing" if tensor is None else f"shape {tuple(getattr(tensor, 'shape', ()))}"
            raise CheckpointError(
                f"{path}: BEATs tensor {key} is {got}, expected {shape or 'a tensor'}"
            )
    if f"encoder.layers.{layers}.self_attn.q_proj.weight" in state:
        raise CheckpointError(
            f"{path}: BEATs state dict has more layers than cfg encoder_layers={layers}"
        )
    max_distance = cfg.get("max_distance")
    official = (layers, width, max_distance) == (12, 768, 800)
    return BeatsFileInfo(path, official, layers, width, max_distance, len(state))


def _beats_parts(path: Path, ck: Any) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    if not isinstance(ck, Mapping) or not isinstance(ck.get("model"), Mapping):
        raise CheckpointError(
            f"{path}: not a BEATs checkpoint (expected a dict with 'cfg' and 'model')"
        )
    state = ck["model"]
    if "speech_query_tokens" in state:
        raise CheckpointError(
            f"{path}: this is a SALMONN checkpoint, not BEATs; pass it as --checkpoint"
        )
    cfg = ck.get("cfg")
    if not isinstance(cfg, Mapping):
        raise CheckpointError(f"{path}: not a BEATs checkpoint (no 'cfg' dict next to 'model')")
    absent = [k for k in _BEATS_CFG_KEYS if k not in cfg]
    if absent:
        raise CheckpointError(f"{path}: BEATs cfg lacks {', '.join(absent)}")
    return cfg, state
