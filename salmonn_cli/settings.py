"""Typed settings of a command, built once from its Click values.

:class:`TaskSettings` holds everything a task command was asked to do: :class:`ModelSettings` (which
model, how to load it: any command with the model flags can build one and turn it into ``load_model``
keyword arguments), :class:`InputSettings`, :class:`OutputSettings`, the decoding options
(:func:`generation_options`: the ``GenerationOptions`` fields given as flags) and the chunking options
(:func:`chunking_options`), and the batch size. Each value is checked once: the option dataclasses
check theirs, and the values that may also come from the environment or the config file are resolved
and checked in :mod:`salmonn_cli.sources`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from salmonn.config import (
    AUTO_BATCH_SIZE,
    ChunkingOptions,
    GenerationOptions,
)
from salmonn.constants import COMPONENTS
from salmonn.errors import ConfigError

from .paths import choose_format
from .sources import DEFAULT_MODEL, ENV_VARS, Setting, SettingsError, Warn, resolve


def model_kwargs(settings: Mapping[str, Setting]) -> dict[str, Any]:
    """``load_model`` keyword arguments (components, preset, device, dtype) from resolved settings."""
    return ModelSettings.from_resolved(settings).load_kwargs()


@dataclass(frozen=True)
class ModelSettings:
    """Which model to load, and how: the model flags of any command, after env/config resolution.

    ``preset`` is ``None`` when all four components are given and the model name is only the default
    (the record's identity then names the paths alone). ``preset_origin`` says where the preset name
    came from, for messages.
    """

    preset: str | None = DEFAULT_MODEL
    whisper: str | None = None
    beats: str | None = None
    llm: str | None = None
    checkpoint: str | None = None
    device: str | None = None
    dtype: str | None = None
    lora_scaling: float | None = None
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    exact: bool = False
    preset_origin: str = "default"

    def __post_init__(self) -> None:
        if self.load_in_8bit and self.load_in_4bit:
            raise SettingsError("choose one of --load-in-8bit and --load-in-4bit")

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        config_file: Path | None = None,
        warn: Warn = lambda message: None,
    ) -> ModelSettings:
        """From the model flags of any command (``MODEL_OPTIONS``), resolved against the environment
        and the config file, preset checked.

        Raises:
            SettingsError: a bad value, an unknown preset, both quantizations.
        """
        flags = {key: params.get(key) for key in ENV_VARS}
        model = cls.from_resolved(
            resolve(flags, env=env, config_file=config_file, warn=warn), params
        )
        model.check_preset()
        return model

    @classmethod
    def from_resolved(
        cls, settings: Mapping[str, Setting], params: Mapping[str, Any] | None = None
    ) -> ModelSettings:
        """From :func:`resolve`'s settings, plus the flag-only options found in ``params``
        (``lora_scaling``, ``load_in_8bit``, ``load_in_4bit``, ``exact``)."""
        params = params or {}
        paths = {key: settings[key].value for key in COMPONENTS}
        model = settings["model"]
        all_paths = all(value is not None for value in paths.values())
        return cls(
            preset=None if all_paths and model.origin == "default" else model.value,
            **paths,
            device=settings["device"].value,
            dtype=settings["dtype"].value,
            lora_scaling=params.get("lora_scaling"),
            load_in_8bit=bool(params.get("load_in_8bit")),
            load_in_4bit=bool(params.get("load_in_4bit")),
            exact=bool(params.get("exact")),
            preset_origin=model.origin,
        )

    def check_preset(self) -> None:
        """Raise :class:`SettingsError` for a preset name the library does not know."""
        from salmonn.hub.resolve import PRESETS

        if self.preset is not None and self.preset not in PRESETS:
            raise SettingsError(
                f"unknown model {self.preset!r} ({self.preset_origin}); "
                f"choose from {', '.join(PRESETS)}"
            )

    def made(self, weights: Mapping[str, Any] | None) -> bool:
        """Whether a record whose model identity was ``weights`` (:func:`paths.weights_of`) came
        from the model these settings load: same preset, component files, LoRA scaling and
        quantization. ``None`` (not recorded) counts as the same. Checked without loading anything:
        a component given as a local path is compared by its resolved path, one taken from the
        preset by the preset's name (a hub source given by hand is not compared)."""
        if weights is None:
            return True
        quantization = "8bit" if self.load_in_8bit else "4bit" if self.load_in_4bit else None
        if weights.get("quantization") != quantization:
            return False
        for key in COMPONENTS:
            given = getattr(self, key)
            if given is None:
                same = weights.get("preset") == self.preset
            elif os.path.exists(given):
                same = weights.get(key) == str(Path(given).expanduser().resolve())
            else:
                same = True  # a hub source typed by hand: resolved only when the model loads
            if not same:
                return False
        scaling = self.lora_scaling
        if scaling is None:
            from salmonn.constants import DEFAULT_LORA_SCALING
            from salmonn.hub.presets import PRESETS

            preset = PRESETS.get(self.preset) if self.preset else None
            scaling = getattr(preset, "lora_scaling", DEFAULT_LORA_SCALING)
        recorded = weights.get("lora_scaling")
        return isinstance(recorded, int | float) and math.isclose(recorded, scaling)

    def load_kwargs(self, *, quantization: bool = False) -> dict[str, Any]:
        """Keyword arguments of :func:`salmonn.load_model` (with ``quantization``: also
        ``lora_scaling``, the ``load_in_*`` flags and ``exact``)."""
        kwargs: dict[str, Any] = {key: getattr(self, key) for key in COMPONENTS}
        kwargs.update(preset=self.preset, device=self.device, dtype=self.dtype)
        if quantization:
            kwargs.update(
                lora_scaling=self.lora_scaling,
                load_in_8bit=self.load_in_8bit,
                load_in_4bit=self.load_in_4bit,
                exact=self.exact,
            )
        return kwargs


def generation_options(params: Mapping[str, Any]) -> GenerationOptions:
    """Decoding options: the dataclass defaults, overridden by every field given in ``params``
    (a Click value of ``None`` means "not given")."""
    given = {f.name: params[f.name] for f in fields(GenerationOptions) if f.name in params}
    try:
        return GenerationOptions().with_overrides(**given)
    except ConfigError as err:
        raise SettingsError(in_flag_words(str(err), given)) from None


def chunking_options(params: Mapping[str, Any]) -> ChunkingOptions:
    """Chunking options: the dataclass defaults, overridden by every field given in ``params``."""
    given = {f.name: params[f.name] for f in fields(ChunkingOptions) if f.name in params}
    try:
        return ChunkingOptions().with_overrides(**given)
    except ConfigError as err:
        raise SettingsError(in_flag_words(str(err), given)) from None


def in_flag_words(message: str, names: Iterable[str]) -> str:
    """``message`` of the options dataclasses with each field name in ``names`` replaced by the
    flag that sets it in the running command (``max_seconds`` -> ``--chunk-seconds``)."""
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return message
    flags = {
        p.name: max(p.opts, key=len)
        for p in ctx.command.params
        if isinstance(p, click.Option) and p.name in set(names)
    }
    for name, flag in flags.items():
        message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flag, message)
    return message


def sampling_without_do_sample(params: Mapping[str, Any], options: GenerationOptions) -> list[str]:
    """The sampling flags given although ``do_sample`` is off (they change nothing)."""
    if options.do_sample:
        return []
    return ["--" + k.replace("_", "-") for k in SAMPLING_KEYS if params.get(k) is not None]


SAMPLING_KEYS = ("temperature", "top_k", "top_p")


@dataclass(frozen=True)
class InputSettings:
    """Which inputs to take: paths, folder walking, a list file, a shard."""

    paths: tuple[str, ...]
    recursive: bool = True
    include_hidden: bool = False
    extensions: tuple[str, ...] = ()
    list_file: str | None = None
    shard: tuple[int, int] | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> InputSettings:
        return cls(
            paths=tuple(params["paths"]),
            recursive=params["recursive"],
            include_hidden=params["include_hidden"],
            extensions=tuple(params["extensions"] or ()),
            list_file=params["list_file"],
            shard=params["shard"],
        )


@dataclass(frozen=True)
class OutputSettings:
    """Where records go and how the run reports."""

    target: str | None = None
    fmt: str = "jsonl"
    resume: bool = False
    fail_fast: bool = False
    quiet: bool = False
    verbose: int = 0

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> OutputSettings:
        return cls(
            target=params["output"],
            fmt=choose_format(params["fmt"], params["output"]),
            resume=params["resume"],
            fail_fast=params["fail_fast"],
            quiet=params["quiet"],
            verbose=params["verbose"],
        )


@dataclass(frozen=True)
class TaskSettings:
    """Everything a task command was asked to do, checked once, before any input is read."""

    model: ModelSettings
    inputs: InputSettings
    output: OutputSettings
    generation: GenerationOptions
    chunking: ChunkingOptions
    batch_size: int | str = AUTO_BATCH_SIZE

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        config_file: Path | None = None,
        warn: Warn = lambda message: None,
    ) -> TaskSettings:
        """Build and check the settings of a task command from its Click values.

        Raises:
            SettingsError: a bad flag, environment or config value (a usage error).
        """
        resolved = resolve(
            {key: params.get(key) for key in ENV_VARS}, env=env, config_file=config_file, warn=warn
        )
        model = ModelSettings.from_resolved(resolved, params)
        model.check_preset()
        generation = generation_options(params)
        chunking = chunking_options(params)
        sampling = sampling_without_do_sample(params, generation)
        if sampling:
            verb = "matters" if len(sampling) == 1 else "matter"
            names = " and ".join(
                [", ".join(sampling[:-1]), sampling[-1]] if sampling[:-1] else sampling
            )
            warn(f"{names} only {verb} with --do-sample")
        return cls(
            model=model,
            inputs=InputSettings.from_params(params),
            output=OutputSettings.from_params(params),
            generation=generation,
            chunking=chunking,
            batch_size=resolved["batch_size"].value,
        )
