"""Where each setting comes from: flag > environment > config file > default, each value with its origin.

The model components, preset, device, dtype and batch size may come from a flag, an environment
variable (:data:`ENV_VARS`) or the config file, and are checked here, by the same code whatever the
source, so a bad value is a usage error that names where it came from. The config file is
``$XDG_CONFIG_HOME/salmonn/config.toml`` (default ``~/.config/salmonn/config.toml``; ``SALMONN_CONFIG``
names another file, which must exist), read with :mod:`tomllib` (Python 3.11+; on 3.10 the file is skipped with a
warning). Keys: ``whisper``, ``beats``, ``llm``, ``checkpoint``, ``model``, ``device``, ``dtype``,
``batch_size``. Relative component paths in the file are relative to the file's folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salmonn.config import AUTO_BATCH_SIZE, check_batch_size, check_device
from salmonn.constants import COMPONENTS, DTYPE_ALIASES, DTYPE_NAMES
from salmonn.errors import ConfigError

DEFAULT_MODEL = "salmonn-7b"  # the smaller preset
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
DEFAULTS: dict[str, Any] = {"model": DEFAULT_MODEL, "batch_size": AUTO_BATCH_SIZE}
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


DTYPES_ACCEPTED = frozenset(DTYPE_NAMES) | frozenset(DTYPE_ALIASES)


def _convert(key: str, value: Any, origin: str) -> Any:
    # checked here, without torch, so a bad value from any source is a usage error naming it
    try:
        if key == "batch_size":
            return check_batch_size(value)
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise SettingsError(f"{origin}: {key} must be a string, got {value!r}")
        value = str(value)
        if key == "device":
            check_device(value)
    except ConfigError as err:
        raise SettingsError(f"{origin}: {err}") from None
    if key == "dtype" and value.lower() not in DTYPES_ACCEPTED:
        raise SettingsError(f"{origin}: unknown dtype {value!r}; use {', '.join(DTYPE_NAMES)}")
    return value


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
    if config_file is None and env.get(CONFIG_ENV) and not path.is_file():
        # named on purpose: a missing file is a mistake (as a missing SALMONN_PROMPTS_DIR is)
        what = "is a folder, not a file" if path.is_dir() else "no such file"
        raise SettingsError(f"env {CONFIG_ENV}: {path}: {what}")
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
