"""The vLLM plugin without a server: parsing prompt_logprobs into TeacherScores, the student engine's contract."""

import pytest
import torch

from opdctl.backends.served import ServerUnavailable
from opdctl.backends.types import EngineSetup, Rollouts, Sampling
from opdctl.config.files import validate
from opdctl.errors import BackendError, ConfigError
from opdctl.progress import LogReporter, reporting_to
from opdctl_vllm.rollout import ServerEngine, VLLMEngineOptions
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


def test_the_student_server_engine_retries_like_the_teacher_and_names_the_server():
    options = VLLMEngineOptions(base_url="http://127.0.0.1:9/v1", retries=1, backoff=0.01)
    engine = ServerEngine(options, EngineSetup("student", "float32", lora=False))
    with reporting_to(LogReporter()), pytest.raises(ServerUnavailable) as info:
        engine.generate([[1, 2, 3]], Sampling(4))
    assert str(info.value).startswith("student server http://127.0.0.1:9/v1 failed to generate a rollout 2 times")


def test_rollout_engines_validate_their_own_options():
    config = validate({"student": {"rollout": "vllm-server", "vllm": {"base_url": "http://s/v1"}}})
    assert config.student.vllm["base_url"] == "http://s/v1" and config.student.vllm["retries"] == 6
    assert validate({}).student.vllm == {}  # transformers rollouts have no engine options
    with pytest.raises(ConfigError, match=r"unknown config key 'student.vllm.bogus'; allowed keys here: base_url"):
        validate({"student": {"rollout": "vllm-colocate", "vllm": {"bogus": 1}}})
    with pytest.raises(
        BackendError,
        match=r"unknown rollout engine 'sglang': set student.rollout to 'vllm-colocate' or",
    ):
        validate({"student": {"rollout": "sglang"}})
