"""The optimizer side of a step: clipped AdamW updates of the student on its rollouts.

A step's rollouts are split into ``optim.updates_per_step`` mini-batches (:mod:`opdctl.algorithm.batching`);
:meth:`Updater.apply` runs one update: forward and backward over micro-batches of similar length, the
configured loss (:mod:`opdctl.algorithm.losses`), then one clipped optimizer step, skipped when the loss
or the gradient is not finite. The optimizer and its learning-rate schedule are checkpointed by the trainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from opdctl.algorithm.batching import length_groups, split_to
from opdctl.algorithm.losses import advantage_sum, opd_loss
from opdctl.algorithm.schedules import lr_scheduler
from opdctl.backends.protocols import DataParallel, Student
from opdctl.backends.types import QueryLayout, Rollouts, TeacherScores
from opdctl.config.schema import Config
from opdctl.distributed import World


@dataclass
class LossTargets:
    """What a mini-batch's loss compares the student with: the teacher's log-probs in the query layout, the
    weights m_t and which teacher values are exact (served teachers)."""

    teacher_lp: torch.Tensor
    loss_weight: torch.Tensor
    exact: torch.Tensor | None

    def select(self, rows: list[int], width: int | None = None) -> LossTargets:
        """The targets of ``rows``, cut to their first ``width`` positions (all without it)."""
        cut = (rows, slice(width))
        return LossTargets(
            self.teacher_lp[cut], self.loss_weight[cut], self.exact[cut] if self.exact is not None else None
        )


@dataclass
class Applied:
    """One update: its loss and gradient norm, whether the optimizer stepped, the training pass's log-probs."""

    loss: float
    grad_norm: float
    finite: bool  # false: non-finite loss or gradient, no optimizer step
    sampled_logprobs: torch.Tensor  # [B, T] the student's log-prob of each sampled token


@dataclass
class Update:
    """What a step's optimizer updates did (means over them; skipped if any was)."""

    loss: float
    grad_norm: float
    lr: float  # the rate for the next step
    skipped: bool  # non-finite loss or gradient: no optimizer step
    sampled_logprobs: torch.Tensor  # [B, T] the student's log-prob of each sampled token, from the training pass

    def metrics(self) -> dict[str, Any]:
        return {"loss": self.loss, "grad_norm": self.grad_norm, "lr": self.lr, "skipped": self.skipped}


class Updater:
    """The student's AdamW optimizer and learning-rate schedule, and one update with them."""

    def __init__(self, config: Config, student: Student, parallel: DataParallel, world: World) -> None:
        self.config, self.student, self.parallel, self.world = config, student, parallel, world
        self.params = student.trainable_parameters()
        o = config.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        updates = o.updates_per_step  # the schedule moves at every update; steps and warm-up count steps
        self.scheduler = lr_scheduler(self.optimizer, o.lr_schedule, o.warmup_steps * updates, o.steps * updates)

    def reapply_config(self) -> None:
        """After restoring a checkpoint's optimizer and schedule: the config's learning rate, betas and weight
        decay, not the checkpoint's, from the next update on (the schedule keeps its place)."""
        o = self.config.optim
        for group in self.optimizer.param_groups:
            group.update(initial_lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.scheduler.base_lrs = [o.lr] * len(self.optimizer.param_groups)
        self.scheduler.last_epoch -= 1
        self.scheduler.step()  # recomputes every group's rate at the same place in the schedule

    @property
    def lr(self) -> float:
        """The learning rate of the next update."""
        return self.scheduler.get_last_lr()[0]

    def mean_advantage(self, rollouts: Rollouts, scores: TeacherScores) -> float:
        """The sampled estimator's baseline (loss.baseline=mean): the mean k1 advantage over the whole step (all
        processes), from the log-probs the rollouts were sampled with, so every micro-batch uses the same."""
        if self.config.loss.estimator != "sampled" or self.config.loss.baseline == "none":
            return 0.0
        teacher = QueryLayout.sampled(scores.query_logprobs)
        total, count = advantage_sum(rollouts.sampled_logprobs, teacher, rollouts.mask)
        return self.world.sum(total) / max(1, self.world.sum(count))

    def apply(
        self,
        rollouts: Rollouts,
        query_ids: torch.Tensor,
        targets: LossTargets,
        mean_advantage: float,
        behaviour: torch.Tensor | None,
    ) -> Applied:
        """Forward/backward over micro-batches of similar length, then one clipped optimizer step unless the loss
        or gradient is not finite. ``behaviour``: the sampled tokens' log-probs under the weights that drew them,
        when the student has been updated since.

        The loss is a token mean over the mini-batch (all processes); DistributedDataParallel
        averages gradients over processes, so each process scales its part by their number.
        """
        cfg, world = self.config, self.world
        num_tokens = max(1, int(world.sum(int(rollouts.mask.sum()))))
        total_loss, sampled_lp = 0.0, torch.zeros_like(rollouts.sampled_logprobs)
        groups = length_groups(rollouts.lengths, cfg.optim.grad_accum)
        groups = split_to(groups, max(world.collect(len(groups))))  # the same number in every process
        for number, rows in enumerate(groups):
            part = rollouts.select(rows)
            width = part.response_ids.shape[1]
            target = targets.select(rows, width)
            with self.parallel.gradient_sync(number == len(groups) - 1):
                student_lp = self.student.logprobs(part, query_ids[rows, :width])
                loss = opd_loss(
                    cfg,
                    student_lp,
                    target.teacher_lp,
                    target.loss_weight,
                    num_tokens,
                    target.exact,
                    mean_advantage,
                    behaviour[rows, :width] if behaviour is not None else None,
                )
                (loss * world.size).backward()
            total_loss += loss.item()
            sampled_lp[rows, :width] = QueryLayout.sampled(student_lp).detach().float().cpu()
        total_loss = world.sum(total_loss)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.grad_clip or math.inf)
        finite = math.isfinite(total_loss) and bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return Applied(total_loss, float(grad_norm), finite, sampled_lp)
