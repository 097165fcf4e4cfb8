"""What every model served over HTTP needs, whatever the server: a served backend brings only its requests.

* :func:`sparse_scores`: a server returns only its own top-K per position; turn that into
  :class:`~opdctl.backends.types.TeacherScores`, with an upper bound (the smallest returned
  log-prob) for asked-about ids outside the top-K, marked inexact.
* :class:`RetryPolicy`: retry connection errors, timeouts, 429 and 5xx with exponential
  backoff, report each retry, and fail with one line naming the server.
* :class:`PrefixStream`: chunked scoring for servers without a usable prefix cache, each
  chunk's request re-sending the rollout so far.

The vLLM teacher (``opdctl_vllm``) and the student's vLLM server engine use them; an
SGLang or TGI teacher would be its requests plus these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import openai
import torch

from opdctl.backends.types import QueryLayout, Rollouts, TeacherScores
from opdctl.errors import BackendError, reason
from opdctl.progress import reporter

T = TypeVar("T")
RETRYABLE = (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError, openai.RateLimitError)
MAX_BACKOFF = 30.0
SparsePosition = dict[int, tuple[float, int]]  # token id -> (log-prob, rank), the server's top-K and the actual token


class ServerUnavailable(BackendError):
    """The server did not answer within the retry budget."""


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more attempts after the first, waiting ``backoff`` seconds, doubling, at most 30 s."""

    retries: int
    backoff: float

    def run(self, call: Callable[[], T], what: str, server: str) -> T:
        """Run ``call``; retry transient failures. ``server`` names it in messages, e.g. "teacher server URL"."""
        started = time.perf_counter()
        for attempt in range(self.retries + 1):
            try:
                return call()
            except RETRYABLE as exc:
                if attempt == self.retries:
                    waited = time.perf_counter() - started
                    raise ServerUnavailable(
                        f"{server} failed {what} {self.retries + 1} times over {waited:.0f} s "
                        f"({reason(exc)}): check that it is running and reachable"
                    ) from exc
                delay = min(self.backoff * 2**attempt, MAX_BACKOFF)
                reporter().message(
                    f"warning: {server}: {reason(exc)}; retry {attempt + 1}/{self.retries} in {delay:.0f} s"
                )
                time.sleep(delay)
            except openai.APIStatusError as exc:
                raise BackendError(f"{server} refused {what}: {reason(exc)}") from exc
        raise AssertionError("unreachable")


def sparse_scores(
    positions: list[list[SparsePosition]], rollouts: Rollouts, query_ids: torch.Tensor, top_k: int, k: int
) -> TeacherScores:
    """TeacherScores from each row's response positions as returned by a server (ranks from 1, K = ``k``)."""
    batch, width = rollouts.response_ids.shape
    queries = query_ids.shape[-1]
    topk_ids = torch.zeros((batch, width, top_k), dtype=torch.long)
    topk_lp = torch.zeros((batch, width, top_k))
    query_lp = torch.zeros((batch, width, queries))
    exact = torch.ones((batch, width, queries), dtype=torch.bool)
    for row in range(batch):
        length = int(rollouts.lengths[row])
        if not length:
            continue
        ids, lps, values, known = [], [], [], []
        for position, wanted in zip(positions[row][:length], query_ids[row, :length].tolist(), strict=True):
            top = sorted((rank, token) for token, (_, rank) in position.items() if rank <= k)
            ids.append([token for _, token in top[:top_k]])
            lps.append([position[token][0] for token in ids[-1]])
            floor = position[top[-1][1]][0]
            values.append([position[token][0] if token in position else floor for token in wanted])
            known.append([token in position for token in wanted])
        topk_ids[row, :length] = torch.tensor(ids)
        topk_lp[row, :length] = torch.tensor(lps)
        query_lp[row, :length] = torch.tensor(values)
        exact[row, :length] = torch.tensor(known)
    return TeacherScores(topk_ids=topk_ids, topk_logprobs=topk_lp, query_logprobs=query_lp, query_exact=exact)


class PrefixStream:
    """Chunked scoring through ``score``: each chunk is scored as a rollout whose prompt is everything before it.

    For servers that do not reuse their prefix cache when asked for prompt log-probs
    (vLLM): every chunk re-scores the rollout from its start, so the cost grows with the
    square of the length divided by the chunk length (under ``rollout.chunking=auto`` such a
    teacher is not streamed at all: :func:`opdctl.training.generation.truncates`). ``positions_scored``
    counts every position the server computed, prefixes again included.
    """

    def __init__(self, score: Callable[[Rollouts, torch.Tensor, int], TeacherScores], prompts: list[list[int]]) -> None:
        self.score = score
        self.prefixes = [list(p) for p in prompts]
        self.positions_scored = 0

    def extend(
        self, rows: list[int], tokens: torch.Tensor, lengths: torch.Tensor, query_ids: torch.Tensor, top_k: int
    ) -> TeacherScores:
        candidates = QueryLayout.candidates(query_ids)
        chunk = Rollouts(
            prompt_ids=[self.prefixes[row] for row in rows],
            response_ids=tokens,
            lengths=lengths,
            topk_ids=candidates,
            topk_logprobs=torch.zeros(candidates.shape),
            sampled_logprobs=torch.zeros(tokens.shape),
            finish_reasons=[""] * len(rows),
        )
        scores = self.score(chunk, query_ids, top_k)
        self.positions_scored += sum(len(self.prefixes[row]) for row in rows) + int(lengths.sum())
        for row, new in zip(rows, chunk.responses(), strict=True):
            self.prefixes[row] = self.prefixes[row] + new
        return scores

    def close(self) -> None:
        self.prefixes = []
