"""Data-parallel training over torch.distributed: which process does what, and how results meet.

Launch with ``torchrun --nproc_per_node N -m opdctl train ...`` (or ``accelerate
launch``, which starts torchrun): every process generates, scores and trains on its
share of each step's rollouts; gradients are averaged by DistributedDataParallel (or
reduce-scattered by FSDP with ``student.parallel=fsdp``); process 0 writes metrics,
traces and checkpoints.
"""

from __future__ import annotations

import atexit
import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from opdctl.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, total: int) -> tuple[int, int]:
        """This process's contiguous [start, end) of ``total`` rows (``total`` divisible by the size)."""
        if total % self.size:
            raise ConfigError(
                f"the {total} rollouts of a step (optim.prompts_per_step x rollout.n) do not divide among "
                f"{self.size} processes: make them a multiple of {self.size}"
            )
        part = total // self.size
        return self.rank * part, (self.rank + 1) * part

    def collect(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order, on every process."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def sum(self, value: float) -> float:
        return sum(self.collect(value)) if self.distributed else value

    def broadcast(self, value: Any) -> Any:
        """Process 0's ``value`` on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_world() -> World:
    """Join the process group that torchrun (or accelerate launch) described in the environment."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        raise ConfigError(
            "accelerate's FSDP plugin is not what opdctl uses (and on CPU accelerate silently runs plain DDP): "
            "launch without --use_fsdp and set student.parallel=fsdp"
        )
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(leave_world, wait=False)
    return World(rank=rank, size=size, local_rank=local_rank)


def leave_world(wait: bool = True) -> None:
    """Shut the process group down while the interpreter can still run its destructors: free the
    student first (an FSDP student holds the group), then, for a finished run (``wait``), meet the
    other processes so that none is still inside a collective. At exit after an error the handler
    does not wait for processes that may be gone.

    Left to interpreter exit, the group's communication threads aborted a finished
    process now and then ("terminate called without an active exception").
    """
    gc.collect()
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def device_for(world: World, requested: str) -> str:
    """``auto`` on a multi-GPU launch means this process's own GPU."""
    if requested == "auto" and world.distributed and torch.cuda.is_available():
        return f"cuda:{world.local_rank}"
    return requested
