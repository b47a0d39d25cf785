"""Where training runs: device choice and data-parallel process groups (``torchrun``).

One process (the default) uses the GPU if there is one, else the CPU. Under ``torchrun`` each
process joins a process group (``nccl`` on GPUs, ``gloo`` on CPUs), takes one shard of every
global batch, and gradients are averaged by DistributedDataParallel; rank 0 alone evaluates and
writes checkpoints and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

__all__ = ["Distributed", "setup_distributed"]


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global batch (rows ``rank, rank + world, …``)."""
        return tensor[self.rank :: self.world_size]


def setup_distributed(device: str | None = None) -> Distributed:
    """Join the ``torchrun`` process group if launched by it; pick the device (``cuda`` when available)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None:
        chosen = torch.device(device)
    elif torch.cuda.is_available():
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Distributed(rank=rank, world_size=world_size, device=chosen)
