"""Mini-batches of a step's rollouts (one optimizer update each), and the micro-batches of an update:
rows of similar length together, so few positions are padding.

A micro-batch pads every row to its longest, so one rollout that ran to the length limit
makes a whole batch of short ones cost as much as long ones (docs/benchmarks.md, "Where does
a step's time go?"). The rows, sorted by length, are cut into the contiguous groups that
minimise padded positions plus a fixed cost per micro-batch; the loss is a token sum over
the whole step, so the gradient is the same as one batch's.
"""

from __future__ import annotations

import math

import torch

MICRO_BATCH_COST = 512
"""A micro-batch's fixed cost (a forward and a backward call) in padded positions: a split must save more.
Set a little above a call's measured cost on the demo student, so that only splits that pay are made
(docs/benchmarks.md, "Where does a step's time go?")."""


def length_groups(lengths: torch.Tensor, accum: int, cost: int = MICRO_BATCH_COST) -> list[list[int]]:
    """Row indices in micro-batches of similar response length (shortest first), each at most
    ``ceil(rows / accum)`` rows (the memory ``optim.grad_accum`` asks for), chosen to minimise
    sum(rows x longest + ``cost``) over the micro-batches. Prompts, padded to their own longest,
    are not counted."""
    order = sorted(range(len(lengths)), key=lambda row: (int(lengths[row]), row))
    sizes = [int(lengths[row]) for row in order]
    n = len(order)
    if n == 0:
        return []
    cap = math.ceil(n / accum)
    best = [0.0] + [math.inf] * n  # best[i]: cheapest split of the i shortest rows
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - cap), end):
            total = best[start] + (end - start) * sizes[end - 1] + cost
            if total < best[end]:
                best[end], cut[end] = total, start
    groups, end = [], n
    while end:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def split_to(groups: list[list[int]], count: int) -> list[list[int]]:
    """``groups`` with the largest halved (shorter rows first) until there are ``count``: every process of a
    sharded (FSDP) run must run as many micro-batches, since each forward gathers the weights."""
    groups = [list(group) for group in groups]
    while len(groups) < count:
        largest = max(range(len(groups)), key=lambda i: len(groups[i]))
        group = groups[largest]
        if len(group) < 2:
            raise ValueError(f"cannot split {sum(map(len, groups))} rows into {count} micro-batches")
        groups[largest : largest + 1] = [group[: len(group) // 2], group[len(group) // 2 :]]
    return groups


def mini_batches(rows: int, count: int) -> list[list[int]]:
    """Row indices 0..rows-1 in ``count`` contiguous mini-batches of near-equal size (prompt order)."""
    return [part.tolist() for part in torch.arange(rows).tensor_split(count)]
