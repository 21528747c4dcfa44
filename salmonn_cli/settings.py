"""Model and run settings: flag > environment > config file > preset/default, each value with its origin.

The config file is ``$XDG_CONFIG_HOME/salmonn/config.toml`` (default ``~/.config/salmonn/config.toml``;
``SALMONN_CONFIG`` names another file), read with :mod:`tomllib` (Python 3.11+; on 3.10 the file is skipped
with a warning). Keys: ``whisper``, ``beats``, ``llm``, ``checkpoint``, ``model``, ``device``, ``dtype``,
``batch_size``. Relative component paths in the file are relative to the file's folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "salmonn-7b"  # the smaller preset
DEFAULT_BATCH_SIZE = 4  # chunks per model call
COMPONENTS = ("whisper", "beats", "llm", "checkpoint")
ENV_VARS = {
    "whisper": "SALMONN_WHISPER",
    "beats": "SALMONN_BEATS",
    "llm": "SALMONN_LLM",
    "checkpoint": "SALMONN_CHECKPOINT",
    "model": "SALMONN_MODEL",
    "device": "SALMONN_DEVICE",
    "dtype": "SALMONN_DTYPE",
    "batch_size": "SALMONN_BATCH_SIZE",
}
DEFAULTS: dict[str, Any] = {"model": DEFAULT_MODEL, "batch_size": DEFAULT_BATCH_SIZE}
CONFIG_ENV = "SALMONN_CONFIG"

Warn = Callable[[str], None]


class SettingsError(ValueError):
    """A bad value in the environment or the config file (the CLI shows it as a usage error)."""


@dataclass(frozen=True)
class Setting:
    """A resolved value and where it came from: ``"flag"``, ``"env NAME"``, ``"config PATH"``, ``"default"``."""

    value: Any
    origin: str


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The config file path (it may not exist)."""
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    home = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(home).expanduser() / "salmonn" / "config.toml"


def read_config(path: Path, warn: Warn) -> dict[str, Any]:
    """The known keys of the TOML file at ``path`` (``{}`` when it does not exist)."""
    if not path.is_file():
        return {}
    try:
        import tomllib
    except ImportError:  # Python 3.10
        warn(f"{path}: reading a config file needs Python 3.11+ (tomllib); ignoring it")
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise SettingsError(f"config file {path}: {err}") from err
    unknown = sorted(set(data) - set(ENV_VARS))
    if unknown:
        warn(f"{path}: ignoring unknown key(s) {', '.join(unknown)} (known: {', '.join(ENV_VARS)})")
    config = {k: v for k, v in data.items() if k in ENV_VARS}
    for key in COMPONENTS:
        if key in config:
            value = Path(str(config[key])).expanduser()
            config[key] = str(value if value.is_absolute() else path.parent / value)
    return config


def _convert(key: str, value: Any, origin: str) -> Any:
    if key == "batch_size":
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{origin}: batch_size must be an integer, got {value!r}") from None
        if number < 1:
            raise SettingsError(f"{origin}: batch_size must be >= 1, got {number}")
        return number
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise SettingsError(f"{origin}: {key} must be a string, got {value!r}")
    return str(value)


def resolve(
    flags: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    warn: Warn = lambda message: None,
) -> dict[str, Setting]:
    """Resolve every key of :data:`ENV_VARS`: flag (not ``None``) > env > config file > default.

    A key with no value anywhere resolves to ``Setting(None, "default")`` (the preset decides).
    """
    env = os.environ if env is None else env
    path = config_path(env) if config_file is None else config_file
    config = read_config(path, warn)
    settings: dict[str, Setting] = {}
    for key, var in ENV_VARS.items():
        if flags.get(key) is not None:
            settings[key] = Setting(_convert(key, flags[key], f"--{key.replace('_', '-')}"), "flag")
        elif env.get(var):
            settings[key] = Setting(_convert(key, env[var], f"env {var}"), f"env {var}")
        elif key in config:
            settings[key] = Setting(_convert(key, config[key], f"config {path}"), f"config {path}")
        else:
            settings[key] = Setting(DEFAULTS.get(key), "default")
    return settings


def model_kwargs(settings: Mapping[str, Setting]) -> dict[str, Any]:
    """``load_model`` keyword arguments from resolved settings.

    When all four components are given and the model name is only the default, no preset is used (the
    record's identity then names the paths alone).
    """
    kwargs = {key: settings[key].value for key in COMPONENTS}
    model = settings["model"]
    all_paths = all(kwargs[key] is not None for key in COMPONENTS)
    kwargs["preset"] = None if all_paths and model.origin == "default" else model.value
    kwargs["device"] = settings["device"].value
    kwargs["dtype"] = settings["dtype"].value
    return kwargs
