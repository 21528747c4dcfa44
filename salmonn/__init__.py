"""SALMONN audio language model: library API.

Importing ``salmonn`` is cheap: heavy modules (torch, transformers) load on first use of a name that needs
them, so the CLI's ``--help`` and usage errors answer instantly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import ChunkingOptions, GenerationOptions
from .errors import (
    AudioDecodeError,
    AudioError,
    CheckpointError,
    ConfigError,
    FFmpegNotFoundError,
    PromptError,
    SalmonnError,
)

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily)
_LAZY = {
    "load_model": "checkpoint",
    "SalmonnModel": "model",
    "GenerationResult": "model",
    "WorkItem": "model",
    "GenerationStream": "model",
    "iter_chunks": "chunking",
    "Chunk": "chunking",
    "load_audio": "audio",
    "probe": "audio",
    "AudioInfo": "audio",
    "find_ffmpeg": "audio",
    "Prefetcher": "prefetch",
    "FileChunk": "prefetch",
    "expand_inputs": "inputs",
    "InputItem": "inputs",
    "write_tiny_model": "tiny",
    "process": "engine",
    "TaskSpec": "engine",
    "ProgressEvent": "engine",
    "Record": "records",
    "Segment": "records",
    "resolve_components": "hub",
    "run_task": "tasks",
    "make_task": "tasks",
    "Task": "tasks",
    "TASKS": "tasks",
    "run_task_on_ray": "ray_runner",
    "RayOptions": "ray_runner",
    "PRESETS": "hub",
}

__all__ = [
    "AudioDecodeError",
    "AudioError",
    "CheckpointError",
    "ChunkingOptions",
    "ConfigError",
    "FFmpegNotFoundError",
    "GenerationOptions",
    "PromptError",
    "SalmonnError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'salmonn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from .audio import AudioInfo, find_ffmpeg, load_audio, probe  # noqa: F401
    from .checkpoint import load_model  # noqa: F401
    from .chunking import Chunk, iter_chunks  # noqa: F401
    from .engine import ProgressEvent, TaskSpec, process  # noqa: F401
    from .hub import PRESETS, resolve_components  # noqa: F401
    from .inputs import InputItem, expand_inputs  # noqa: F401
    from .model import GenerationResult, GenerationStream, SalmonnModel, WorkItem  # noqa: F401
    from .prefetch import FileChunk, Prefetcher  # noqa: F401
    from .ray_runner import RayOptions, run_task_on_ray  # noqa: F401
    from .records import Record, Segment  # noqa: F401
    from .tasks import TASKS, Task, make_task, run_task  # noqa: F401
    from .tiny import write_tiny_model  # noqa: F401
