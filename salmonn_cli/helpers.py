"""Helper commands: ``prompts``, ``models``, ``doctor`` and ``dev tiny-model``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from typing import Any

import click

from salmonn.constants import COMPONENTS
from salmonn.errors import PromptError, SalmonnError

from .model_errors import describe, offline_variable, quiet_hub
from .settings import model_kwargs
from .sources import config_path, resolve


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the templates as JSON.")
def prompts(name: str | None, as_json: bool) -> None:
    """List the prompt templates, or show the one called NAME.

    Built-in templates come with salmonn; yours go in $SALMONN_PROMPTS_DIR or
    $XDG_CONFIG_HOME/salmonn/prompts/*.json (same format; a built-in name overrides it).
    """
    from salmonn.jobs.templates import get_template, load_templates

    try:
        chosen = [get_template(name)] if name else list(load_templates().values())
    except PromptError as err:  # an unknown NAME is a usage error, as for `prompt --template`
        raise click.UsageError(str(err)) from None
    if as_json:
        rows = [
            {
                "name": t.name,
                "kind": t.kind,
                "variables": list(t.variables),
                "summary": t.summary,
                "description": t.description,
                "source": t.source,
                "text": t.text,
            }
            for t in chosen
        ]
        click.echo(json.dumps(rows if name is None else rows[0], ensure_ascii=False, indent=2))
        return
    if name:
        t = chosen[0]
        click.echo(
            f"name:        {t.name}\nkind:        {t.kind}\nvariables:   {', '.join(t.variables) or '-'}"
        )
        click.echo(
            f"summary:     {t.summary or '-'}\nsource:      {t.source}\ndescription: {t.description}"
        )
        click.echo(f"text:\n{t.text}")
        return
    width = max(len(t.name) for t in chosen)
    vwidth = max(len(_braced(t.variables)) for t in chosen)
    for t in chosen:
        description = t.description + ("" if t.kind == "audio" else " [text]")
        click.echo(f"{t.name:<{width}}  {_braced(t.variables):<{vwidth}}  {description}".rstrip())


def _braced(variables: tuple[str, ...]) -> str:
    return " ".join(f"{{{v}}}" for v in variables)


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@click.group(invoke_without_command=True)
@click.pass_context
def models(ctx: click.Context) -> None:
    """List the model presets and what of them is in the local cache; `models download NAME` fetches one.

    "cached" uses the same look-up as the task commands: a cached preset loads without network.
    """
    if ctx.invoked_subcommand is not None:
        return
    from salmonn.hub.resolve import PRESETS, cached_status, hub_cache_dir, hub_offline

    offline = f"  (offline mode: {offline_variable()})" if hub_offline() else ""
    click.echo(f"cache: {hub_cache_dir()}{offline}")
    for name, preset in PRESETS.items():
        report = cached_status(name)
        found = sum(s.cached for s in report)
        state = "cached" if found == len(report) else "partly cached" if found else "not cached"
        click.echo(f"\n{name}  ({state})  {preset.description}")
        for s in report:
            where = f"{s.path} ({_size(s.size_bytes)})" if s.cached else f"missing: {s.detail}"
            click.echo(f"  {s.component:<10} {s.source}\n  {'':<10} -> {where}")
    settings = resolve({})
    preset = model_kwargs(settings)["preset"]
    uses = [f"preset {preset} [{settings['model'].origin}]" if preset else "no preset"]
    uses += [
        f"{c} {settings[c].value} [{settings[c].origin}]"
        for c in COMPONENTS
        if settings[c].value is not None
    ]
    click.echo(f"\ntask commands use: {'; '.join(uses)}")


@models.command()
@click.argument("name", required=False)
def download(name: str | None) -> None:
    """Download every component of the preset NAME (default: as for the task commands) into the
    Hugging Face cache. What is cached already is not fetched again."""
    from salmonn.hub.resolve import PRESETS
    from salmonn.hub.resolve import download as fetch

    if name is None:
        name = resolve({})["model"].value
    if name not in PRESETS:
        raise click.BadParameter(
            f"unknown preset {name!r}; choose from {', '.join(PRESETS)}", param_hint="NAME"
        )
    quiet_hub()
    resolved = fetch(name)
    for component in COMPONENTS:
        click.echo(f"{component:<10} {getattr(resolved, component)}")


def _check(label: str, func: Any) -> tuple[bool, Any]:
    try:
        value = func()
    except (SalmonnError, OSError, ValueError, ImportError, RuntimeError) as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        said = describe(err) if isinstance(err, SalmonnError) else None
        click.echo(f"  {label:<12} FAIL  {said or (lines[-1] if lines else type(err).__name__)}")
        return False, None
    return True, value


def _ffmpeg_version() -> str:
    from salmonn.audio.decode import find_ffmpeg

    exe = find_ffmpeg()
    out = subprocess.run(
        [exe, "-hide_banner", "-version"], capture_output=True, text=True, timeout=30, check=False
    )
    first = (
        (out.stdout or out.stderr).splitlines()[0]
        if (out.stdout or out.stderr)
        else "unknown version"
    )
    return f"{exe} ({first.split(' Copyright')[0]})"


def _memory() -> str:
    """Memory a new process can have now (as the ``fits`` line counts it: droppable page cache
    included) and the machine's total, in GiB like the ``fits`` line."""
    from salmonn.model.footprint import available_memory

    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return "unknown"
    avail = available_memory()
    have = "unknown" if avail is None else f"{avail / 2**30:.1f} GiB"
    return f"{have} available of {total / 2**30:.1f} GiB"


def _torch_report() -> str:
    import torch

    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            name = torch.cuda.get_device_name(i)
            lines.append(f"cuda:{i} {name}, {_size(free)} free of {_size(total)}")
    else:
        lines.append("no CUDA device: runs on cpu")
    return "; ".join(lines)


def _auto_device() -> str:
    """The device a run without ``--device`` takes."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _match(comps: Any) -> str:
    """Check that the components fit each other from configs and tensor shapes (no model is built)."""
    from salmonn.hub.resolve import verify_beats_file
    from salmonn.model.checkpoint import (
        CheckpointLayout,
        check_encoders,
        check_llm,
        read_checkpoint,
    )

    layout = CheckpointLayout.from_state(read_checkpoint(comps.checkpoint), comps.checkpoint)
    check_llm(layout, comps.llm)
    beats = verify_beats_file(comps.beats)
    check_encoders(layout, comps.whisper, comps.beats, beats.encoder_embed_dim)
    return (
        f"LLM width {layout.llm_width}, LoRA rank {layout.lora_rank} x {layout.lora_layers} layers, "
        f"Q-Former reads {layout.qformer.encoder_width} channels"
    )


def _auto_batch(comps: Any, kwargs: dict[str, Any]) -> str:
    """What ``--batch-size auto`` would pick on this machine for these components."""
    from salmonn.model.capacity import describe_components

    return describe_components(comps, kwargs.get("device"), kwargs.get("dtype"))


def _fits(comps: Any, kwargs: dict[str, Any]) -> tuple[bool, str]:
    """Whether the model, at the dtype a run would take, fits the memory it loads into."""
    from salmonn.model.devices import resolve_device, resolve_dtype
    from salmonn.model.footprint import (
        available_memory,
        cpu_default_dtype,
        estimate,
        fit_report,
    )

    device = resolve_device(kwargs.get("device"))
    if kwargs.get("dtype") is None and device.type == "cpu":
        dtype = cpu_default_dtype(comps, exact=False)
    else:
        dtype = str(resolve_dtype(kwargs.get("dtype"), device)).removeprefix("torch.")
    problem = fit_report(comps, dtype, device.type)
    if problem is not None:
        return False, problem
    where = (
        "" if device.type != "cpu" else f" of {(available_memory() or 0) / 2**30:.1f} GiB available"
    )
    return True, f"{estimate(comps, dtype).describe()}{where}"


@click.command()
@click.option(
    "--model", metavar="PRESET", help="Preset to check. [default: as for the task commands]"
)
@click.option("--whisper", metavar="PATH")
@click.option("--beats", metavar="PATH")
@click.option("--llm", metavar="PATH")
@click.option("--checkpoint", metavar="PATH")
def doctor(**flags: Any) -> None:
    """Check ffmpeg, torch, the device and memory, and whether the model components are found and fit.

    Reads configurations and tensor shapes only; no model is built. Exit 1 when a check fails.
    """
    from salmonn import __version__

    click.echo(
        f"salmonn {__version__}, Python {platform.python_version()} on {platform.platform()}"
    )
    ok = True
    for label, func in (("ffmpeg", _ffmpeg_version), ("torch", _torch_report), ("memory", _memory)):
        good, value = _check(label, func)
        ok &= good
        if good:
            click.echo(f"  {label:<12} ok    {value}")
    warnings: list[str] = []
    settings = resolve(flags, warn=warnings.append)
    click.echo(f"config file: {config_path()}{'' if config_path().is_file() else ' (none)'}")
    for w in warnings:
        click.echo(f"  warning: {w}")
    kwargs = model_kwargs(settings)
    for key in (*COMPONENTS, "model", "device", "dtype", "batch_size"):
        setting = settings[key]
        value, origin = ("-" if setting.value is None else setting.value), setting.origin
        if key == "model" and kwargs["preset"] is None:
            value, origin = "- (no preset: all four component paths are given)", "not used"
        elif key == "device" and setting.value is None:
            value, origin = _auto_device(), "auto"
        click.echo(f"  {key:<12} {value}  [{origin}]")
    from salmonn.hub.resolve import resolve_components

    good, comps = _check(
        "components",
        lambda: resolve_components(
            kwargs["preset"], *(kwargs[c] for c in COMPONENTS), download=False
        ),
    )
    ok &= good
    if good:
        for component in COMPONENTS:
            click.echo(f"  {component:<12} found {getattr(comps, component)}")
        good, summary = _check("match", lambda: _match(comps))
        ok &= good
        if good:
            click.echo(f"  {'match':<12} ok    {summary}")
            good, line = _check("auto batch", lambda: _auto_batch(comps, kwargs))
            if good:
                click.echo(f"  {'auto batch':<12} {line}")
            good, result = _check("fits", lambda: _fits(comps, kwargs))
            if good:
                fits, line = result
                ok &= fits
                click.echo(f"  {'fits':<12} {'ok   ' if fits else 'NO   '} {line}")
    if not ok:
        sys.exit(1)


@click.group()
def dev() -> None:
    """Developer helpers."""


@dev.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the weights.")
def tiny_model(out_dir: str, seed: int) -> None:
    """Write a tiny random SALMONN (official on-disk formats) to OUT_DIR and print its paths as JSON."""
    import dataclasses

    from salmonn.model.tiny import write_tiny_model

    paths = write_tiny_model(out_dir, seed=seed)
    click.echo(json.dumps(dataclasses.asdict(paths), indent=2))
