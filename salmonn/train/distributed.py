"""Data parallelism through torchrun: one process per device, each with its share of every batch.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them this is a single process and
nothing here talks to anyone. With them, :func:`start` joins the process group (NCCL on CUDA, gloo on
the CPU), each process takes the CUDA device of its local rank, the trainable tensors are copied from
rank 0, and :class:`LossModule` wrapped in ``DistributedDataParallel`` averages the gradients. Rank 0
alone writes checkpoints and logs (:attr:`Dist.main`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints, metrics and progress (rank 0)."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Dist:
        """From torchrun's variables (a single process without them)."""
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return cls()
        return cls(int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))


def start(dist: Dist, device: str | None) -> str | None:
    """Join the process group when there are several processes; returns the device to use
    (``cuda:LOCAL_RANK`` under torchrun on CUDA)."""
    if dist.world == 1:
        return device
    wants_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if wants_cuda:
        torch.cuda.set_device(dist.local_rank)
        device = f"cuda:{dist.local_rank}"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if wants_cuda else "gloo")
    return device


def stop() -> None:
    """Leave the process group (if joined)."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def sum_all(values: Sequence[float], device: Any = "cpu") -> list[float]:
    """Each value summed over the processes (the values themselves in a single process)."""
    if not torch_dist.is_initialized():
        return list(values)
    backend = torch_dist.get_backend()
    where = torch.device(device) if backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor(list(values), dtype=torch.float64, device=where)
    torch_dist.all_reduce(tensor)
    return tensor.tolist()


def gather(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order."""
    if not torch_dist.is_initialized():
        return [value]
    out: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()


def share_parameters(params: Mapping[str, torch.Tensor]) -> None:
    """Copy rank 0's trainable tensors to every process (the frozen ones are loaded the same)."""
    if not torch_dist.is_initialized():
        return
    with torch.no_grad():
        for name in sorted(params):
            torch_dist.broadcast(params[name].data, src=0)


class LossModule(nn.Module):
    """The model with the loss as its forward, so that ``DistributedDataParallel`` can wrap it."""

    def __init__(self, model: nn.Module, loss_fn: Any) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, examples: Sequence[Any]) -> tuple[torch.Tensor, int, int]:
        loss = self.loss_fn(self.model, examples)
        return loss.total, loss.tokens, loss.correct


def wrap(module: LossModule, dist: Dist) -> nn.Module:
    """``DistributedDataParallel`` over the trainable tensors when there are several processes."""
    if dist.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    cuda = next(iter(module.parameters())).device.type == "cuda"
    return DistributedDataParallel(
        module,
        device_ids=[dist.local_rank] if cuda else None,
        forward_sync_buffers=False,
        init_sync=False,  # share_parameters copied what trains; the frozen LLM is not resent
    )
