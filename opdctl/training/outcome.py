"""What one training step produced, per rollout and per token: the stuff of metrics and traces.

Each training process builds the outcome of its own rollouts; outcomes are joined
(:meth:`StepOutcome.join`) so that metrics and traces describe the whole step.
:func:`summarize_run` sums the steps' metrics records up for summary.json; :func:`counter_totals`
and :func:`finish_totals` are the parts of that sum ``opdctl inspect-drift`` shows too.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from opdctl.algorithm.drift import Judgement, first_bad_position
from opdctl.algorithm.losses import reverse_kl_estimate
from opdctl.backends.types import FINISH_REASONS, QueryLayout, Rollouts, TeacherScores

RUN_COUNTERS = ("tokens_generated", "tokens_not_generated", "tokens_discarded", "drift_checks")


@dataclass
class StepOutcome:
    prompt_ids: list[list[int]]
    finish_reasons: list[str]
    lengths: torch.Tensor  # [B] kept response tokens
    generated: torch.Tensor  # [B] tokens generated and scored, cut tails included
    effective_length: torch.Tensor  # [B]
    response_ids: torch.Tensor  # [B, T]
    overlap: torch.Tensor  # [B, T] the paper's o_t
    signal: torch.Tensor  # [B, T] the configured metric
    bad: torch.Tensor  # [B, T] bool
    weight: torch.Tensor  # [B, T] w_t
    loss_weight: torch.Tensor  # [B, T] m_t
    teacher_logprob: torch.Tensor  # [B, T] of the sampled token
    student_logprob: torch.Tensor  # [B, T] of the sampled token, from the training forward pass
    rollout_logprob: torch.Tensor  # [B, T] of the sampled token, as the generating engine reported it
    teacher_top1: torch.Tensor  # [B, T]
    student_top1: torch.Tensor  # [B, T]
    reward: torch.Tensor | None = None  # [B] the task reward of each rollout (reward.coef > 0)
    teachers: list[str] | None = None  # which teacher scored each rollout (several teachers)

    @classmethod
    def of(
        cls,
        rollouts: Rollouts,
        scores: TeacherScores,
        measured: Judgement,
        student_logprob: torch.Tensor,
        generated: torch.Tensor,
        reward: torch.Tensor | None = None,
        teachers: list[str] | None = None,
    ) -> StepOutcome:
        return cls(
            prompt_ids=rollouts.prompt_ids,
            finish_reasons=rollouts.finish_reasons,
            lengths=rollouts.lengths.cpu(),
            generated=generated.cpu(),
            effective_length=measured.weights.effective_length.cpu(),
            response_ids=rollouts.response_ids.cpu(),
            overlap=measured.overlap.cpu(),
            signal=measured.signal.cpu(),
            bad=measured.bad.cpu(),
            weight=measured.weights.weight.cpu(),
            loss_weight=measured.weights.loss_weight.cpu(),
            teacher_logprob=QueryLayout.sampled(scores.query_logprobs).cpu(),
            student_logprob=student_logprob.cpu(),
            rollout_logprob=rollouts.sampled_logprobs.cpu(),
            teacher_top1=scores.topk_ids[..., 0].cpu(),
            student_top1=rollouts.topk_ids[..., 0].cpu(),
            reward=reward,
            teachers=teachers,
        )

    def histograms(self) -> dict[str, np.ndarray]:
        """The step's weights and overlaps over valid tokens, and the positions of its bad events (trackers)."""
        mask = torch.arange(self.response_ids.shape[1]).unsqueeze(0) < self.lengths.unsqueeze(1)
        positions = torch.arange(self.response_ids.shape[1]).expand_as(mask)
        return {
            "drift/weight": self.weight[mask].float().numpy(),
            "drift/overlap": self.overlap[mask].float().numpy(),
            "drift/bad_event_position": positions[self.bad & mask].numpy(),
        }

    @classmethod
    def join(cls, parts: list[StepOutcome]) -> StepOutcome:
        """The outcomes of several processes as one, rows in process order, right-padded."""
        if len(parts) == 1:
            return parts[0]
        width = max(p.response_ids.shape[1] for p in parts)
        joined: dict[str, Any] = {}
        for f in fields(cls):
            values = [getattr(p, f.name) for p in parts]
            if values[0] is None:
                joined[f.name] = None
            elif isinstance(values[0], list):
                joined[f.name] = [item for value in values for item in value]
            elif values[0].dim() == 1:
                joined[f.name] = torch.cat(values)
            else:
                joined[f.name] = torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[1])) for v in values])
        return cls(**joined)

    @property
    def mask(self) -> torch.Tensor:
        return torch.arange(self.response_ids.shape[1]).unsqueeze(0) < self.lengths.unsqueeze(1)

    @property
    def first_bad(self) -> torch.Tensor:
        return first_bad_position(self.bad)

    def metrics(self, max_len: int) -> dict[str, Any]:
        """The step's drift, length and token statistics over all its rollouts."""
        mask = self.mask
        tokens = int(mask.sum())
        stopped = torch.tensor([reason == "drift" for reason in self.finish_reasons])
        return {
            "overlap": _mean(self.overlap, mask),
            "bad_event_rate": _mean(self.bad.float(), mask),
            "weight": _mean(self.weight, mask),
            "reverse_kl": reverse_kl_estimate(self.student_logprob, self.teacher_logprob, mask),
            **self.logprob_gap(),
            "effective_length": float(self.effective_length.float().mean()),
            "response_length": tokens / len(self.finish_reasons),
            "tokens_generated": int(self.generated.sum()),
            "tokens_scored": int(self.generated.sum()),
            "tokens_trained": int(((self.loss_weight > 0) & mask).sum()),
            "tokens_not_generated": int((max_len - self.generated)[stopped].sum()) if stopped.any() else 0,
            "tokens_discarded": int((self.generated - self.lengths).sum()),
            **{f"finish_{reason}": self.finish_reasons.count(reason) for reason in FINISH_REASONS},
            **({"reward": float(self.reward.float().mean())} if self.reward is not None else {}),
            **({"by_teacher": self.by_teacher()} if self.teachers is not None else {}),
        }

    def by_teacher(self) -> dict[str, dict[str, float]]:
        """The step's drift and divergence per teacher (several teachers): rollouts, overlap, weight, reverse KL,
        effective length."""
        found = {}
        for name in dict.fromkeys(self.teachers or []):
            rows = torch.tensor([i for i, who in enumerate(self.teachers or []) if who == name])
            mask = self.mask[rows]
            found[name] = {
                "rollouts": len(rows),
                "overlap": _mean(self.overlap[rows], mask),
                "weight": _mean(self.weight[rows], mask),
                "reverse_kl": reverse_kl_estimate(self.student_logprob[rows], self.teacher_logprob[rows], mask),
                "effective_length": float(self.effective_length[rows].float().mean()),
            }
        return found

    def logprob_gap(self) -> dict[str, float]:
        """How far the generating engine's log-probs of the sampled tokens are from the training forward pass."""
        gap = (self.rollout_logprob - self.student_logprob).abs()[self.mask]
        if not gap.numel():
            return {"logprob_gap_max": 0.0, "logprob_gap_mean": 0.0}
        return {"logprob_gap_max": float(gap.max()), "logprob_gap_mean": float(gap.mean())}


def _mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    count = int(mask.sum())
    return float((values * mask).sum() / count) if count else 0.0


def summarize_run(records: list[dict[str, Any]], run_dir: str, steps: int, seconds: float) -> dict[str, Any]:
    """Totals over a run's step records, and each benchmark's latest accuracy and share of responses with no
    answer before, after and for the teacher (and the student's held-out reverse KL before and after, where
    measured)."""
    done = [r for r in records if "eval" not in r]
    evals = [r for r in records if "eval" in r]
    finish = finish_totals(done)
    return {
        "run_dir": run_dir,
        "steps": steps,
        "seconds": round(seconds, 1),
        **counter_totals(done),
        "mean_effective_length": _average([r["effective_length"] for r in done]),
        "mean_response_length": _average([r["response_length"] for r in done]),
        "final_max_len": done[-1]["next_max_len"] if done else None,
        "skipped_steps": sum(bool(r["skipped"]) for r in done),
        "rollouts_stopped_on_drift": finish["drift"],
        "rollouts": sum(finish.values()),
        "eval": {
            e["eval"]: {when: _latest(evals, e["eval"], when) for when in ("before", "after", "teacher")} for e in evals
        },
        "eval_unanswered": {
            e["eval"]: {when: _latest(evals, e["eval"], when, "no_answer") for when in ("before", "after", "teacher")}
            for e in evals
        },
        "eval_reverse_kl": {
            e["eval"]: {when: _latest(evals, e["eval"], when, "reverse_kl") for when in ("before", "after")}
            for e in evals
            if "reverse_kl" in e
        },
    }


def counter_totals(records: list[dict[str, Any]]) -> dict[str, int]:
    """The per-step token and drift-check counters summed over step records (0 for one a run did not record)."""
    return {key: sum(r.get(key, 0) for r in records) for key in RUN_COUNTERS}


def finish_totals(records: list[dict[str, Any]]) -> dict[str, int]:
    """Rollouts per finish reason, summed over step records."""
    return {reason: sum(r.get(f"finish_{reason}", 0) for r in records) for reason in FINISH_REASONS}


def _average(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _latest(records: list[dict[str, Any]], name: str, when: str, key: str = "accuracy") -> float | None:
    found = [r[key] for r in records if r["eval"] == name and r["when"] == when and key in r]
    return found[-1] if found else None
