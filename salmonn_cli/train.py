"""``salmonn train DATA --output DIR``: fine-tune SALMONN (also under ``torchrun -m salmonn_cli train``).

The data file is read and every line's audio decoded before the model loads; bad lines are listed
with their numbers and training does not start (``--skip-bad`` drops them). Rank 0 alone prints,
shows the progress bar and writes files. See docs/training.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .options import MODEL_OPTIONS, apply


def _option_name(option: Any) -> str:
    def probe() -> None: ...

    option(probe)
    return probe.__click_params__[-1].name  # type: ignore[attr-defined]


# the model flags of the task commands, less the inference-only --batch-size and --exact
_MODEL_FLAGS = [o for o in MODEL_OPTIONS if _option_name(o) not in ("batch_size", "exact")]

TRAIN_OPTIONS = [
    click.option(
        "-o",
        "--output",
        "out_dir",
        required=True,
        metavar="DIR",
        help="Run folder: checkpoint-<step>/, metrics.jsonl, salmonn.pth at the end.",
    ),
    click.option(
        "--epochs",
        type=click.IntRange(1),
        metavar="N",
        help="Passes over the data. [default: 1, unless --max-steps]",
    ),
    click.option(
        "--max-steps",
        type=click.IntRange(1),
        metavar="N",
        help="Optimizer steps in all (wins over --epochs).",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(1),
        default=1,
        show_default=True,
        metavar="N",
        help="Examples per micro-batch, per process.",
    ),
    click.option(
        "--grad-accum",
        type=click.IntRange(1),
        default=1,
        show_default=True,
        metavar="N",
        help="Micro-batches per optimizer step (losses averaged).",
    ),
    click.option("--lr", type=float, default=3e-5, show_default=True, help="Peak learning rate."),
    click.option(
        "--min-lr",
        type=float,
        default=1e-5,
        show_default=True,
        help="Learning rate at the end of the cosine.",
    ),
    click.option(
        "--warmup-steps",
        type=click.IntRange(0),
        default=3000,
        show_default=True,
        metavar="N",
        help="Linear warmup steps, then a cosine per step.",
    ),
    click.option(
        "--warmup-start-lr",
        type=float,
        default=1e-6,
        show_default=True,
        help="Learning rate of step 0.",
    ),
    click.option(
        "--weight-decay",
        type=float,
        default=0.05,
        show_default=True,
        help="AdamW weight decay (tensors of 2+ dimensions, not bias/ln/bn).",
    ),
    click.option(
        "--max-text-tokens",
        type=click.IntRange(1),
        default=300,
        show_default=True,
        metavar="N",
        help="Target tokens kept per example, </s> included.",
    ),
    click.option(
        "--dropout",
        type=click.FloatRange(0, 1, max_open=True),
        default=0.1,
        show_default=True,
        help="Q-Former and LoRA dropout (0: deterministic run).",
    ),
    click.option(
        "--seed",
        type=int,
        default=42,
        show_default=True,
        help="Data order, prompt draws, dropout, initialisation.",
    ),
    click.option(
        "--exact",
        is_flag=True,
        help="The original's batched arithmetic ([PAD] inside sequences, BEATs padding "
        "mask); by default each example's loss is independent of its batch mates.",
    ),
    click.option(
        "--lora-only",
        is_flag=True,
        help="Train the LoRA adapters alone (the Q-Former side stays frozen).",
    ),
    click.option("--eval-data", metavar="FILE", help="Data to evaluate on (loss, token accuracy)."),
    click.option(
        "--eval-every",
        type=click.IntRange(1),
        metavar="N",
        help="Evaluate every N steps. [default: at the end, with --eval-data]",
    ),
    click.option(
        "--save-every",
        type=click.IntRange(1),
        metavar="N",
        help="Write checkpoint-<step>/ every N steps. [default: at the end only]",
    ),
    click.option(
        "--save-total-limit",
        type=click.IntRange(1),
        metavar="N",
        help="Keep only the N newest checkpoint folders.",
    ),
    click.option(
        "--resume",
        is_flag=True,
        help="Continue the run in --output from its newest complete checkpoint.",
    ),
    click.option(
        "--gradient-checkpointing",
        is_flag=True,
        help="Recompute LLM activations in the backward pass (less memory, slower).",
    ),
    click.option(
        "--cache-encoder-outputs",
        is_flag=True,
        help="Keep each clip's Whisper and BEATs outputs after its first epoch "
        "(faster later epochs; memory on the device).",
    ),
    click.option(
        "--skip-bad", is_flag=True, help="Drop bad data lines (with a count) instead of stopping."
    ),
    click.option("-q", "--quiet", is_flag=True, help="No progress bar or notes on stderr."),
    click.option("-v", "--verbose", count=True, help="Log to stderr (-v info, -vv debug)."),
]


def _note(main: bool, quiet: bool, message: str) -> None:
    if main and not quiet:
        click.echo(message, err=True)


def _read(path: str, share: tuple[int, int], skip_bad: bool, what: str, main: bool, quiet: bool):
    from salmonn.errors import ConfigError
    from salmonn.train import distributed
    from salmonn.train.examples import check_audio, drop_lines, read_data

    try:
        data = read_data(path)
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    results = distributed.gather(check_audio(data, share))
    bad = sorted((b for found, _ in results for b in found), key=lambda b: b.line)
    drop_lines(data, bad)
    data.cut = sum(cut for _, cut in results)
    if data.bad and not skip_bad:
        lines = "\n".join(f"  {b}" for b in data.bad)
        raise click.ClickException(
            f"{path}: {len(data.bad)} bad line(s), training not started (--skip-bad drops "
            f"them):\n{lines}"
        )
    if data.bad:
        _note(main, quiet, f"{what}: skipped {len(data.bad)} bad line(s) of {path}")
    if data.cut:
        _note(main, quiet, f"{what}: {data.cut} clip(s) over 30 s; their first 30 s are used")
    if not data.lines:
        raise click.ClickException(f"{path}: no example left to train on")
    return data


@contextlib.contextmanager
def _starting_point(settings: Any, seed: int, note: Any) -> Iterator[Any]:
    """The settings unchanged with a --checkpoint; without one, settings whose checkpoint is a
    temporary file with the trainable part initialised as the original initialises it."""
    if settings.checkpoint is not None:
        yield settings
        return
    from salmonn.hub.resolve import resolve_components
    from salmonn.train.init import write_initial_checkpoint

    note(
        "no --checkpoint: the trainable part starts from the original's initialisation "
        "(stage 1); give --checkpoint to fine-tune released or earlier weights"
    )
    with tempfile.TemporaryDirectory(prefix="salmonn-init-") as folder:
        path = Path(folder) / "initial.pth"
        path.touch()
        found = resolve_components(
            settings.preset, settings.whisper, settings.beats, settings.llm, str(path)
        )
        write_initial_checkpoint(path, found.whisper, found.beats, found.llm, seed=seed)
        yield dataclasses.replace(settings, checkpoint=str(path))


class _Progress:
    """tqdm bar on stderr: step / total, loss, lr, examples/s, ETA."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=start,
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
            )

    def __call__(self, info: Any) -> None:
        if self.bar is None:
            return
        if info.split == "eval":
            self.bar.write(
                f"step {info.step}: eval loss {info.loss:.4f}, token accuracy {info.accuracy:.3f}"
            )
            return
        self.bar.set_postfix(
            loss=f"{info.loss:.4f}",
            lr=f"{info.lr:.2e}",
            ex_s=f"{info.examples_per_s:.2f}",
            refresh=False,
        )
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command("train")
@click.argument("data", metavar="DATA")
@apply(_MODEL_FLAGS + TRAIN_OPTIONS)
def train(data: str, **params: Any) -> None:
    """Fine-tune SALMONN on DATA (JSONL, the original's annotation JSON, or salmonn records).

    Runs data-parallel under torchrun: torchrun --nproc-per-node N -m salmonn_cli train ...
    """
    from salmonn.train import distributed
    from salmonn.train.state import latest_checkpoint

    from .progress import setup_logging
    from .run import load_model
    from .settings import ModelSettings

    setup_logging(params["verbose"])
    quiet = params["quiet"]
    dist = distributed.Dist.from_env()
    out_dir = Path(params["out_dir"])
    if not params["resume"] and latest_checkpoint(out_dir) is not None:
        raise click.UsageError(
            f"{out_dir} already holds a run: add --resume to continue it, or choose another --output"
        )
    settings = ModelSettings.from_params(params, warn=lambda m: _note(dist.main, False, m))
    device = distributed.start(dist, settings.device)
    try:
        _train(
            data,
            params,
            dist,
            dataclasses.replace(settings, device=device),
            out_dir,
            quiet,
            load_model,
        )
    finally:
        distributed.stop()


def _train(data_path, params, dist, settings, out_dir, quiet, load_model) -> None:
    from salmonn.train.loop import TrainConfig, Trainer, seed_everything

    share = (dist.rank, dist.world)
    data = _read(data_path, share, params["skip_bad"], "train", dist.main, quiet)
    eval_data = None
    if params["eval_data"]:
        eval_data = _read(params["eval_data"], share, params["skip_bad"], "eval", dist.main, quiet)
    config = TrainConfig(
        epochs=params["epochs"],
        max_steps=params["max_steps"],
        batch_size=params["batch_size"],
        grad_accum=params["grad_accum"],
        lr=params["lr"],
        min_lr=params["min_lr"],
        warmup_steps=params["warmup_steps"],
        warmup_start_lr=params["warmup_start_lr"],
        weight_decay=params["weight_decay"],
        max_text_tokens=params["max_text_tokens"],
        dropout=params["dropout"],
        seed=params["seed"],
        exact=params["exact"],
        lora_only=params["lora_only"],
        eval_every=params["eval_every"],
        save_every=params["save_every"],
        save_total_limit=params["save_total_limit"],
        gradient_checkpointing=params["gradient_checkpointing"],
        cache_encoder_outputs=params["cache_encoder_outputs"],
    )
    seed_everything(config.seed, dist.rank)
    note = lambda message: _note(dist.main, quiet, message)  # noqa: E731
    with _starting_point(settings, config.seed, note) as settings:
        model = load_model(settings, verbose=params["verbose"], quiet=quiet or not dist.main)
    progress = _Progress(0, 0, False)
    trainer = Trainer(
        model,
        data,
        config,
        out_dir,
        eval_data=eval_data,
        dist=dist,
        on_step=lambda info: progress(info),
    )
    if params["resume"]:
        step = trainer.resume()
        _note(
            dist.main,
            quiet,
            f"resuming at step {step} of {trainer.total_steps}"
            if step
            else f"nothing to resume in {out_dir}: starting at step 0",
        )
    progress = _Progress(trainer.total_steps, trainer.step, dist.main and not quiet)
    try:
        final = trainer.run()
        if eval_data is not None and not config.eval_every:
            evaluated = trainer.evaluate()
            if evaluated is not None:
                trainer.log(evaluated)
                progress(evaluated)
    finally:
        progress.close()
    _note(dist.main, quiet, f"done: {trainer.step} steps, weights in {final}")
