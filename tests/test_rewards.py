"""OPD mixed with a verifiable task reward: the reward functions, GRPO's group advantages, the policy-gradient
term and how the loss combines both terms, and a run that trains on a reward."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
import torch

from opdctl.algorithm import losses
from opdctl.config.files import validate
from opdctl.data import rewards
from opdctl.errors import ConfigError
from opdctl.plugins import REWARDS

from .conftest import assert_one_line_error, read_metrics, run_cli, tiny_config, write_config


def test_built_in_rewards_grade_the_final_answer():
    assert rewards.correct("so the total is \\boxed{1/2}", "0.5") == 1.0  # math-verify: equal values
    assert rewards.correct("I get 12 apples in the end", "12") == 1.0  # no \boxed{}: the last number
    assert rewards.correct("\\boxed{13}", "12") == 0.0
    assert rewards.exact("\\boxed{1/2}", "0.5") == 0.0  # exact compares characters
    assert rewards.exact("a3+b7=10\n\\boxed{10}", "10") == 1.0
    assert rewards.exact("no answer here", "10") == 0.0


def test_group_advantages_hand_computed():
    rewards_ = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # two prompts, three rollouts each
    centred = losses.group_advantages(rewards_, 3, scale="none")
    assert torch.allclose(centred, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0]))
    scaled = losses.group_advantages(rewards_, 3, scale="std")
    std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # unbiased
    assert torch.allclose(scaled[:3], centred[:3] / (std + 1e-6)) and (scaled[3:] == 0).all()


def test_task_reward_loss_value_and_gradient():
    student = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.2, 0.4, 0.1]])).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # the first rollout has two tokens
    advantage = torch.tensor([1.0, -0.5])
    loss = losses.task_reward_loss(student, advantage, mask, 5)
    by_hand = -(1.0 * (math.log(0.5) + math.log(0.25)) - 0.5 * (math.log(0.2) + math.log(0.4) + math.log(0.1))) / 5
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.allclose(grad, torch.tensor([[-1.0, -1.0, 0.0], [0.5, 0.5, 0.5]]) / 5)


def test_the_loss_is_opd_coef_times_opd_plus_reward_coef_times_the_reward_term():
    torch.manual_seed(0)
    student = torch.log_softmax(torch.randn(2, 3, 5), -1)  # k = 4, then y_t
    targets = losses.LossTargets(
        teacher=torch.log_softmax(torch.randn(2, 3, 5), -1),
        loss_weight=torch.ones(2, 3),
        num_tokens=6,
        advantage=torch.tensor([0.7, -0.7]),
        mask=torch.ones(2, 3),
    )
    plain = validate({"loss": {"k": 4}})
    mixed = validate({"loss": {"k": 4, "opd_coef": 0.5}, "reward": {"coef": 2.0}})
    only_reward = validate({"loss": {"k": 4, "opd_coef": 0.0}, "reward": {"coef": 1.0}})
    opd = losses.opd_loss(plain, student, targets)
    pg = losses.task_reward_loss(student[..., -1], targets.advantage, targets.mask, 6)
    assert [t.item() for t in losses.mixed_loss(plain, student, targets)] == pytest.approx([opd.item(), 0.0])
    assert [t.item() for t in losses.mixed_loss(mixed, student, targets)] == pytest.approx(
        [0.5 * opd.item(), 2 * pg.item()]
    )
    assert [t.item() for t in losses.mixed_loss(only_reward, student, targets)] == pytest.approx([0.0, pg.item()])


def test_a_loss_with_no_term_left_and_an_unknown_reward_are_config_errors():
    with pytest.raises(ConfigError, match=r"loss.opd_coef=0.0: must be > 0 when reward.coef is 0"):
        validate({"loss": {"opd_coef": 0.0}})
    with pytest.raises(ConfigError, match=r"reward.function='bleu': input should be 'correct' or 'exact'"):
        validate({"reward": {"function": "bleu"}})


@pytest.fixture
def longer_is_better(monkeypatch):
    """A registered reward that prefers longer responses (the tiny models answer nothing right)."""
    monkeypatch.setattr(REWARDS, "_builtins", dict(REWARDS._builtins))
    REWARDS.register("longer")(lambda response, answer: float(len(response)))


def test_a_run_on_the_reward_alone_logs_both_terms_and_traces_each_rollouts_reward(
    tiny_models, tmp_path, longer_is_better
):
    config = tiny_config(
        tiny_models, tmp_path / "run", loss={"opd_coef": 0.0}, reward={"coef": 1.0, "function": "longer"}
    )
    config["optim"]["steps"] = 2
    result = run_cli("train", "-c", str(write_config(tmp_path / "c.yaml", config)))
    assert result.exit_code == 0, result.output
    steps = [r for r in read_metrics(tmp_path / "run") if "eval" not in r]
    assert all(r["loss_opd"] == 0.0 and r["loss_reward"] != 0.0 and r["reward"] > 0 for r in steps)
    assert all(r["loss"] == pytest.approx(r["loss_reward"]) for r in steps)
    traced = pq.read_table(tmp_path / "run" / "traces" / "rollouts").to_pandas()
    assert traced["reward"].notna().all() and (traced["reward"] > 0).any()


def test_a_reward_without_reference_answers_stops_before_training(tiny_models, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "a3+b4"}\n{"prompt": "a1+b1"}\n')
    config = tiny_config(tiny_models, tmp_path / "run", data={"source": str(data), "limit": None}, reward={"coef": 1.0})
    result = run_cli("train", "-c", str(write_config(tmp_path / "c.yaml", config)))
    assert_one_line_error(result, "reward.coef=1.0 needs each prompt's reference answer", "set data.answer_field")
    assert not (tmp_path / "run").exists()
