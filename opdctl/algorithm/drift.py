"""Prune-OPD's drift signal and monotone reliability weights (docs/algorithm.md, "The drift signal").

The formulas are pure tensor maps over a batch of rollouts: ``[B, T]`` per-token
tensors, ``[B, T, k]`` top-k tensors, and a boolean ``mask`` that is true on valid
(unpadded) response positions. Drift metrics are registered in
:data:`opdctl.plugins.DRIFT_METRICS`: each is a function ``(view, threshold) -> [B, T]``
over a :class:`DriftView`, and a position is a bad event when its value is below
``prune.threshold``. :func:`judge` is the one place both the whole-rollout path
(:func:`measure_drift`) and the streaming monitor turn a view into weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from opdctl.backends.types import Rollouts, TeacherScores
from opdctl.config.schema import Config, PruneConfig
from opdctl.plugins import DRIFT_METRICS

WEIGHT_EPS = 1e-8  # a token counts towards the effective length while w_t > WEIGHT_EPS


def _shared(student_topk: torch.Tensor, teacher_topk: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, T, k]``: is the student's i-th top-k id also in the teacher's top-k?"""
    return (student_topk.unsqueeze(-1) == teacher_topk.unsqueeze(-2)).any(-1)


def overlap_ratio(student_topk: torch.Tensor, teacher_topk: torch.Tensor) -> torch.Tensor:
    """o_t = |S_t ∩ T_t| / k for top-k id sets of equal size k."""
    k = student_topk.shape[-1]
    return _shared(student_topk, teacher_topk).sum(-1).float() / k


def weighted_overlap(
    student_topk: torch.Tensor, student_topk_logprobs: torch.Tensor, teacher_topk: torch.Tensor
) -> torch.Tensor:
    """The student's probability on S_t ∩ T_t divided by its probability on S_t.

    opdctl's third metric: ids that carry almost no student probability barely
    count, so the arbitrary order of near-zero tails does not read as drift.
    """
    probs = student_topk_logprobs.float().exp()
    shared = (probs * _shared(student_topk, teacher_topk)).sum(-1)
    return shared / probs.sum(-1).clamp_min(torch.finfo(torch.float32).tiny)


def top_p_acceptance(
    sampled: torch.Tensor, teacher_topk: torch.Tensor, teacher_topk_logprobs: torch.Tensor, top_p: float
) -> torch.Tensor:
    """Is the sampled token in the teacher's top-p nucleus within its top-k?

    The nucleus is the smallest prefix of the teacher's top-k, sorted by
    probability, whose cumulative probability reaches ``top_p``; when the top-k
    mass never reaches it, every top-k id is accepted.
    """
    return sampled_nucleus_mass(sampled, teacher_topk, teacher_topk_logprobs) < top_p


def sampled_nucleus_mass(
    sampled: torch.Tensor, teacher_topk: torch.Tensor, teacher_topk_logprobs: torch.Tensor
) -> torch.Tensor:
    """The teacher's probability on its top-k ids ranked above the sampled token (inf if it is not in the top-k).

    The sampled token is in the top-p nucleus exactly when this is below ``top_p``.
    """
    order = teacher_topk_logprobs.argsort(dim=-1, descending=True)
    ids = teacher_topk.gather(-1, order)
    probs = teacher_topk_logprobs.gather(-1, order).float().exp()
    mass_before = probs.cumsum(-1) - probs
    found = ids == sampled.unsqueeze(-1)
    inf = torch.full_like(mass_before, float("inf"))
    return torch.where(found, mass_before, inf).amin(-1)


def sampled_probability(
    sampled: torch.Tensor, teacher_topk: torch.Tensor, teacher_topk_logprobs: torch.Tensor
) -> torch.Tensor:
    """The teacher's probability of the sampled token, 0 when it is not in the teacher's top-k."""
    found = teacher_topk == sampled.unsqueeze(-1)
    return (teacher_topk_logprobs.float().exp() * found).sum(-1)


def bad_events(signal: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean bad-event flags on valid positions: the metric's value is below ``threshold``.

    (``teacher_top_p`` gives 1 or 0, so with a threshold in (0, 1] a bad event is a rejection.)
    """
    return (signal < threshold) & mask


@dataclass(frozen=True)
class TokenWeights:
    """Per-token Prune-OPD weights of a batch of rollouts: the reliability weight w_t, the loss weight m_t, L_eff."""

    weight: torch.Tensor  # w_t = clip(1 - w_drop * c_t, 0, 1), 0 on padding, [B, T]
    loss_weight: torch.Tensor  # m_t = w_t + w_base, 0 on padding, [B, T]
    effective_length: torch.Tensor  # L_eff: valid tokens with w_t > 1e-8, [B]


def reliability_weights(
    bad: torch.Tensor, mask: torch.Tensor, w_drop: float, w_base: float, earlier: torch.Tensor | None = None
) -> TokenWeights:
    """Monotone weights from cumulative (inclusive) bad-event counts.

    ``earlier`` ``[B]`` counts bad events before the first position given, for
    rollouts scored a chunk at a time.
    """
    mask_f = mask.float()
    count = (bad & mask).long().cumsum(-1).float()
    if earlier is not None:
        count = count + earlier.unsqueeze(-1).float()
    weight = (1.0 - w_drop * count).clamp(0.0, 1.0) * mask_f
    loss_weight = (weight + w_base) * mask_f
    effective = ((weight > WEIGHT_EPS) & mask).sum(-1)
    return TokenWeights(weight=weight, loss_weight=loss_weight, effective_length=effective)


def bad_events_to_stop(w_drop: float, stop_weight: float) -> int | None:
    """The fewest bad events that bring w_t down to ``stop_weight`` (as :func:`reliability_weights` computes
    it), or None when weights never fall (``w_drop`` 0)."""
    if w_drop <= 0:
        return None
    counts = torch.arange(math.ceil(1 / w_drop) + 2, dtype=torch.float32)
    weights = (1.0 - w_drop * counts).clamp(0.0, 1.0)
    return int((weights <= stop_weight).int().argmax())


def uniform_weights(mask: torch.Tensor) -> TokenWeights:
    """Plain OPD: every valid token has weight 1 and counts in full."""
    mask_f = mask.float()
    return TokenWeights(weight=mask_f, loss_weight=mask_f, effective_length=mask.sum(-1))


def first_bad_position(bad: torch.Tensor) -> torch.Tensor:
    """Index of each rollout's first bad event, or -1 where there is none."""
    any_bad = bad.any(-1)
    first = bad.int().argmax(-1)
    return torch.where(any_bad, first, torch.full_like(first, -1))


@dataclass(frozen=True)
class DriftView:
    """What a drift metric sees at each position: both models' top-k (ids, log-probs) and the sampled id."""

    student_topk: torch.Tensor  # [B, T, k] ids, best first
    student_topk_logprobs: torch.Tensor  # [B, T, k]
    teacher_topk: torch.Tensor  # [B, T, k] ids, best first
    teacher_topk_logprobs: torch.Tensor  # [B, T, k]
    sampled: torch.Tensor  # [B, T] ids

    @classmethod
    def of(
        cls, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, sampled: torch.Tensor, scores: TeacherScores, k: int
    ) -> DriftView:
        """The first ``k`` of the student's recorded top-k and of the teacher's scores."""
        return cls(topk_ids[..., :k], topk_logprobs[..., :k], scores.topk_ids[..., :k], scores.topk_logprobs[..., :k],
                   sampled)  # fmt: skip


@DRIFT_METRICS.register("overlap_ratio")
def overlap_ratio_metric(view: DriftView, threshold: float) -> torch.Tensor:
    """o_t, the share of the student's top-k S_t that is also in the teacher's top-k T_t (the paper's)."""
    return overlap_ratio(view.student_topk, view.teacher_topk)


@DRIFT_METRICS.register("teacher_top_p")
def teacher_top_p_metric(view: DriftView, threshold: float) -> torch.Tensor:
    """1 if y_t is in the teacher's top-p nucleus (p = prune.threshold) within its top-k, else 0."""
    return top_p_acceptance(view.sampled, view.teacher_topk, view.teacher_topk_logprobs, threshold).float()


@DRIFT_METRICS.register("teacher_prob")
def teacher_prob_metric(view: DriftView, threshold: float) -> torch.Tensor:
    """The teacher's probability of y_t (0 outside its top-k): bad when the teacher finds the token unlikely."""
    return sampled_probability(view.sampled, view.teacher_topk, view.teacher_topk_logprobs)


@DRIFT_METRICS.register("weighted_overlap")
def weighted_overlap_metric(view: DriftView, threshold: float) -> torch.Tensor:
    """The student's probability on S_t ∩ T_t over its probability on S_t (opdctl's own)."""
    return weighted_overlap(view.student_topk, view.student_topk_logprobs, view.teacher_topk)


@dataclass(frozen=True)
class Judgement:
    """What the drift monitor concludes at each position of a batch: the configured metric's value, bad events
    and weights, and the paper's overlap ratio o_t (logged and traced whatever the metric)."""

    signal: torch.Tensor  # [B, T], 0 on padding
    bad: torch.Tensor  # [B, T] bool
    weights: TokenWeights
    overlap: torch.Tensor  # [B, T], 0 on padding


def judge(view: DriftView, mask: torch.Tensor, prune: PruneConfig, earlier: torch.Tensor | None = None) -> Judgement:
    """Signal, bad events and reliability weights; ``earlier`` counts each row's bad events before the view."""
    signal = DRIFT_METRICS.get(prune.metric)(view, prune.threshold)
    bad = bad_events(signal, mask, prune.threshold)
    weights = reliability_weights(bad, mask, prune.w_drop, prune.w_base, earlier)
    return Judgement(signal * mask, bad, weights, overlap_ratio(view.student_topk, view.teacher_topk) * mask)


def measure_drift(config: Config, rollouts: Rollouts, scores: TeacherScores) -> Judgement:
    """Overlap, bad events and weights of a scored batch (plain OPD keeps every weight at 1)."""
    mask = rollouts.mask
    view = DriftView.of(rollouts.topk_ids, rollouts.topk_logprobs, rollouts.response_ids, scores, config.prune_k)
    judged = judge(view, mask, config.prune)
    return judged if config.prune.enable else replace(judged, weights=uniform_weights(mask))
