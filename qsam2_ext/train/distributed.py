"""torch.distributed set-up for torchrun: gloo on CPU, NCCL on GPU; one process per GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int
    world: int
    device: torch.device
    owns_group: bool  # this code created the process group (and so destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> Context:
    """Join the torchrun process group if there is one (``WORLD_SIZE`` > 1); pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return Context(rank, world, device, owns)


def teardown(ctx: Context) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: Context) -> None:
    if ctx.world > 1:
        dist.barrier()
