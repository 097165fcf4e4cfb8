"""Prune-OPD's dynamic response budget (docs/algorithm.md, "The dynamic response budget")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BudgetLimits:
    """The controller's fixed settings (the ``budget`` config section)."""

    min_len: int
    max_len: int
    increment: int
    hit_ratio: float
    margin: int
    patience: int


@dataclass(frozen=True)
class BudgetState:
    """What the controller carries from one training step to the next (checkpointed)."""

    current_len: int
    misses: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class BudgetUpdate:
    """The outcome of one step: the new state and what it was decided from."""

    state: BudgetState
    boundary: int
    hit_ratio: float


def update_budget(state: BudgetState, effective_lengths: Sequence[int], limits: BudgetLimits) -> BudgetUpdate:
    """Grow the window when enough rollouts stay reliable to its edge, else shrink after patience."""
    boundary = max(limits.min_len, state.current_len - limits.margin)
    hits = sum(1 for length in effective_lengths if length >= boundary)
    hit_ratio = hits / len(effective_lengths) if effective_lengths else 0.0
    if hit_ratio >= limits.hit_ratio:
        new = BudgetState(current_len=min(state.current_len + limits.increment, limits.max_len), misses=0)
    elif state.misses + 1 >= limits.patience:
        new = BudgetState(current_len=max(state.current_len - limits.increment, limits.min_len), misses=0)
    else:
        new = BudgetState(current_len=state.current_len, misses=state.misses + 1)
    return BudgetUpdate(state=new, boundary=boundary, hit_ratio=hit_ratio)
