"""The library's model-resolution errors in the command line's words: flags and commands, one line."""

from __future__ import annotations

import os

from salmonn.errors import SalmonnError
from salmonn.hub.resolve import ComponentPathError, ComponentsNotFound, MissingSourceError

TRY_TINY = "to try the tool without weights: `salmonn dev tiny-model DIR`"


def describe(err: SalmonnError) -> str | None:
    """One line for ``err`` when it is about finding the model's components; None otherwise."""
    if isinstance(err, ComponentsNotFound):
        return not_found(err)
    if isinstance(err, ComponentPathError):
        return f"--{err.component}: {err.path} {err.problem}"
    if isinstance(err, MissingSourceError):
        flags = ", ".join(f"--{c} PATH" for c in err.components)
        return f"no source for {', '.join(err.components)}: pass --model NAME or {flags}"
    return None


def not_found(err: ComponentsNotFound) -> str:
    """What is missing, why it was not downloaded, and the ways out."""
    listed = _listing(err)
    flags = "/".join(f"--{m.component}" for m in err.missing)
    fetch = fetch_commands(err)
    instead = f"or pass {flags} PATH; {TRY_TINY}"
    if err.download_error is not None:
        first = err.missing[0]
        return (
            f"could not download {first.component} ({first.source}): {err.download_error}. "
            f"Missing from the Hugging Face cache {err.cache}: {listed}. "
            f"Run {fetch} where the network works, {instead}"
        )
    head = f"not in the Hugging Face cache {err.cache}: {listed}"
    if err.offline:
        return (
            f"{head}. {offline_variable()} is set: unset it and run {fetch} to download, {instead}"
        )
    return f"{head}. Task commands download them on first use; ahead of time: {fetch}, {instead}"


def _listing(err: ComponentsNotFound) -> str:
    """``salmonn-7b's whisper, llm`` for the preset's own uncached sources; the source otherwise."""
    plain = [m.component for m in err.missing if m.from_preset and err.preset and not m.absent]
    named = [str(m) for m in err.missing if m.component not in plain]
    parts = [f"{err.preset}'s {', '.join(plain)}"] if plain else []
    return "; ".join(parts + named)


def fetch_commands(err: ComponentsNotFound) -> str:
    """`salmonn models download PRESET` for the preset's own sources, `hf download ...` for others."""
    commands: list[str] = []
    for m in err.missing:
        if m.from_preset and err.preset:
            command = f"`salmonn models download {err.preset}`"
        else:
            kind = "" if m.source.repo_type == "model" else f" --repo-type {m.source.repo_type}"
            file = f" {m.source.filename}" if m.source.filename else ""
            command = f"`hf download {m.source.repo_id}{file}{kind}`"
        if command not in commands:
            commands.append(command)
    return " and ".join(commands)


def offline_variable() -> str:
    """The variable that put huggingface_hub offline (it reads either)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return name
    return "HF_HUB_OFFLINE"


def quiet_hub(*, bars: bool = True) -> None:
    """Hide huggingface_hub's warnings (one per failed attempt, while it retries): a download that
    fails in the end is reported in one line. ``bars``: keep the download progress bars."""
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    if not bars:
        disable_progress_bars()
