"""Component sources to local paths: a local path as it is, a hub source from the Hugging Face cache,
downloaded when it is missing there.

Cache first: a component already in the cache is used without any network request, so a task run whose
weights are cached works offline and starts without a round trip. A missing component is downloaded
unless downloads are off (``download=False``) or huggingface_hub is in offline mode (``HF_HUB_OFFLINE``,
as huggingface_hub itself reads it). Every component is looked up before anything is downloaded, so an
error names all the missing ones at once (:class:`ComponentsNotFound`, with the data to word a fix).

Only what a folder component needs is fetched: its configs and tokenizer, and ONE weight format chosen
as transformers would (``_WEIGHT_CHOICES``) from the repository's file listing. huggingface_hub keeps that
listing in the cache, and the cache look-up makes the same choice from it, so offline resolution asks
the cache for exactly the files the download fetched (asking for every weight format would find the
snapshot "incomplete" whenever the repository carries several). Presets and the source syntax live in
:mod:`salmonn.presets`. ``huggingface_hub`` and ``torch`` are imported lazily so that the CLI starts fast.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError, name_some
from .presets import (  # re-exported: the public names of salmonn.hub
    COMPONENTS,
    FOLDER_COMPONENTS,
    PRESETS,
    HubSource,
    Preset,
    Source,
    get_preset,
    parse_source,
)

__all__ = [
    "COMPONENTS",
    "PRESETS",
    "BeatsFileInfo",
    "ComponentPathError",
    "ComponentStatus",
    "ComponentsNotFound",
    "HubSource",
    "MissingComponent",
    "MissingSourceError",
    "Preset",
    "ResolvedComponents",
    "cached_status",
    "download",
    "get_preset",
    "hub_cache_dir",
    "hub_offline",
    "parse_source",
    "resolve_components",
    "resolve_source",
    "verify_beats_file",
]

# Files fetched for a folder component besides its weights (absent ones are skipped).
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
_WEIGHT_SUFFIXES = (".safetensors", ".bin")  # other layouts: every top-level file of one kind


# ------------------------------------------------------------------------------------------- errors


class MissingSourceError(ConfigError):
    """Neither a preset nor a source was given for ``components``."""

    def __init__(self, components: tuple[str, ...]) -> None:
        self.components = components
        super().__init__(
            f"no source for {', '.join(components)}: give a preset, or a path or hub source for each"
        )


class ComponentPathError(CheckpointError):
    """A local component path that does not exist, or is a file where a folder is needed (or back)."""

    def __init__(self, component: str, path: Path, problem: str) -> None:
        self.component, self.path, self.problem = component, path, problem
        super().__init__(f"{component}: {path} {problem}")


@dataclass(frozen=True)
class MissingComponent:
    """A hub component not (completely) in the cache; ``absent``: the files a partial copy lacks."""

    component: str
    source: HubSource
    from_preset: bool  # the preset's own source (what downloading the preset fetches)
    absent: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        return f"incomplete, lacks {name_some(self.absent)}" if self.absent else "not cached"

    def __str__(self) -> str:
        return f"{self.component} ({self.source}, {self.state})"


class ComponentsNotFound(CheckpointError):
    """Hub components that are not in the cache and were not downloaded.

    Attributes:
        missing: the components still missing, in :data:`COMPONENTS` order.
        cache: the Hugging Face cache folder that was searched.
        preset: the preset name, when one was used.
        offline: huggingface_hub is in offline mode (``HF_HUB_OFFLINE``), so nothing was downloaded.
        download_error: one line on why the download of ``missing[0]`` failed; None when no
            download was tried (offline mode, or ``download=False``).
    """

    def __init__(
        self,
        missing: list[MissingComponent],
        *,
        cache: Path,
        preset: str | None,
        offline: bool,
        download_error: str | None = None,
    ) -> None:
        self.missing, self.cache, self.preset = tuple(missing), cache, preset
        self.offline, self.download_error = offline, download_error
        listed = ", ".join(str(m) for m in missing)
        if download_error is not None:
            why = f"could not download {missing[0].component}: {download_error}"
        elif offline:
            why = "huggingface_hub is in offline mode (HF_HUB_OFFLINE): turn it off to download"
        else:
            why = "downloads are off"
        super().__init__(f"not in the Hugging Face cache {cache}: {listed}; {why}")


# --------------------------------------------------------------------------------------- data types


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
    """What :func:`cached_status` found for one component (``detail``: why it is not usable)."""

    component: str
    source: str
    cached: bool
    path: Path | None
    size_bytes: int
    detail: str = ""


@dataclass(frozen=True)
class BeatsFileInfo:
    """Result of :func:`verify_beats_file`; ``official``: the released 12 x 768 cpt2 config."""

    path: Path
    official: bool
    encoder_layers: int
    encoder_embed_dim: int
    max_distance: int | None
    num_tensors: int


# -------------------------------------------------------------------------------------- environment


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The hub cache in use: ``cache_dir``, else huggingface_hub's (``HF_HUB_CACHE``, ``HF_HOME``, ...)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """huggingface_hub's offline mode (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``, read at import)."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


# --------------------------------------------------------------------------------------- resolution


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

    An existing local path is used as is. Hub sources are looked up in the cache first (no network);
    the missing ones are then downloaded unless ``download`` is False or huggingface_hub is offline.
    Raises :class:`MissingSourceError` when a component has no source, :class:`ComponentPathError`
    for a bad local path, :class:`ComponentsNotFound` (listing every missing component) otherwise.
    """
    chosen = get_preset(preset) if preset is not None else None
    explicit = {"whisper": whisper, "beats": beats, "llm": llm, "checkpoint": checkpoint}
    unsourced = tuple(c for c in COMPONENTS if explicit[c] is None and chosen is None)
    if unsourced:
        raise MissingSourceError(unsourced)
    cache = hub_cache_dir(cache_dir)
    paths: dict[str, Path] = {}
    missing: list[MissingComponent] = []
    for c in COMPONENTS:
        source = explicit[c]
        if source is None:
            assert chosen is not None  # rejected above otherwise
            source = chosen.source(c)
        parsed = _parse(c, source)
        if isinstance(parsed, Path):
            paths[c] = parsed
            continue
        try:
            paths[c] = _from_cache(c, parsed, cache)
        except _NotCached as miss:
            missing.append(MissingComponent(c, parsed, explicit[c] is None, miss.absent))
    name = chosen.name if chosen else None
    offline = hub_offline()
    if missing and (offline or not download):
        raise ComponentsNotFound(missing, cache=cache, preset=name, offline=offline)
    for i, miss in enumerate(missing):
        try:
            paths[miss.component] = _fetch(miss.component, miss.source, cache)
        except _FetchFailed as err:
            raise ComponentsNotFound(
                missing[i:], cache=cache, preset=name, offline=False, download_error=str(err)
            ) from err.__cause__
    return ResolvedComponents(**paths, preset=name)


def resolve_source(
    component: str,
    source: Source,
    *,
    download: bool = True,
    cache_dir: str | Path | None = None,
) -> Path:
    """Local path of one component (``whisper``/``llm``: folders, others: files)."""
    parsed = _parse(component, source)
    if isinstance(parsed, Path):
        return parsed
    cache = hub_cache_dir(cache_dir)
    try:
        return _from_cache(component, parsed, cache)
    except _NotCached as miss:
        missing = [MissingComponent(component, parsed, False, miss.absent)]
    offline = hub_offline()
    if offline or not download:
        raise ComponentsNotFound(missing, cache=cache, preset=None, offline=offline)
    try:
        return _fetch(component, parsed, cache)
    except _FetchFailed as err:
        raise ComponentsNotFound(
            missing, cache=cache, preset=None, offline=False, download_error=str(err)
        ) from err.__cause__


def _parse(component: str, source: Source) -> Path | HubSource:
    """A checked local path, or a hub source of the right kind (file vs repository)."""
    if component not in COMPONENTS:
        raise ConfigError(
            f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}"
        )
    parsed = parse_source(source)
    is_folder = component in FOLDER_COMPONENTS
    if isinstance(parsed, Path):
        if not parsed.exists():
            raise ComponentPathError(component, parsed, "does not exist")
        if parsed.is_dir() != is_folder:
            kind = "a folder" if is_folder else "a file"
            raise ComponentPathError(component, parsed, f"is not {kind}")
        return parsed
    if is_folder and parsed.filename:
        raise ConfigError(f"{component} needs a whole repository (a folder), got the file {parsed}")
    if not is_folder and not parsed.filename:
        raise ConfigError(f"{component} needs a file, got the repository {parsed}; add /FILENAME")
    return parsed


class _NotCached(Exception):
    def __init__(self, absent: tuple[str, ...] = ()) -> None:
        self.absent = absent


class _FetchFailed(Exception):
    """One line on why a download failed; the library's exception is the ``__cause__``."""


def _hub_kwargs(source: HubSource, cache: Path) -> dict[str, Any]:
    return {"repo_type": source.repo_type, "cache_dir": str(cache)}


def _cached_listing(source: HubSource, cache: Path, revision: str | None) -> list[str] | None:
    """The repository's file list that huggingface_hub cached at download (None: not cached)."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        tree = get_cached_repo_tree(source.repo_id, revision=revision, **_hub_kwargs(source, cache))
    except CachedRepoTreeNotFoundError:
        return None
    return [f.path for f in tree]


def _wanted(component: str, source: HubSource, files: Collection[str] | None) -> list[str]:
    """Patterns to fetch: the source's file, or a folder's configs plus ONE weight layout chosen from
    the repository's ``files`` in transformers' order of preference (None: files unknown, then every
    layout; nothing can be told from the patterns then, :func:`_absent_files` checks the folder)."""
    if source.filename:
        return [source.filename]
    wanted = list(_FOLDER_FILES[component])
    if files is None:
        return wanted + [p for names in _WEIGHT_CHOICES for p in names]
    for names in _WEIGHT_CHOICES:
        if names[0] in files:
            return wanted + list(names)
    top = sorted(f for f in files if "/" not in f)
    for suffix in _WEIGHT_SUFFIXES:
        if any(f.endswith(suffix) for f in top):
            return wanted + [f for f in top if f.endswith(suffix)]
    return wanted


def _from_cache(component: str, source: HubSource, cache: Path) -> Path:
    """The cached copy of ``source`` (no network); raises :class:`_NotCached`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    files = _cached_listing(source, cache, source.revision)
    try:
        folder = Path(
            snapshot_download(
                source.repo_id,
                revision=source.revision,
                allow_patterns=_wanted(component, source, files),
                local_files_only=True,
                **_hub_kwargs(source, cache),
            )
        )
    except IncompleteSnapshotError as err:
        folder = Path(err.snapshot_path)  # checked below, to name what is absent
    except LocalEntryNotFoundError:
        raise _NotCached() from None
    absent = _absent_files(component, source, folder, files)
    if absent:
        raise _NotCached(() if source.filename else tuple(absent))  # a file is there or not
    return folder / source.filename if source.filename else folder


def _absent_files(
    component: str, source: HubSource, folder: Path, files: Collection[str] | None
) -> list[str]:
    """What ``folder`` lacks of ``source``: its file, or a folder component's required files, the
    files of the listing the download would fetch, and the shards its weight index names."""
    if source.filename:
        return [] if (folder / source.filename).is_file() else [source.filename]
    from huggingface_hub.utils import filter_repo_objects

    needed = set(_REQUIRED_FILES[component])
    if files is not None:
        needed.update(filter_repo_objects(files, allow_patterns=_wanted(component, source, files)))
    absent = sorted(f for f in needed if not (folder / f).is_file())
    if not any(next(folder.glob(f"*{suffix}"), None) for suffix in _WEIGHT_SUFFIXES):
        absent.append("weights (*.safetensors or *.bin)")
    for index in sorted(folder.glob("*.index.json")):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            absent.append(f"a readable {index.name}")
            continue
        absent += sorted(f for f in shards - needed if not (folder / f).is_file())
    return absent


def _fetch(component: str, source: HubSource, cache: Path) -> Path:
    """Download what ``source`` needs into the cache; raises :class:`_FetchFailed` (one line)."""
    import httpx2
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    kwargs = _hub_kwargs(source, cache)
    try:
        if source.filename:
            folder = snapshot_download(
                source.repo_id, revision=source.revision, allow_patterns=[source.filename], **kwargs
            )
        else:
            # The configs first: this resolves the commit and caches the repository's listing,
            # from which the weight layout is chosen; the second call reuses both.
            folder = snapshot_download(
                source.repo_id,
                revision=source.revision,
                allow_patterns=_FOLDER_FILES[component],
                **kwargs,
            )
            commit = Path(folder).name
            files = _cached_listing(source, cache, commit)
            folder = snapshot_download(
                source.repo_id,
                revision=commit,
                allow_patterns=_wanted(component, source, files),
                **kwargs,
            )
    except LocalEntryNotFoundError as err:  # the hub could not be reached
        from huggingface_hub import constants

        where = f"cannot reach the hub at {constants.ENDPOINT}"
        raise _FetchFailed(f"{where} ({_first_line(err.__cause__ or err)})") from err
    except (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError) as err:
        raise _FetchFailed(_first_line(err)) from err
    absent = _absent_files(component, source, Path(folder), files=None)
    if absent:
        raise _FetchFailed(f"{source} has no {', '.join(absent)}")
    return Path(folder) / source.filename if source.filename else Path(folder)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


# --------------------------------------------------------------------------------- status, download


def cached_status(
    preset: str | Preset, *, cache_dir: str | Path | None = None
) -> list[ComponentStatus]:
    """Per component of ``preset``: is it in the local cache, where, how many bytes (no network).

    Uses the same look-up as :func:`resolve_components`, so "cached" means a task run finds it.
    """
    chosen = get_preset(preset)
    cache = hub_cache_dir(cache_dir)
    report = []
    for component in COMPONENTS:
        source = chosen.source(component)
        try:
            path = _from_cache(component, source, cache)
        except _NotCached as miss:
            detail = MissingComponent(component, source, True, miss.absent).state
            report.append(ComponentStatus(component, str(source), False, None, 0, detail))
            continue
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        size = sum(f.stat().st_size for f in files)  # stat follows the cache's links to the blobs
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
    """Check cheaply that ``path`` is a BEATs checkpoint (a dict with ``cfg`` and ``model``).

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
        raise CheckpointError(
            f"{path}: not a loadable BEATs checkpoint ({_first_line(err)})"
        ) from err
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
            f"{path}: this is a SALMONN checkpoint, not BEATs; use it as the checkpoint component"
        )
    cfg = ck.get("cfg")
    if not isinstance(cfg, Mapping):
        raise CheckpointError(f"{path}: not a BEATs checkpoint (no 'cfg' dict next to 'model')")
    absent = [k for k in _BEATS_CFG_KEYS if k not in cfg]
    if absent:
        raise CheckpointError(f"{path}: BEATs cfg lacks {', '.join(absent)}")
    return cfg, state
