"""Learning-rate schedules: linear warm-up from 0, then constant, or linear or cosine decay to 0 at the last update.

The factors are transformers' ``get_scheduler`` formulas (``constant_with_warmup``, ``linear``,
``cosine``) in torch's ``LambdaLR``, as transformers builds them; importing transformers' scheduler
module imports peft wherever it is installed (3-4 s of every start). The scheduler state a
checkpoint holds is the same either way, so runs saved with transformers' schedulers resume.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from opdctl.config.schema import LRSchedule


def lr_factor(update: int, schedule: LRSchedule, warmup: int, total: int) -> float:
    """The learning rate at ``update`` (0-based) as a fraction of the configured one."""
    if update < warmup:
        return update / max(1, warmup)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, (total - update) / max(1, total - warmup))
    progress = (update - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def lr_scheduler(optimizer: Optimizer, schedule: LRSchedule, warmup: int, total: int) -> LambdaLR:
    """``schedule`` over ``total`` updates, the first ``warmup`` of them warming up."""
    return LambdaLR(optimizer, partial(lr_factor, schedule=schedule, warmup=warmup, total=total))
