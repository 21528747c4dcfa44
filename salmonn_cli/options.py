"""The option groups shared by the task commands; defaults are read from the library's option dataclasses.

Options that may also come from the environment or the config file default to ``None`` here and are
resolved in :mod:`salmonn_cli.settings`; decoding and chunking options default to ``None`` too, so that
only what the user typed overrides :class:`GenerationOptions` / :class:`ChunkingOptions`. Their
destination names are the dataclass field names (``--chunk-seconds`` -> ``max_seconds``), which is how
:mod:`salmonn_cli.settings` finds them. Validation is the settings' job, not Click's, so that a flag, an
environment variable and a config key are checked by the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from salmonn.config import DEFAULT_BATCH_SIZE, ChunkingOptions, GenerationOptions
from salmonn.constants import DTYPE_NAMES

from .ray_executor import RAY_OPTIONS
from .sources import DEFAULT_MODEL, ENV_VARS

_GEN = GenerationOptions()
_CHUNK = ChunkingOptions()
FORMATS = ("text", "json", "jsonl", "srt", "vtt", "tsv")

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _env_help(key: str) -> str:
    return f"env {ENV_VARS[key]}, config key '{key}'"


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        k, n = (int(part) for part in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected K/N such as 2/8, got {value!r}") from None
    if n < 1 or not 1 <= k <= n:
        raise click.BadParameter(f"need 1 <= K <= N, got {value!r}")
    return k, n


# the task commands' only; `salmonn serve` batches across requests with --max-batch-size instead
BATCH_SIZE_OPTION = click.option(
    "--batch-size",
    metavar="N",
    help=f"Chunks decoding together, across files; auto = the most that fit the GPU's free "
    f"memory. [default: auto ({DEFAULT_BATCH_SIZE} on CPU); {_env_help('batch_size')}]",
)

MODEL_OPTIONS = [
    click.option(
        "--model",
        "model",
        metavar="PRESET",
        help=f"Preset: salmonn-7b or salmonn-13b. [default: {DEFAULT_MODEL}; {_env_help('model')}]",
    ),
    click.option(
        "--whisper", metavar="PATH", help=f"Whisper folder (HF format). [{_env_help('whisper')}]"
    ),
    click.option("--beats", metavar="PATH", help=f"BEATs checkpoint file. [{_env_help('beats')}]"),
    click.option(
        "--llm", metavar="PATH", help=f"Vicuna/LLaMA folder (HF format). [{_env_help('llm')}]"
    ),
    click.option(
        "--checkpoint",
        metavar="PATH",
        help=f"SALMONN checkpoint (.pth). [{_env_help('checkpoint')}]",
    ),
    click.option(
        "--device",
        metavar="DEVICE",
        help=f"cpu, cuda, cuda:1 ... [default: cuda when available; {_env_help('device')}]",
    ),
    click.option(
        "--dtype",
        type=click.Choice(DTYPE_NAMES),
        help=f"LLM dtype. [default: float16 on cuda, float32 on cpu; {_env_help('dtype')}]",
    ),
    click.option(
        "--load-in-8bit", is_flag=True, help="Quantize the LLM to 8 bits (bitsandbytes, CUDA)."
    ),
    click.option(
        "--load-in-4bit", is_flag=True, help="Quantize the LLM to 4 bits (bitsandbytes, CUDA)."
    ),
    click.option(
        "--lora-scaling",
        type=float,
        metavar="X",
        help="LoRA alpha/r at inference. [default: the preset's]",
    ),
    BATCH_SIZE_OPTION,
    click.option(
        "--exact",
        is_flag=True,
        help="Reproduce the original's arithmetic and shapes (one chunk at a time, "
        "transformers-4.28 eager attention); slower. [default: fast mode]",
    ),
]


def _decoding(flag: str, kind: type, metavar: str, text: str) -> Decorator:
    """A decoding flag; its destination and shown default are the :class:`GenerationOptions` field
    of the same name (``--top-k`` -> ``top_k``)."""
    field = flag.removeprefix("--").replace("-", "_")
    return click.option(
        flag, type=kind, metavar=metavar, help=f"{text} [default: {getattr(_GEN, field)}]"
    )


DECODING_OPTIONS = [
    _decoding("--num-beams", int, "N", "Beam width (1 = greedy)."),
    _decoding("--max-new-tokens", int, "N", "Most tokens generated per answer."),
    click.option(
        "--do-sample", is_flag=True, default=None, help="Sample instead of beam/greedy search."
    ),
    _decoding("--temperature", float, "T", "Sampling temperature (with --do-sample)."),
    _decoding("--top-k", int, "K", "Sampling top-k (with --do-sample)."),
    _decoding("--top-p", float, "P", "Sampling nucleus (with --do-sample)."),
    _decoding("--repetition-penalty", float, "X", "Penalty on repeated tokens (1.0 = off)."),
    _decoding("--length-penalty", float, "X", "Beam length penalty exponent."),
    click.option(
        "--seed",
        type=int,
        metavar="N",
        help="Random seed for sampling; every chunk draws from its own generator seeded with N, "
        "so the output does not depend on --batch-size.",
    ),
]

INPUT_OPTIONS = [
    click.option(
        "--recursive/--no-recursive",
        default=True,
        show_default=True,
        help="Descend into sub-folders.",
    ),
    click.option(
        "--hidden", "include_hidden", is_flag=True, help="Include hidden files and folders."
    ),
    click.option(
        "--ext",
        "extensions",
        multiple=True,
        metavar="EXT",
        help="Audio/video extension to take from folders (repeatable). [default: common ones]",
    ),
    click.option(
        "--files-from",
        "list_file",
        metavar="FILE",
        help="Read more input paths from FILE, one per line ('-' for stdin).",
    ),
    click.option(
        "--shard",
        callback=_shard,
        metavar="K/N",
        help="Process only the K-th of N deterministic slices of the inputs (1-based).",
    ),
    click.option(
        "--chunk-seconds",
        "max_seconds",
        type=float,
        metavar="S",
        help=f"Longest chunk fed to the model (at most 30). [default: {_CHUNK.max_seconds}]",
    ),
    click.option(
        "--chunk-strategy",
        "strategy",
        type=click.Choice(["quiet", "fixed"]),
        help="Cut long audio at the quietest point near the limit, or at fixed times. "
        f"[default: {_CHUNK.strategy}]",
    ),
    click.option(
        "--overlap",
        "overlap_seconds",
        type=float,
        metavar="S",
        help=f"Seconds shared by consecutive chunks. [default: {_CHUNK.overlap_seconds}]",
    ),
    click.option(
        "--channel",
        type=int,
        metavar="N",
        help="Keep this channel only, counted from 0 (0 is the first, left of stereo). "
        "[default: mix all channels]",
    ),
]

OUTPUT_OPTIONS = [
    click.option(
        "-f",
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        help="Output format. [default: from the extension of -o FILE (.jsonl .json .txt .srt "
        ".vtt .tsv), else jsonl]",
    ),
    click.option(
        "-o",
        "--output",
        metavar="FILE|DIR/",
        help="Write to FILE (all records), or to DIR/ (one file per input, mirroring the input "
        "tree). [default: stdout]",
    ),
    click.option(
        "--resume",
        is_flag=True,
        help="Skip inputs already in the output (same path, task, prompt and settings).",
    ),
    click.option("--fail-fast", is_flag=True, help="Stop at the first file that fails."),
    click.option(
        "-q", "--quiet", is_flag=True, help="No progress bar or notes on stderr (errors only)."
    ),
    click.option("-v", "--verbose", count=True, help="Log to stderr (-v info, -vv debug)."),
]

PER_CHUNK_OPTION = click.option(
    "--per-chunk",
    is_flag=True,
    help="Long audio: give the chunk answers with their times, without the final whole-file pass.",
)


def apply(options: list[Decorator]) -> Decorator:
    """Apply a list of click options to a command function (first option listed first in --help)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every option group of the task commands."""
    return apply(MODEL_OPTIONS + DECODING_OPTIONS + INPUT_OPTIONS + OUTPUT_OPTIONS + RAY_OPTIONS)(
        func
    )
