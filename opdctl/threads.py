"""CPU threads that hold up when the machine is shared, and stay fast when it is not.

torch starts one OpenMP thread per core, and libgomp's threads spin for a while before
they sleep when they wait for each other. When other processes keep the same cores busy,
a spinning thread burns the time slice its partner needs, and decoding collapses; with
``OMP_WAIT_POLICY=PASSIVE`` waiting threads sleep at once, which holds up there. On an idle
machine passive waiting is the slower one: waking a sleeping thread costs more than the tiny
operations it waits between (docs/benchmarks.md, "How should CPU threads wait on a shared machine?").

So when opdctl is imported (before torch loads) it looks at how busy the other processes
keep the cores over a short window; if they keep at least half a core busy it sets
``OMP_WAIT_POLICY=PASSIVE``, otherwise it leaves libgomp's default. ``OMP_WAIT_POLICY``
or ``GOMP_SPINCOUNT`` in the environment always win. A machine that becomes busy after
the run started is not seen: set ``OMP_WAIT_POLICY=PASSIVE`` yourself on a shared machine.
What was chosen, and why, goes into a run's summary (:func:`setting`): a run that waited
passively on a quiet machine can take twice as long.
"""

from __future__ import annotations

import os
import time
from typing import Any

WAIT_POLICY = "PASSIVE"
BUSY_CORES = 0.5  # other processes' CPU use, in cores, from which threads wait passively
WINDOW_SECONDS = 0.05
USER_CHOICES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


_reason = "opdctl.threads.apply_defaults did not run"


def apply_defaults() -> None:
    """Let waiting OpenMP threads sleep when other work shares the cores, unless the user chose."""
    global _reason
    chosen = [f"{name}={os.environ[name]}" for name in USER_CHOICES if name in os.environ]
    if chosen:
        _reason = f"{', '.join(chosen)} in the environment"
        return
    busy = others_busy_cores()
    if busy >= BUSY_CORES:
        os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    _reason = f"other processes kept {busy:.1f} cores busy at start"


def setting() -> dict[str, Any]:
    """The CPU threads this process computes with, how waiting threads wait, and why (for a run's summary)."""
    import torch

    policy = os.environ.get("OMP_WAIT_POLICY", "").upper() or "default"
    return {"threads": torch.get_num_threads(), "wait_policy": policy, "why": _reason}


def others_busy_cores(window: float = WINDOW_SECONDS) -> float:
    """Cores kept busy by other processes over ``window`` seconds (0 where /proc is not there)."""
    try:
        before = _busy_ticks(), _own_ticks()
        time.sleep(window)
        after = _busy_ticks(), _own_ticks()
    except OSError:
        return 0.0
    (busy0, total0), own0 = before
    (busy1, total1), own1 = after
    cores = os.cpu_count() or 1
    if total1 <= total0:
        return 0.0
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / (total1 - total0) * cores


def _busy_ticks() -> tuple[int, int]:
    """Busy and total clock ticks of all cores, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def _own_ticks() -> int:
    """This process's user and system clock ticks, from /proc/self/stat."""
    with open("/proc/self/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
