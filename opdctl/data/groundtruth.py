"""Drift judged against the truth: where a rollout first goes wrong, and how well a signal sees it.

A worked solution tells where a student's rollout first goes wrong (its first number that
differs from the solution's, :func:`opdctl.data.wordproblems.first_error`). Tokens from there on
have drifted; tokens before it have not. A drift signal is a detector of that: its bad
events before the first error are false alarms, those after it are found drift.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from opdctl.data.wordproblems import first_error


def first_error_tokens(
    tokenizer: PreTrainedTokenizerBase, responses: torch.Tensor, lengths: torch.Tensor, solutions: list[str]
) -> list[int | None]:
    """For each response (token ids, right-padded), the index of the token holding its first wrong number."""
    found = []
    for ids, length, solution in zip(responses.tolist(), lengths.tolist(), solutions, strict=True):
        ids = ids[:length]
        offset = first_error(solution, tokenizer.decode(ids))
        found.append(None if offset is None else _token_at(tokenizer, ids, offset))
    return found


def _token_at(tokenizer: PreTrainedTokenizerBase, ids: list[int], offset: int) -> int:
    """The first token whose decoded text reaches past character ``offset``."""
    low, high = 0, len(ids) - 1
    while low < high:  # decoded prefixes only grow: bisect on their length
        middle = (low + high) // 2
        if len(tokenizer.decode(ids[: middle + 1])) > offset:
            high = middle
        else:
            low = middle + 1
    return low


@dataclass(frozen=True)
class Detection:
    """How a drift signal's bad events fall around the first errors of a set of rollouts."""

    rollouts: int
    with_error: int
    before: int  # bad events before the first error (all of a rollout without one): false alarms
    after: int  # bad events at or after the first error
    tokens_after: int  # tokens at or after a first error
    found: int  # rollouts with an error and a bad event at or after it
    delays: tuple[int, ...]  # for those: tokens from the first error to the first bad event at or after it

    @property
    def precision(self) -> float | None:
        return self.after / (self.before + self.after) if self.before + self.after else None

    @property
    def recall(self) -> float | None:
        """Share of the tokens after a first error that are bad events."""
        return self.after / self.tokens_after if self.tokens_after else None

    @property
    def found_share(self) -> float | None:
        return self.found / self.with_error if self.with_error else None

    @property
    def median_delay(self) -> float | None:
        return statistics.median(self.delays) if self.delays else None


def judge(bad: torch.Tensor, mask: torch.Tensor, first_errors: list[int | None]) -> Detection:
    """Score bad events ``bad`` (``[B, T]`` bool, valid where ``mask``) against each rollout's first error."""
    bad = bad & mask
    before = after = tokens_after = found = 0
    delays = []
    for row, error in enumerate(first_errors):
        events = bad[row].nonzero().flatten().tolist()
        if error is None:
            before += len(events)
            continue
        late = [t for t in events if t >= error]
        before, after = before + len(events) - len(late), after + len(late)
        tokens_after += int(mask[row, error:].sum())
        if late:
            found += 1
            delays.append(late[0] - error)
    with_error = sum(error is not None for error in first_errors)
    return Detection(len(first_errors), with_error, before, after, tokens_after, found, tuple(delays))
