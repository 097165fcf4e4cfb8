"""What every served model shares (opdctl.backends.served): the retry policy, chunked scoring re-sending the prefix."""

from __future__ import annotations

import openai
import pytest
import torch

from opdctl.backends.served import PrefixStream, RetryPolicy, ServerUnavailable
from opdctl.backends.types import Rollouts, TeacherScores
from opdctl.errors import BackendError
from opdctl.progress import LogReporter, reporting_to


def error(kind: type[Exception], text: str) -> Exception:
    """An openai exception as the client raises it (without building an HTTP request for it)."""
    exc = kind.__new__(kind)
    Exception.__init__(exc, text)
    return exc


class Heard(LogReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def flaky(failures: int, error: Exception):
    calls = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return "answer"

    return call, calls


def test_transient_failures_are_retried_and_reported():
    call, calls = flaky(2, error(openai.APIConnectionError, "Connection error."))
    with reporting_to(Heard()) as heard:
        assert RetryPolicy(retries=3, backoff=0.001).run(call, "to score", "teacher server URL") == "answer"
    assert len(calls) == 3
    assert heard.lines == [
        "warning: teacher server URL: Connection error.; retry 1/3 in 0 s",
        "warning: teacher server URL: Connection error.; retry 2/3 in 0 s",
    ]


def test_a_server_that_stays_down_is_one_error_naming_it():
    call, calls = flaky(9, error(openai.APITimeoutError, "Request timed out."))
    with reporting_to(Heard()), pytest.raises(ServerUnavailable) as info:
        RetryPolicy(retries=2, backoff=0.001).run(call, "to generate a rollout", "student server http://s/v1")
    assert len(calls) == 3
    assert str(info.value).startswith("student server http://s/v1 failed to generate a rollout 3 times over 0 s")
    assert "check that it is running and reachable" in str(info.value)


def test_a_refusal_is_not_retried():
    call, calls = flaky(1, error(openai.BadRequestError, "Error code: 400 - max_tokens too large"))
    with pytest.raises(
        BackendError, match=r"^teacher server URL refused to score: Error code: 400 - max_tokens too large$"
    ):
        RetryPolicy(retries=5, backoff=0.001).run(call, "to score", "teacher server URL")
    assert len(calls) == 1


def test_each_chunk_is_scored_after_everything_before_it():
    seen = []

    def score(chunk: Rollouts, query_ids: torch.Tensor, top_k: int) -> TeacherScores:
        seen.append((chunk.prompt_ids, chunk.responses(), chunk.topk_ids.tolist()))
        shape = (*chunk.response_ids.shape, top_k)
        return TeacherScores(torch.zeros(shape).long(), torch.zeros(shape), torch.zeros(query_ids.shape))

    stream = PrefixStream(score, [[1, 2], [3]])
    query = torch.tensor([[[7, 8, 5], [7, 8, 6]], [[7, 8, 9], [0, 0, 0]]])  # two candidates, then the sampled id
    stream.extend([0, 1], torch.tensor([[5, 6], [9, 0]]), torch.tensor([2, 1]), query, 1)
    stream.extend([0], torch.tensor([[4]]), torch.tensor([1]), torch.tensor([[[7, 8, 4]]]), 1)
    assert seen[0] == ([[1, 2], [3]], [[5, 6], [9]], [[[7, 8], [7, 8]], [[7, 8], [0, 0]]])
    assert seen[1][:2] == ([[1, 2, 5, 6]], [[4]])
    assert stream.positions_scored == (2 + 2) + (1 + 1) + (4 + 1)  # every prefix is computed again
