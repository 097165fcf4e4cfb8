"""The reverse-KL estimators of on-policy distillation (docs/algorithm.md, "On-policy distillation").

Every estimator returns the batch loss as a token mean: the sum over tokens of
``loss_weight * per-token loss`` divided by ``num_tokens``, the number of valid
response tokens in the whole optimizer step (so that gradient accumulation over
micro-batches gives the same gradient as one large batch). Advantages are
constants: the gradient flows through the student's log-probs only.

Estimators are registered in :data:`opdctl.plugins.LOSS_ESTIMATORS`: each is a
function ``(student, targets, config) -> loss`` of the student's log-probs in the query
layout, the :class:`LossTargets` they are compared with, and the ``loss`` config
section; :func:`opd_loss` applies the configured one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from opdctl.backends.types import QueryLayout
from opdctl.config.schema import Config, LossConfig
from opdctl.plugins import LOSS_ESTIMATORS

WEIGHTINGS = ("student_p", "teacher_p", "none")
Estimator = Callable[[torch.Tensor, "LossTargets", LossConfig], torch.Tensor]


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
    renormalize: bool = False,
) -> torch.Tensor:
    """Top-k estimator: L = -sum_t m_t sum_{v in S_t} r_t(v) log p_t(v), r_t(v) = -(log p - log q) w_t(v).

    ``student_logprobs`` and ``teacher_logprobs`` are ``[B, T, k]`` log-probs of
    the student's top-k candidates under each model; ``loss_weight`` is m_t ``[B, T]``.
    ``candidates`` (boolean ``[B, T, k]``) restricts S_t, e.g. to the ids whose
    teacher log-prob is known exactly. With ``renormalize`` p_t is the student's
    distribution renormalised over S_t: the loss then depends on the logits of S_t
    only through their differences, so it never moves probability between S_t and
    the rest of the vocabulary (the same gradient as centring r_t on its w_t-mean).
    """
    weights = candidate_weights(student_logprobs, teacher_logprobs, weighting, candidates)
    if renormalize:
        student_logprobs = student_logprobs - _log_mass(student_logprobs, candidates)
    reward = -(student_logprobs.detach() - teacher_logprobs) * weights
    per_token = -(reward * student_logprobs).sum(-1)
    return (per_token * loss_weight).sum() / num_tokens


def _log_mass(logprobs: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
    """log sum_{v in S_t} p_t(v), ``[B, T, 1]``; 0 where S_t is empty."""
    if candidates is not None:
        logprobs = logprobs.masked_fill(~candidates, float("-inf"))
    mass = torch.logsumexp(logprobs, dim=-1, keepdim=True)
    return torch.where(torch.isfinite(mass), mass, torch.zeros_like(mass))


def sampled_reverse_kl(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    loss_weight: torch.Tensor,
    num_tokens: int,
    baseline: float = 0.0,
    behaviour_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled-token (k1) estimator: L = -sum_t m_t r_t (A_t - b) log p_t(y_t), A_t = log q_t(y_t) - log p_t(y_t).

    Both log-prob tensors are ``[B, T]`` log-probs of the sampled tokens. ``baseline`` b
    is a constant (the step's mean advantage: :func:`advantage_sum`): since
    E_y[grad log p(y)] = 0 it leaves the expected gradient unchanged and removes the
    noise of A_t's mean, -KL, which is never positive. r_t = p_t(y_t) / mu_t(y_t), held
    constant, is the importance weight of tokens sampled by an earlier policy mu
    (``behaviour_logprobs``: the student before this step's earlier updates); 1 without it.
    """
    advantage = (teacher_logprobs - student_logprobs).detach() - baseline
    if behaviour_logprobs is not None:
        log_ratio = (student_logprobs.detach() - behaviour_logprobs).masked_fill(loss_weight == 0, 0.0)  # padding
        advantage = advantage * log_ratio.exp()
    per_token = -advantage * student_logprobs
    return (per_token * loss_weight).sum() / num_tokens


def forward_topk_kl(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, loss_weight: torch.Tensor, num_tokens: int
) -> torch.Tensor:
    """Forward KL(q || p) over the teacher's top-k T_t and one tail bucket holding the rest of each distribution:
    L = sum_t m_t [sum_{v in T_t} q(v) (log q(v) - log p(v)) + q_tail (log q_tail - log p_tail)].

    Both tensors are ``[B, T, k]`` log-probs of the teacher's top-k ids under each model; the tails are
    ``1 - sum_{v in T_t}`` of each. The gradient w.r.t. the student's logit of v is p(v) - q(v) inside T_t and
    p(v) (1 - q_tail / p_tail) outside it: the tail bucket moves the student's mass outside T_t as a whole.
    """
    teacher_tail, student_tail = _log_tail(teacher_logprobs), _log_tail(student_logprobs)
    head = (teacher_logprobs.exp() * (teacher_logprobs - student_logprobs)).sum(-1)
    tail = teacher_tail.exp() * (teacher_tail - student_tail)
    return ((head + tail) * loss_weight).sum() / num_tokens


def _log_tail(logprobs: torch.Tensor) -> torch.Tensor:
    """log(1 - sum exp(logprobs)) over the last axis, ``[B, T]``; a top-k holding all the mass leaves ~1e-7."""
    mass = torch.logsumexp(logprobs, dim=-1).clamp(max=-1e-7)
    return torch.where(mass > -0.6931, torch.log(-torch.expm1(mass)), torch.log1p(-torch.exp(mass)))


def k3_reverse_kl(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    loss_weight: torch.Tensor,
    num_tokens: int,
    behaviour_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """k3 on the sampled token: L = sum_t m_t r_t [(q/p)(y_t) - 1 - log (q/p)(y_t)], differentiated through
    log p(y_t) (verl's and torchrl's low-variance KL loss).

    k3 is never negative and estimates KL(p || q) for y_t ~ p with less variance than k1; its gradient,
    (1 - q/p) grad log p(y_t), pulls log p(y_t) towards log q(y_t). ``behaviour_logprobs`` adds the importance
    weight r_t of tokens drawn by earlier weights, as in :func:`sampled_reverse_kl`. The log-ratio is clamped to
    +-20 (exp overflows past ~88).
    """
    log_ratio = (teacher_logprobs - student_logprobs).clamp(-20.0, 20.0)
    per_token = log_ratio.exp() - log_ratio - 1.0
    if behaviour_logprobs is not None:
        importance = (student_logprobs.detach() - behaviour_logprobs).masked_fill(loss_weight == 0, 0.0).exp()
        per_token = per_token * importance
    return (per_token * loss_weight).sum() / num_tokens


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "std") -> torch.Tensor:
    """GRPO's advantage of each rollout: its reward minus the mean over its prompt's ``group_size`` rollouts
    (consecutive rows), divided by their standard deviation (+1e-6) with ``scale="std"``. A group whose rewards
    are all equal gets zeros: it says nothing about which rollout was better."""
    groups = rewards.float().view(-1, group_size)
    centred = groups - groups.mean(-1, keepdim=True)
    if scale == "std" and group_size > 1:
        centred = centred / (groups.std(-1, keepdim=True) + 1e-6)
    return centred.view(-1)


def task_reward_loss(
    student_logprobs: torch.Tensor,
    advantage: torch.Tensor,
    mask: torch.Tensor,
    num_tokens: int,
    behaviour_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """The policy-gradient term of a task reward: L = -sum_t r_t A_i log p(y_t) over every valid token of
    rollout i, divided by the step's valid tokens like the OPD loss.

    ``student_logprobs`` ``[B, T]`` of the sampled tokens; ``advantage`` ``[B]`` (:func:`group_advantages`);
    ``behaviour_logprobs`` adds the importance weight r_t of tokens drawn by earlier weights. The token mean
    over the whole step (Dr. GRPO's) rather than per rollout keeps long rollouts from counting less per token.
    """
    weight = advantage.unsqueeze(-1) * mask
    if behaviour_logprobs is not None:
        weight = weight * (student_logprobs.detach() - behaviour_logprobs).masked_fill(~mask.bool(), 0.0).exp()
    return -(weight * student_logprobs).sum() / num_tokens


def queries_teacher_topk(estimator: Estimator) -> Estimator:
    """Mark an estimator that needs the student's log-probs on the teacher's top-k T_t: the update then asks
    the student about T_t too, after the query layout's k + 1 columns, and fills ``LossTargets.teacher_topk``."""
    estimator.queries_teacher_topk = True  # type: ignore[attr-defined]
    return estimator


@dataclass(frozen=True)
class LossTargets:
    """What the student's log-probs are compared with, built once per step and cut to each micro-batch."""

    teacher: torch.Tensor  # [B, T, k+1] the teacher's log-probs in the query layout
    loss_weight: torch.Tensor  # [B, T] m_t, 0 on padding
    num_tokens: int  # valid tokens in the whole optimizer step (all processes)
    teacher_exact: torch.Tensor | None = None  # [B, T, k+1] bool: which teacher values are exact (served teachers)
    mean_advantage: float = 0.0  # the step's mean k1 advantage, all processes (:func:`advantage_sum`)
    behaviour: torch.Tensor | None = None  # [B, T] sampled tokens' log-probs when drawn by earlier weights
    teacher_topk: torch.Tensor | None = None  # [B, T, k_T] the teacher's own top-k log-probs (queries_teacher_topk)
    advantage: torch.Tensor | None = None  # [B] each rollout's task-reward advantage (reward.coef > 0)
    mask: torch.Tensor | None = None  # [B, T] valid response tokens (the task-reward term weighs them all alike)

    def select(self, rows: list[int], width: int | None = None) -> LossTargets:
        """The targets of ``rows``, cut to their first ``width`` positions (all without it)."""

        def cut(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return tensor[rows, :width] if tensor is not None else None

        return replace(
            self,
            teacher=cut(self.teacher),
            loss_weight=cut(self.loss_weight),
            teacher_exact=cut(self.teacher_exact),
            behaviour=cut(self.behaviour),
            teacher_topk=cut(self.teacher_topk),
            advantage=self.advantage[rows] if self.advantage is not None else None,
            mask=cut(self.mask),
        )


@LOSS_ESTIMATORS.register("topk")
def topk_estimator(student: torch.Tensor, targets: LossTargets, config: LossConfig) -> torch.Tensor:
    """Reverse KL over the student's top-k S_t with candidate weights loss.weighting (the paper's)."""
    candidates = None
    if targets.teacher_exact is not None and config.absent_candidates == "drop":
        candidates = QueryLayout.candidates(targets.teacher_exact)
    return topk_reverse_kl(
        QueryLayout.candidates(student),
        QueryLayout.candidates(targets.teacher),
        targets.loss_weight,
        targets.num_tokens,
        config.weighting,
        candidates,
        config.renormalize,
    )


@LOSS_ESTIMATORS.register("sampled")
def sampled_estimator(student: torch.Tensor, targets: LossTargets, config: LossConfig) -> torch.Tensor:
    """k1 on y_t alone (needs only its teacher log-prob); noisier than topk, best at optim.updates_per_step=1.

    With loss.baseline=mean the step's mean advantage is subtracted. Why it trails topk: docs/benchmarks.md,
    "How does the sampled (k1) estimator compare with top-k?"."""
    baseline = targets.mean_advantage if config.baseline == "mean" else 0.0
    return sampled_reverse_kl(
        QueryLayout.sampled(student),
        QueryLayout.sampled(targets.teacher),
        targets.loss_weight,
        targets.num_tokens,
        baseline,
        targets.behaviour,
    )


@LOSS_ESTIMATORS.register("forward_topk")
@queries_teacher_topk
def forward_topk_estimator(student: torch.Tensor, targets: LossTargets, config: LossConfig) -> torch.Tensor:
    """Forward KL over the teacher's top-k T_t plus a tail bucket (verl's and slime's top-k distillation)."""
    on_teacher_topk = student[..., targets.teacher.shape[-1] :]
    return forward_topk_kl(on_teacher_topk, targets.teacher_topk, targets.loss_weight, targets.num_tokens)


@LOSS_ESTIMATORS.register("k3")
def k3_estimator(student: torch.Tensor, targets: LossTargets, config: LossConfig) -> torch.Tensor:
    """k3 on y_t, (q/p - 1) - log(q/p): never negative, lower variance than k1 (verl's low_var_kl)."""
    return k3_reverse_kl(
        QueryLayout.sampled(student[..., : targets.teacher.shape[-1]]),
        QueryLayout.sampled(targets.teacher),
        targets.loss_weight,
        targets.num_tokens,
        targets.behaviour,
    )


def opd_loss(config: Config, student: torch.Tensor, targets: LossTargets) -> torch.Tensor:
    """The configured estimator on the student's ``[B, T, k+1]`` log-probs in the query layout (then the teacher's
    top-k, for an estimator that queries it)."""
    return LOSS_ESTIMATORS.get(config.loss.estimator)(student, targets, config.loss)


def mixed_loss(config: Config, student: torch.Tensor, targets: LossTargets) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of the loss: ``loss.opd_coef`` times the OPD loss, ``reward.coef`` times the task-reward
    term (zero without a reward); their sum is what the update minimises."""
    opd = config.loss.opd_coef * opd_loss(config, student, targets) if config.loss.opd_coef else student.new_zeros(())
    if targets.advantage is None or not config.reward.coef:
        return opd, torch.zeros_like(opd)
    sampled = QueryLayout.sampled(student[..., : targets.teacher.shape[-1]])
    reward = task_reward_loss(sampled, targets.advantage, targets.mask, targets.num_tokens, targets.behaviour)
    return opd, config.reward.coef * reward


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
