"""The training loop: data order, micro-batches, optimizer steps, metrics, evaluation, checkpoints.

One optimizer step takes a global batch of ``batch_size x processes x grad_accum`` examples from a
seeded per-epoch permutation (the last batch of an epoch is filled from the epoch's start). Each
process runs its micro-batches; the gradient is that of the mean loss over every target token of
the global batch, whatever the split (each micro-batch's summed loss is divided by the global batch's
token count, known before the forward from the texts alone). Everything that decides the next step
(weights, AdamW and loss-scaler states, every process's random generators, the step) is in each
checkpoint, so a resumed run continues exactly where the interrupted one was.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from ..errors import SalmonnError
from . import distributed, state
from .distributed import Dist
from .examples import Data, DataLine
from .loss import batch_loss
from .metrics import MetricsLog
from .optim import make_optimizer
from .schedule import Schedule

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

    from ..model.salmonn_model import SalmonnModel

logger = logging.getLogger(__name__)


class TrainingError(SalmonnError):
    """Training cannot go on (out of memory, a resume that does not fit the run)."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run; the defaults are the original's configuration."""

    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 3e-5
    min_lr: float = 1e-5
    warmup_steps: int = 3000
    warmup_start_lr: float = 1e-6
    weight_decay: float = 0.05
    max_text_tokens: int = 300
    dropout: float = 0.1
    seed: int = 42
    exact: bool = False
    lora_only: bool = False
    eval_every: int | None = None
    save_every: int | None = None
    save_total_limit: int | None = None
    gradient_checkpointing: bool = False
    cache_encoder_outputs: bool = False
    log_every: int = 1

    def settings_that_must_match(self) -> dict[str, Any]:
        """What a resumed run must share with the interrupted one."""
        keep = ("batch_size", "grad_accum", "seed", "exact", "lora_only", "max_text_tokens")
        return {k: v for k, v in asdict(self).items() if k in keep}


@dataclass
class StepInfo:
    """What :func:`train` reports after each step (and each evaluation, ``split="eval"``)."""

    step: int
    total: int
    loss: float
    lr: float = 0.0
    examples_per_s: float = 0.0
    split: str = "train"
    accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def set_dropout(model: SalmonnModel, p: float) -> None:
    """Dropout probability of the Q-Former and the LoRA inputs (active in ``model.train()``)."""
    modules = [*model.speech_Qformer.modules(), *model.llama_model.modules()]
    for module in modules:
        if isinstance(module, torch.nn.Dropout):
            module.p = p


def epoch_order(count: int, epoch: int, seed: int, global_batch: int) -> list[int]:
    """The examples of ``epoch`` in their seeded order, filled up to whole global batches from the
    order's start."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(count, generator=gen).tolist()
    steps = math.ceil(count / global_batch)
    return [order[i % count] for i in range(steps * global_batch)]


class Trainer:
    """One run over ``data`` with ``config`` in ``out_dir`` (see :func:`train`)."""

    def __init__(
        self,
        model: Any,
        data: Data,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        eval_data: Data | None = None,
        dist: Dist | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
    ) -> None:
        self.model, self.data, self.config = model, data, config
        self.out_dir = Path(out_dir)
        self.eval_data = eval_data
        self.dist = dist or Dist()
        self.on_step = on_step or (lambda info: None)
        world = self.dist.world
        self.global_batch = config.batch_size * world * config.grad_accum
        if not data.lines:
            raise TrainingError(f"{data.path}: no example to train on")
        self.steps_per_epoch = math.ceil(len(data.lines) / self.global_batch)
        if config.max_steps is not None:
            self.total_steps = config.max_steps
        else:
            self.total_steps = (config.epochs or 1) * self.steps_per_epoch
        self.schedule = Schedule(
            config.lr, config.min_lr, config.warmup_steps, config.warmup_start_lr, self.total_steps
        )
        self.params = model.trainable_parameters(lora_only=config.lora_only)
        self.saved_params = self._all_trained_tensors()
        set_dropout(model, config.dropout)
        if config.gradient_checkpointing:
            model.llama_model.get_base_model().gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        distributed.share_parameters(self.params)
        self.optimizer = make_optimizer(self.params, config.lr, config.weight_decay)
        fp16 = model.device.type == "cuda" and model.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.cache: dict | None = {} if config.cache_encoder_outputs else None
        loss_fn = partial(
            batch_loss,
            max_text_tokens=config.max_text_tokens,
            exact=config.exact,
            encoder_cache=self.cache,
        )
        self.module = distributed.wrap(distributed.LossModule(model, loss_fn), self.dist)
        self.step = 0
        self.metrics = MetricsLog(self.out_dir)

    def _all_trained_tensors(self) -> dict[str, torch.nn.Parameter]:
        """Every tensor a released checkpoint holds (the frozen Q-Former side too, in LoRA-only
        runs), so that each saved file loads on its own."""
        if not self.config.lora_only:
            return dict(self.params)
        full = self.model.trainable_parameters()
        self.model.trainable_parameters(lora_only=True)
        return full

    # ---- resume ----------------------------------------------------------------------------------
    def resume(self) -> int:
        """Continue from the newest complete checkpoint in ``out_dir``; returns its step (0: none)."""
        folder = state.latest_checkpoint(self.out_dir)
        if folder is None:
            return 0
        saved = state.load_checkpoint(folder)
        recorded = saved["state"].get("settings", {})
        wanted = {**self.config.settings_that_must_match(), "processes": self.dist.world}
        differ = [k for k, v in wanted.items() if k in recorded and recorded[k] != v]
        if differ:
            raise TrainingError(
                f"cannot resume from {folder}: {', '.join(differ)} differ from that run's "
                f"({', '.join(f'{k}={recorded[k]}' for k in differ)})"
            )
        with torch.no_grad():
            for name, param in self.saved_params.items():
                param.copy_(saved["model"][name])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scaler is not None and saved["scaler"] is not None:
            self.scaler.load_state_dict(saved["scaler"])
        ranks = saved["rng"]
        if len(ranks) > self.dist.rank:
            state.set_rng_state(ranks[self.dist.rank])
        self.step = int(saved["state"]["step"])
        if self.dist.main:
            self.metrics.trim(self.step)
        return self.step

    # ---- one step --------------------------------------------------------------------------------
    def _examples(self, lines: list[DataLine], indices: list[int], epoch: int) -> list[Any]:
        return [lines[i].example(self.config.seed, epoch) for i in indices]

    def _target_tokens(self, examples: list[Any]) -> int:
        tok = self.model.tokenizer
        limit = self.config.max_text_tokens
        return sum(min(len(tok.encode(e.target)) + 1, limit) for e in examples)

    def train_step(self) -> StepInfo:
        """One optimizer step on the next global batch."""
        cfg, dist = self.config, self.dist
        started = time.perf_counter()
        epoch, position = divmod(self.step, self.steps_per_epoch)
        order = epoch_order(len(self.data.lines), epoch, cfg.seed, self.global_batch)
        batch = self._examples(
            self.data.lines,
            order[position * self.global_batch : (position + 1) * self.global_batch],
            epoch,
        )
        tokens = self._target_tokens(batch)
        lr = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        loss_sum = 0.0
        b = cfg.batch_size
        for micro in range(cfg.grad_accum):
            start = (micro * dist.world + dist.rank) * b
            last = micro == cfg.grad_accum - 1
            # several processes: distributed.wrap gave a DistributedDataParallel
            sync = (
                contextlib.nullcontext()
                if last or dist.world == 1
                else cast("DistributedDataParallel", self.module).no_sync()
            )
            with sync:
                total, _, _ = self.module(batch[start : start + b])
                scaled = total * (dist.world / tokens)
                if self.scaler is not None:
                    scaled = self.scaler.scale(scaled)
                scaled.backward()
            loss_sum += float(total.detach())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = _grad_norm(self.params.values())
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        (loss_total,) = distributed.sum_all([loss_sum], self.model.device)
        seconds = time.perf_counter() - started
        return StepInfo(
            self.step,
            self.total_steps,
            loss_total / tokens,
            lr,
            len(batch) / max(seconds, 1e-9),
            extra={"grad_norm": grad_norm},
        )

    # ---- evaluation ------------------------------------------------------------------------------
    def evaluate(self) -> StepInfo | None:
        """Teacher-forced loss and argmax token accuracy over the evaluation data."""
        if self.eval_data is None or not self.eval_data.lines:
            return None
        self.model.eval()
        lines = self.eval_data.lines
        mine = [i for i in range(len(lines)) if i % self.dist.world == self.dist.rank]
        total = tokens = correct = 0.0
        with torch.no_grad():
            for start in range(0, len(mine), self.config.batch_size):
                examples = self._examples(lines, mine[start : start + self.config.batch_size], 0)
                loss = batch_loss(
                    self.model,
                    examples,
                    max_text_tokens=self.config.max_text_tokens,
                    exact=self.config.exact,
                )
                total += float(loss.total)
                tokens += loss.tokens
                correct += loss.correct
        total, tokens, correct = distributed.sum_all([total, tokens, correct], self.model.device)
        return StepInfo(
            self.step, self.total_steps, total / tokens, split="eval", accuracy=correct / tokens
        )

    # ---- records ---------------------------------------------------------------------------------
    def log(self, info: StepInfo) -> None:
        """Append ``info`` to metrics.jsonl (and TensorBoard), on rank 0."""
        if self.dist.main:
            self.metrics.write(
                info.step,
                info.split,
                info.loss,
                info.lr,
                info.examples_per_s,
                info.accuracy,
                info.extra,
            )

    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.step // self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "global_batch": self.global_batch,
            "examples": len(self.data.lines),
            "data": self.data.path,
            "settings": {**self.config.settings_that_must_match(), "processes": self.dist.world},
            "config": asdict(self.config),
        }

    def save(self) -> None:
        """Write ``checkpoint-<step>/`` (rank 0), with every process's random generators."""
        rngs = distributed.gather(state.rng_state())
        if self.dist.main:
            state.save_checkpoint(
                self.out_dir,
                self.step,
                self.saved_params,
                self.optimizer,
                self.scaler,
                rngs,
                self.trainer_state(),
            )
            state.prune(self.out_dir, self.config.save_total_limit)
        distributed.barrier()

    # ---- the run ---------------------------------------------------------------------------------
    def run(self) -> Path:
        """Train up to ``total_steps``; returns ``out_dir / "salmonn.pth"``."""
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        while self.step < self.total_steps:
            try:
                info = self.train_step()
            except torch.cuda.OutOfMemoryError:
                raise TrainingError(
                    f"out of GPU memory at --batch-size {cfg.batch_size}: use a smaller "
                    "--batch-size with --grad-accum (same global batch), or "
                    "--gradient-checkpointing"
                ) from None
            if info.step % cfg.log_every == 0 or info.step == self.total_steps:
                self.log(info)
            self.on_step(info)
            if cfg.eval_every and info.step % cfg.eval_every == 0:
                evaluated = self.evaluate()
                if evaluated is not None:
                    self.log(evaluated)
                    self.on_step(evaluated)
            if cfg.save_every and info.step % cfg.save_every == 0 and info.step < self.total_steps:
                self.save()
        self.save()
        final = self.out_dir / state.WEIGHTS_FILE
        if self.dist.main:
            state.save_weights(final, self.saved_params)
        self.model.eval()
        return final


def _grad_norm(params: Any) -> float:
    """The L2 norm of every trainable tensor's gradient (after averaging, before the step)."""
    grads = [p.grad.detach().float() for p in params if p.grad is not None]
    return float(torch.sqrt(sum((g * g).sum() for g in grads))) if grads else 0.0


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch with ``seed + rank`` (each process its own dropout draws)."""
    import random

    import numpy as np

    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def train(
    model: Any,
    data: Data,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    eval_data: Data | None = None,
    dist: Dist | None = None,
    resume: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
) -> Path:
    """Fine-tune ``model`` on ``data``; returns the path of the final ``salmonn.pth``.

    ``resume``: continue from the newest complete ``checkpoint-<step>/`` of ``out_dir``.
    """
    dist = dist or Dist()
    seed_everything(config.seed, dist.rank)
    trainer = Trainer(model, data, config, out_dir, eval_data=eval_data, dist=dist, on_step=on_step)
    if resume:
        trainer.resume()
    return trainer.run()
