"""The task reward of a step's rollouts (``reward.coef`` > 0): each answer graded against the row's reference,
then GRPO's advantages over each prompt's ``rollout.n`` rollouts."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from opdctl.algorithm.losses import group_advantages
from opdctl.backends.types import Rollouts
from opdctl.config.schema import Config
from opdctl.distributed import World
from opdctl.plugins import REWARDS


def step_rewards(
    config: Config, tokenizer: PreTrainedTokenizerBase, rollouts: Rollouts, answers: list[str], world: World
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rewards ``[b]`` of this process's rollouts and their advantages ``[b]``, computed over the whole step
    (a prompt's rollouts may be split between processes). A rollout stopped on drift has no answer: reward 0."""
    reward = REWARDS.get(config.reward.function)
    texts = tokenizer.batch_decode(rollouts.responses(), skip_special_tokens=True)
    local = [float(reward(text, answer)) for text, answer in zip(texts, answers, strict=True)]
    every = world.collect(local)
    advantages = group_advantages(
        torch.tensor([r for part in every for r in part]), config.rollout.n, config.reward.scale
    )
    start = sum(len(part) for part in every[: world.rank])
    return torch.tensor(local), advantages[start : start + len(local)]
