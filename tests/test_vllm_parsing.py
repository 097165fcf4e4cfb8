"""Parsing a vLLM prompt_logprobs response into TeacherScores (the response shape of docs/vllm.md)."""

import torch

from opdctl.backends import Rollouts
from opdctl_vllm.teacher import parse_scores


def _entry(pairs):
    """{token id: (rank, logprob)} -> the server's JSON shape."""
    return {str(t): {"logprob": lp, "rank": r, "decoded_token": "?"} for t, (r, lp) in pairs.items()}


def test_parse_scores_reads_top_k_exact_queries_and_bounds_absent_ones():
    rollouts = Rollouts(
        prompt_ids=[[1, 2]],
        response_ids=torch.tensor([[7, 8]]),
        lengths=torch.tensor([2]),
        topk_ids=torch.zeros(1, 2, 2, dtype=torch.long),
        topk_logprobs=torch.zeros(1, 2, 2),
        sampled_logprobs=torch.zeros(1, 2),
        finish_reasons=["eos"],
    )
    entries = [[
        None,
        {},  # position 1 predicts prompt token 2: not a response position
        _entry({7: (5, -4.0), 3: (1, -0.1), 4: (2, -1.0), 5: (3, -2.0)}),  # sampled 7 outside the top-3
        _entry({8: (1, -0.2), 6: (2, -1.5), 9: (3, -3.0)}),
    ]]  # fmt: skip
    query = torch.tensor([[[4, 99, 7], [9, 8, 8]]])  # two candidates, then the sampled token
    scores = parse_scores(entries, rollouts, query, top_k=2, k=3)
    assert scores.topk_ids.tolist() == [[[3, 4], [8, 6]]]
    assert torch.allclose(scores.topk_logprobs, torch.tensor([[[-0.1, -1.0], [-0.2, -1.5]]]))
    # 99 is not returned: bounded by the smallest top-K log-prob (-2.0) and marked inexact
    assert torch.allclose(scores.query_logprobs, torch.tensor([[[-1.0, -2.0, -4.0], [-3.0, -0.2, -0.2]]]))
    assert scores.query_exact.tolist() == [[[True, False, True], [True, True, True]]]
