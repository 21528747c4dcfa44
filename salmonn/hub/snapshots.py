"""One component's files in the Hugging Face cache: look them up (no network) or fetch them.

What a component needs of its repository: the source's file, or for a folder component its configs
and tokenizer plus ONE weight layout, chosen as transformers would (``_WEIGHT_CHOICES``) from the
repository's file listing. huggingface_hub keeps that listing in the cache (``trees/<commit>.json``)
and, offline, refuses a snapshot that lacks any file matching the patterns it is asked for; so the
look-up derives the same choice from the cached listing and asks for exactly what the download
fetched (asking for every weight layout would find the snapshot "incomplete" whenever the repository
carries several, as whisper-large-v2 does). :mod:`salmonn.hub.resolve` is the public side.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..errors import error_line
from .presets import HubSource

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


class NotCached(Exception):
    """Not (completely) in the cache; ``absent``: the files a partial copy lacks."""

    def __init__(self, absent: tuple[str, ...] = ()) -> None:
        self.absent = absent


class FetchFailed(Exception):
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


def from_cache(component: str, source: HubSource, cache: Path) -> Path:
    """The cached copy of ``source`` (no network); raises :class:`NotCached`."""
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
        raise NotCached() from None
    absent = _absent_files(component, source, folder, files)
    if absent:
        raise NotCached(() if source.filename else tuple(absent))  # a file is there or not
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


def fetch(component: str, source: HubSource, cache: Path) -> Path:
    """Download what ``source`` needs into the cache; raises :class:`FetchFailed` (one line)."""
    import httpx2
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    kwargs = _hub_kwargs(source, cache)
    where = f"cannot reach the hub at {constants.ENDPOINT}"
    try:
        # huggingface_hub sets no timeout on its API calls: a dropped network would hang for minutes.
        # A first call with its own metadata timeout (HF_HUB_ETAG_TIMEOUT, 10 s) fails fast instead.
        HfApi().repo_info(
            source.repo_id,
            repo_type=source.repo_type,
            revision=source.revision,
            timeout=constants.HF_HUB_ETAG_TIMEOUT,
        )
    except httpx2.TransportError as err:
        raise FetchFailed(f"{where} ({error_line(err, lead=2)})") from err
    except HfHubHTTPError as err:
        raise FetchFailed(error_line(err, lead=2)) from err
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
        raise FetchFailed(f"{where} ({error_line(err.__cause__ or err, lead=2)})") from err
    except (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError) as err:
        raise FetchFailed(error_line(err, lead=2)) from err
    absent = _absent_files(component, source, Path(folder), files=None)
    if absent:
        raise FetchFailed(f"{source} has no {', '.join(absent)}")
    return Path(folder) / source.filename if source.filename else Path(folder)
