"""How the trainer reaches a student's data-parallel side: its own, or one process standing in for it."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from opdctl.backends.protocols import DataParallel, Student
from opdctl.distributed import World
from opdctl.errors import ConfigError


class SingleProcess:
    """The :class:`DataParallel` side of a student that trains in one process: nothing to reduce or gather."""

    def distribute(self, world: World) -> None:
        if world.distributed:
            raise ConfigError(
                f"this student backend trains in one process, but {world.size} were started: "
                "run opdctl train without torchrun, or use a backend that supports it (hf)"
            )

    def gradient_sync(self, enabled: bool) -> AbstractContextManager:
        return nullcontext()

    def unsharded(self) -> AbstractContextManager:
        return nullcontext()

    def full_state(self) -> None:
        return None

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)


def data_parallel(student: Student) -> DataParallel:
    """The student itself when it can train on several processes, else :class:`SingleProcess`."""
    return student if isinstance(student, DataParallel) else SingleProcess()
