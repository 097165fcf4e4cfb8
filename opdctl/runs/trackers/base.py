"""What every tracker is: a run it starts or continues, scalars and histograms logged by step, a close."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

RecordKey = tuple[int, str | None, str | None]


@dataclass
class TrackedRun:
    """What a tracker needs to start a run, or to continue the one it started."""

    path: Path  # the run directory
    name: str  # the run's name in the tracker: the run directory's name
    project: str  # output.project
    config: dict[str, Any]  # the resolved config, nested
    state: dict[str, Any] | None  # what the tracker stored when it started this run; None for a new run


class Tracker:
    """One tracker's run. Subclasses import their library in ``__init__`` only."""

    libraries: ClassVar[tuple[str, ...]]  # modules that must be importable
    extra: ClassVar[str]  # the opdctl extra that installs them
    histograms: ClassVar[bool] = False

    def __init__(self, run: TrackedRun) -> None:
        self.run = run

    def state(self) -> dict[str, Any]:
        """What to store to continue this run on --resume."""
        return {}

    def log(self, scalars: dict[str, float], histograms: dict[str, np.ndarray], step: int) -> None:
        """One record's values (``histograms`` is empty unless the class sets ``histograms``)."""
        raise NotImplementedError

    def close(self, failed: bool) -> None:
        raise NotImplementedError


def flatten(values: dict[str, Any], sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level, keys joined by ``sep``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, sep, name + sep))
        else:
            flat[name] = value
    return flat
