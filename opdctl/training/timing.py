"""Where a step's time goes: one clock that waits for the accelerator, and a context that adds to a record."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def now(device: torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextmanager
def timed(name: str, seconds: dict[str, float], device: torch.device) -> Iterator[None]:
    """Add the wall time of the block to ``seconds[name]``."""
    started = now(device)
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + now(device) - started
