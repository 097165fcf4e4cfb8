"""The model cache: directories built once (demo models, converted GGUF files, the skilled SmolLM2 pair).

Every entry is built under a lock (another process may be building the same one) and marked
complete by a file written last, so an interrupted build is simply built again.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from opdctl.errors import BackendError


def cache_root() -> Path:
    """Where built models live: $OPDCTL_CACHE, else ~/.cache/opdctl (XDG_CACHE_HOME respected)."""
    if "OPDCTL_CACHE" in os.environ:
        return Path(os.environ["OPDCTL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "opdctl"


def cached(target: Path, complete: str, build: Callable[[Path], None]) -> Path:
    """``target``, built by ``build(target)`` unless its file ``complete`` shows a finished build."""
    if (target / complete).is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(target.parent / f".{target.name}.lock", "w")  # noqa: SIM115 (held while building)
    except OSError as exc:
        raise BackendError(
            f"cannot create the model cache {target.parent} ({exc.strerror}): set OPDCTL_CACHE to a writable directory"
        ) from None
    with lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if not (target / complete).is_file():
            build(target)
    return target
