"""Truncation on drift with any rollout engine (vLLM): the running rollouts continued one chunk at a time.

An engine generates whole responses in one call. For the drift monitor it is called once per
chunk instead: the rollouts still running, each as its prompt plus the tokens it has so far,
``monitor.chunk_tokens`` new tokens at most; the monitor then scores the chunk and stops the
rollouts whose weight reached the stop level, keeping their tokens up to that position, and
only the others are continued. vLLM's prefix cache holds what was computed for the earlier
chunks in whole blocks, so a continuation costs its new tokens and the positions of its last,
partial cache block (``student.vllm.block_size``). Each chunk samples with seeds of its own (the
same seeds again would repeat the first chunk's random draws).
"""

from __future__ import annotations

import random
from dataclasses import replace

import torch

from opdctl.backends.protocols import GenerationMonitor, RolloutEngine
from opdctl.backends.record import RolloutRecord
from opdctl.backends.types import Rollouts, Sampling


def generate_in_chunks(
    engine: RolloutEngine, prompts: list[list[int]], sampling: Sampling, monitor: GenerationMonitor
) -> Rollouts:
    """One response per prompt, as ``engine.generate`` would give, with the rollouts ``monitor`` stops cut short."""
    limit = sampling.max_new_tokens
    record = RolloutRecord.allocate(prompts, limit, sampling.record_topk, torch.device("cpu"))
    running, start = list(range(len(prompts))), 0
    while running:
        width = min(monitor.chunk_tokens, limit - start)
        continued = [record.prompts[row] + record.tokens[row, :start].tolist() for row in running]
        part = engine.generate(continued, replace(sampling, max_new_tokens=width, seed=chunk_seed(sampling, start)))
        record.extend(running, start, part)
        stopped = set(record.stop(monitor.observe(record.chunk(running, start, start + width))))
        start += width
        running = [
            row
            for row, length, reason in zip(running, part.lengths.tolist(), part.finish_reasons, strict=True)
            if length == width and reason == "length" and row not in stopped and start < limit
        ]
    return record.rollouts(list(range(len(prompts))))


def chunk_seed(sampling: Sampling, start: int) -> int:
    """The seed of the chunk that starts at decode step ``start``, drawn from the step's seed and ``start``."""
    return random.Random(f"{sampling.seed}/{start}").getrandbits(31)
