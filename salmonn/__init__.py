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
    "load_model": "hub.load",
    "SalmonnModel": "model.salmonn_model",
    "GenerationResult": "model.work",
    "WorkItem": "model.work",
    "GenerationStream": "model.stream",
    "iter_chunks": "audio.chunking",
    "Chunk": "audio.chunking",
    "load_audio": "audio.decode",
    "probe": "audio.decode",
    "AudioInfo": "audio.decode",
    "find_ffmpeg": "audio.decode",
    "Prefetcher": "audio.prefetch",
    "FileChunk": "audio.prefetch",
    "expand_inputs": "audio.inputs",
    "InputItem": "audio.inputs",
    "write_tiny_model": "model.tiny",
    "process": "jobs.engine",
    "TaskSpec": "jobs.spec",
    "ProgressEvent": "jobs.spec",
    "Record": "jobs.records",
    "Segment": "jobs.records",
    "resolve_components": "hub.resolve",
    "run_task": "jobs.tasks",
    "make_task": "jobs.tasks",
    "Task": "jobs.tasks",
    "TASKS": "jobs.tasks",
    "run_task_on_ray": "cluster.runner",
    "RayOptions": "cluster.runner",
    "PRESETS": "hub.resolve",
    "TrainExample": "train.examples",
    "training_loss": "train.loss",
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
    from .audio.chunking import Chunk, iter_chunks  # noqa: F401
    from .audio.decode import AudioInfo, find_ffmpeg, load_audio, probe  # noqa: F401
    from .audio.inputs import InputItem, expand_inputs  # noqa: F401
    from .audio.prefetch import FileChunk, Prefetcher  # noqa: F401
    from .cluster.runner import RayOptions, run_task_on_ray  # noqa: F401
    from .hub.load import load_model  # noqa: F401
    from .hub.resolve import PRESETS, resolve_components  # noqa: F401
    from .jobs.engine import process  # noqa: F401
    from .jobs.records import Record, Segment  # noqa: F401
    from .jobs.spec import ProgressEvent, TaskSpec  # noqa: F401
    from .jobs.tasks import TASKS, Task, make_task, run_task  # noqa: F401
    from .model.salmonn_model import SalmonnModel  # noqa: F401
    from .model.stream import GenerationStream  # noqa: F401
    from .model.tiny import write_tiny_model  # noqa: F401
    from .model.work import GenerationResult, WorkItem  # noqa: F401
    from .train.examples import TrainExample  # noqa: F401
    from .train.loss import training_loss  # noqa: F401
