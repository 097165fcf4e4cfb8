"""Drift by token position: where rollouts stop agreeing with the teacher."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from opdctl.analysis.reader import RunTraces
from opdctl.analysis.summary import FULL_WEIGHT

NICE_SIZES = (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000)


@dataclass
class PositionProfile:
    """Per position bin: mean overlap and weight, the share of rollouts still at full weight, first bad events."""

    bin_size: int
    start: list[int]
    tokens: list[int]
    overlap: list[float]
    weight: list[float]
    full_weight: list[float]  # among rollouts that reach the bin's first position
    first_bad: list[int]  # rollouts whose first bad event falls in the bin
    rollouts: int
    never_bad: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def position_profile(traces: RunTraces, bin_size: int | None = None, bins: int = 20) -> PositionProfile:
    """Aggregate every traced token by position bin (one step file at a time)."""
    rollouts = traces.rollouts(["length", "first_bad"])
    longest = max(rollouts["length"].to_pylist())
    size = bin_size or next((s for s in NICE_SIZES if s * bins >= longest), NICE_SIZES[-1])
    count = longest // size + 1
    tokens, overlap, weight = np.zeros(count), np.zeros(count), np.zeros(count)
    reached, full = np.zeros(count), np.zeros(count)
    for step in traces.steps:
        table = traces.tokens(step, ["position", "overlap", "weight"])
        position = table["position"].to_numpy()
        w = table["weight"].to_numpy()
        b = position // size
        tokens += np.bincount(b, minlength=count)
        overlap += np.bincount(b, weights=table["overlap"].to_numpy(), minlength=count)
        weight += np.bincount(b, weights=w, minlength=count)
        at_start = position % size == 0
        reached += np.bincount(b[at_start], minlength=count)
        full += np.bincount(b[at_start], weights=(w[at_start] >= FULL_WEIGHT).astype(float), minlength=count)
    first = rollouts["first_bad"].to_numpy()
    return PositionProfile(
        bin_size=size,
        start=[i * size for i in range(count)],
        tokens=tokens.astype(int).tolist(),
        overlap=_mean(overlap, tokens),
        weight=_mean(weight, tokens),
        full_weight=_mean(full, reached),
        first_bad=np.bincount(first[first >= 0] // size, minlength=count).tolist(),
        rollouts=len(first),
        never_bad=int((first < 0).sum()),
    )


def _mean(total: np.ndarray, count: np.ndarray) -> list[float]:
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0).tolist()
