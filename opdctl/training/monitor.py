"""Truncation on drift: score rollouts while they are generated and stop those whose weight can no longer matter.

After each chunk of decode steps the monitor sends the new tokens of the running
rollouts to the teacher's stream, updates each rollout's bad-event count with the same
functions the loss uses, and stops a rollout at the first position where its weight w_t
falls to ``prune.stop_weight``: it keeps the tokens up to and including that position.
Chunks are exact or predicted (``rollout.chunking``). An exact chunk is ``rollout.chunk_tokens``
long at most, and never longer than the fewest bad events any running rollout still needs
to reach the stop: no rollout can reach its stop before the chunk ends, so none generates
a token past it. With ``rollout.max_overshoot`` = s, chunks are never shorter than s + 1
tokens (nor longer than ``chunk_tokens``): a rollout one bad event from its stop is checked
every s + 1 tokens instead of every token, and generates at most s tokens past its stop,
discarded. A predicted chunk ends where the first running rollout is expected to stop
at its bad-event rate so far (never sooner than the exact length; as long as the response
so far while no rollout has a bad event): far fewer checks, for teachers whose checks are
dear, at the price of a few tokens generated past a stop and discarded. The scores gathered
chunk by chunk are the step's teacher scores, so kept tokens get exactly the weights full
generation, full scoring and a cut would give.
"""

from __future__ import annotations

import time

import torch

from opdctl.algorithm.drift import DriftView, bad_events_to_stop, judge
from opdctl.backends.protocols import TeacherStream
from opdctl.backends.types import GeneratedChunk, TeacherScores
from opdctl.config.schema import Config


class DriftMonitor:
    """A GenerationMonitor that stops drifted rollouts (finish reason "drift")."""

    def __init__(self, config: Config, stream: TeacherStream, batch: int, max_len: int, query_width: int) -> None:
        self.config, self.stream = config, stream
        self.inexact = False
        self.seconds = 0.0  # spent in observe() outside the teacher: the monitor's own overhead
        self.longest_chunk = config.rollout.chunk_tokens
        self.predicting = config.rollout.chunking == "predicted"
        self.overshoot = config.rollout.max_overshoot
        self.to_stop = bad_events_to_stop(config.prune.w_drop, config.prune.stop_weight)
        self.chunk_tokens = self._next_chunk(torch.zeros(1, dtype=torch.long), generated=0)
        self.checks = 0  # chunks observed
        k = config.teacher_k
        self.topk_ids = torch.zeros((batch, max_len, k), dtype=torch.long)
        self.topk_logprobs = torch.zeros((batch, max_len, k))
        self.query_logprobs = torch.zeros((batch, max_len, query_width))
        self.query_exact = torch.ones((batch, max_len, query_width), dtype=torch.bool)
        self.bad_so_far = torch.zeros(batch, dtype=torch.long)
        self.scored = torch.zeros(batch, dtype=torch.long)  # tokens sent to the teacher, per rollout

    def observe(self, chunk: GeneratedChunk) -> dict[int, int]:
        started = time.perf_counter()
        cfg, k = self.config, self.config.prune_k
        rows = torch.tensor(chunk.rows, dtype=torch.long)
        new = chunk.lengths - chunk.start
        width = chunk.tokens.shape[1]
        valid = torch.arange(width).unsqueeze(0) < new.unsqueeze(1)
        query = chunk.query_ids()
        scoring = time.perf_counter()
        scores = self.stream.extend(chunk.rows, chunk.tokens, new, query, cfg.teacher_k)
        started += time.perf_counter() - scoring
        self._store(rows, chunk.start, width, scores)
        view = DriftView.of(chunk.topk_ids, chunk.topk_logprobs, chunk.tokens, scores, k)
        judged = judge(view, valid, cfg.prune, self.bad_so_far[rows])
        self.bad_so_far[rows] += judged.bad.sum(-1)
        self.scored[rows] = chunk.lengths
        spent = (judged.weights.weight <= cfg.prune.stop_weight) & valid
        stops = {row: chunk.start + int(spent[i].int().argmax()) for i, row in enumerate(chunk.rows) if spent[i].any()}
        running = (new == width) & ~spent.any(-1)
        self.chunk_tokens = self._next_chunk(self.bad_so_far[rows[running]], generated=chunk.start + width)
        self.checks += 1
        self.seconds += time.perf_counter() - started
        return stops

    def _next_chunk(self, bad_so_far: torch.Tensor, generated: int) -> int:
        return next_chunk(bad_so_far, generated, self.to_stop, self.longest_chunk, self.predicting, self.overshoot)

    def _store(self, rows: torch.Tensor, start: int, width: int, scores: TeacherScores) -> None:
        span = slice(start, start + width)
        self.topk_ids[rows, span] = scores.topk_ids
        self.topk_logprobs[rows, span] = scores.topk_logprobs
        self.query_logprobs[rows, span] = scores.query_logprobs
        if scores.query_exact is not None:
            self.query_exact[rows, span] = scores.query_exact
            self.inexact = True

    def scores(self, width: int) -> TeacherScores:
        """The teacher scores of the whole batch, gathered chunk by chunk, trimmed to ``width`` positions."""
        return TeacherScores(
            topk_ids=self.topk_ids[:, :width],
            topk_logprobs=self.topk_logprobs[:, :width],
            query_logprobs=self.query_logprobs[:, :width],
            query_exact=self.query_exact[:, :width] if self.inexact else None,
        )

    def close(self) -> None:
        self.stream.close()


def next_chunk(
    bad_so_far: torch.Tensor, generated: int, to_stop: int | None, longest: int, predicting: bool, overshoot: int
) -> int:
    """Decode steps until the next check, given the running rollouts' bad events after ``generated`` tokens:
    as many as the rollout closest to its stop (``to_stop`` bad events) needs at least, at most ``longest``
    (exact), or as many as it needs at its bad-event rate so far (predicted); never fewer than ``overshoot`` + 1
    (up to ``longest``), so a rollout generates at most ``overshoot`` tokens past its stop in an exact chunk."""
    if to_stop is None or not bad_so_far.numel():
        return longest
    fewest = max(to_stop - int(bad_so_far.max()), min(longest, overshoot + 1))  # the floor is at least 1 token
    if not predicting:
        return min(longest, fewest)
    heading = bad_so_far[bad_so_far > 0].float()  # rollouts with a bad event so far
    if not heading.numel():
        return max(fewest, longest, generated)
    expected = ((to_stop - heading) * generated / heading).ceil()  # at each one's rate so far
    return max(fewest, int(expected.min()))
