"""CPU threads that hold up when the machine is shared with other work.

torch starts one OpenMP thread per core, and by default OpenMP threads spin while
they wait for each other. When other processes keep the same cores busy, a spinning
thread burns the time slice its partner needs, and decoding becomes 10-30x slower
(docs/benchmarks.md). With ``OMP_WAIT_POLICY=PASSIVE`` waiting threads sleep instead:
measured on a shared 2-core machine, all cores with passive waiting were as fast as or
faster than one thread, and 20x faster than spinning.

opdctl sets ``OMP_WAIT_POLICY=PASSIVE`` when it is imported, before torch loads, unless
the environment already sets it; ``OMP_NUM_THREADS`` is left to the user (torch's
default: one thread per core).
"""

from __future__ import annotations

import os

WAIT_POLICY = "PASSIVE"


def apply_defaults() -> None:
    """Let waiting OpenMP threads sleep unless the user chose; takes effect only if torch is not loaded yet."""
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
