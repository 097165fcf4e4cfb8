"""The two reverse-KL estimators of on-policy distillation (ALGORITHM.md, "On-policy distillation").

Both return the batch loss as a token mean: the sum over tokens of
``loss_weight * per-token loss`` divided by ``num_tokens``, the number of valid
response tokens in the whole optimizer step (so that gradient accumulation over
micro-batches gives the same gradient as one large batch). Advantages are
constants: the gradient flows through the student's log-probs only.
"""

from __future__ import annotations

import torch

ESTIMATORS = ("topk", "sampled")
BASELINES = ("mean", "none")
WEIGHTINGS = ("student_p", "teacher_p", "none")


def candidate_weights(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    weighting: str,
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """w_t(v): a softmax over the candidates of the student's or teacher's log-probs, or uniform.

    With a boolean ``candidates`` mask the softmax runs over the marked candidates
    only; a position with none gets zero weights.
    """
    if weighting == "student_p":
        scores = student_logprobs.detach()
    elif weighting == "teacher_p":
        scores = teacher_logprobs
    elif weighting == "none":
        scores = torch.zeros_like(student_logprobs).detach()
    else:
        raise ValueError(f"unknown candidate weighting {weighting!r}; expected one of {WEIGHTINGS}")
    if candidates is None:
        return torch.softmax(scores, dim=-1)
    weights = torch.softmax(scores.masked_fill(~candidates, float("-inf")), dim=-1)
    return torch.nan_to_num(weights, nan=0.0)


def topk_reverse_kl(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    loss_weight: torch.Tensor,
    num_tokens: int,
    weighting: str = "student_p",
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Top-k estimator: L = -sum_t m_t sum_{v in S_t} r_t(v) log p_t(v), r_t(v) = -(log p - log q) w_t(v).

    ``student_logprobs`` and ``teacher_logprobs`` are ``[B, T, k]`` log-probs of
    the student's top-k candidates under each model; ``loss_weight`` is m_t ``[B, T]``.
    ``candidates`` (boolean ``[B, T, k]``) restricts S_t, e.g. to the ids whose
    teacher log-prob is known exactly.
    """
    weights = candidate_weights(student_logprobs, teacher_logprobs, weighting, candidates)
    reward = -(student_logprobs.detach() - teacher_logprobs) * weights
    per_token = -(reward * student_logprobs).sum(-1)
    return (per_token * loss_weight).sum() / num_tokens


def sampled_reverse_kl(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    loss_weight: torch.Tensor,
    num_tokens: int,
    baseline: float = 0.0,
) -> torch.Tensor:
    """Sampled-token (k1) estimator: L = -sum_t m_t (A_t - b) log p_t(y_t), A_t = log q_t(y_t) - log p_t(y_t).

    Both log-prob tensors are ``[B, T]`` log-probs of the sampled tokens. ``baseline`` b
    is a constant (the step's mean advantage: :func:`advantage_sum`): since
    E_y[grad log p(y)] = 0 it leaves the expected gradient unchanged and removes the
    noise of A_t's mean, -KL, which is never positive.
    """
    advantage = (teacher_logprobs - student_logprobs).detach() - baseline
    per_token = -advantage * student_logprobs
    return (per_token * loss_weight).sum() / num_tokens


def advantage_sum(
    rollout_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor
) -> tuple[float, int]:
    """Sum of the k1 advantages log q(y) - log p(y) over valid tokens, and their number (summed over processes,
    they give the sampled estimator's baseline)."""
    return float(((teacher_logprobs - rollout_logprobs) * mask).sum()), int(mask.sum())


def reverse_kl_estimate(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean k1 estimate of KL(p || q) over valid tokens: E[log p(y) - log q(y)], y ~ p."""
    count = int(mask.sum())
    if count == 0:
        return 0.0
    diff = (student_logprobs.detach() - teacher_logprobs) * mask
    return float(diff.sum() / count)
