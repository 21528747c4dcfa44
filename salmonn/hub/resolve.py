"""Component sources to local paths: a local path as it is, a hub source from the Hugging Face cache,
downloaded when it is missing there.

Cache first: a component already in the cache is used without any network request, so a task run whose
weights are cached works offline and starts without a round trip. A missing component is downloaded
unless downloads are off (``download=False``) or huggingface_hub is in offline mode (``HF_HUB_OFFLINE``,
as huggingface_hub itself reads it). Every component is looked up before anything is downloaded, so an
error names all the missing ones at once (:class:`ComponentsNotFound`, with the data to word a fix).

Only what a component needs is fetched (one weight format of a model folder), and the offline look-up
asks the cache for exactly that: see :mod:`salmonn.hub.snapshots`. Presets and the source syntax live in
:mod:`salmonn.hub.presets`. ``huggingface_hub`` and ``torch`` are imported lazily so that the CLI starts fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..constants import COMPONENTS
from ..errors import CheckpointError, ConfigError, name_some
from .presets import (  # re-exported: the public names of salmonn.hub.resolve
    FOLDER_COMPONENTS,
    PRESETS,
    HubSource,
    Preset,
    Source,
    get_preset,
    parse_source,
)
from .snapshots import FetchFailed, NotCached, fetch, from_cache

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
            paths[c] = from_cache(c, parsed, cache)
        except NotCached as miss:
            missing.append(MissingComponent(c, parsed, explicit[c] is None, miss.absent))
    name = chosen.name if chosen else None
    paths.update(_download(missing, cache, name, download))
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
        return from_cache(component, parsed, cache)
    except NotCached as miss:
        missing = [MissingComponent(component, parsed, False, miss.absent)]
    return _download(missing, cache, None, download)[component]


def _download(
    missing: list[MissingComponent], cache: Path, preset: str | None, download: bool
) -> dict[str, Path]:
    """Fetch the ``missing`` components, in order; the first failure (or offline mode, or
    ``download`` False) raises :class:`ComponentsNotFound` with those still missing."""
    offline = hub_offline()
    if missing and (offline or not download):
        raise ComponentsNotFound(missing, cache=cache, preset=preset, offline=offline)
    paths = {}
    for i, miss in enumerate(missing):
        try:
            paths[miss.component] = fetch(miss.component, miss.source, cache)
        except FetchFailed as err:
            raise ComponentsNotFound(
                missing[i:], cache=cache, preset=preset, offline=False, download_error=str(err)
            ) from err.__cause__
    return paths


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
            path = from_cache(component, source, cache)
        except NotCached as miss:
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


def verify_beats_file(path: str | Path) -> BeatsFileInfo:
    """Check that ``path`` is a BEATs checkpoint (:func:`salmonn.model.encoders.beats_file.read_beats_file`:
    every key and shape of the model its ``cfg`` describes; no model is built).

    Raises ``CheckpointError`` (one line) otherwise. ``official`` tells the released cpt2 config
    (12 layers, width 768, max_distance 800) from a smaller file in the same format.
    """
    from ..model.encoders.beats_file import read_beats_file

    cfg, state = read_beats_file(path)
    layers, width = cfg.encoder_layers, cfg.encoder_embed_dim
    official = (layers, width, cfg.max_distance) == (12, 768, 800)
    return BeatsFileInfo(Path(path), official, layers, width, cfg.max_distance, len(state))
