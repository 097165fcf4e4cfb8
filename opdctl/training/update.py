"""The optimizer side of a step: clipped AdamW updates of the student on its rollouts.

A step's rollouts are split into ``optim.updates_per_step`` mini-batches (:mod:`opdctl.algorithm.batching`);
:meth:`Updater.apply` runs one update: forward and backward over micro-batches of similar length, the
configured loss (:mod:`opdctl.algorithm.losses`), then one clipped optimizer step, skipped when the loss
or the gradient is not finite. The optimizer and its learning-rate schedule are checkpointed by the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from opdctl.algorithm.batching import length_groups, mini_batches, split_to
from opdctl.algorithm.losses import LossTargets, advantage_sum, mixed_loss
from opdctl.algorithm.schedules import lr_scheduler
from opdctl.backends.protocols import DataParallel, Student
from opdctl.backends.types import QueryLayout, Rollouts, TeacherScores
from opdctl.config.schema import Config
from opdctl.distributed import World
from opdctl.plugins import LOSS_ESTIMATORS


@dataclass
class Update:
    """What a step's optimizer updates did (means over them; skipped if any was)."""

    loss: float
    grad_norm: float
    lr: float  # the rate for the next step
    skipped: bool  # non-finite loss or gradient: no optimizer step
    sampled_logprobs: torch.Tensor  # [B, T] the student's log-prob of each sampled token, from the training pass
    loss_opd: float = 0.0  # the loss's OPD term (loss.opd_coef included)
    loss_reward: float = 0.0  # its task-reward term (reward.coef included)

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

    def step(
        self,
        rollouts: Rollouts,
        scores: TeacherScores,
        loss_weight: torch.Tensor,
        on_update: Callable[[bool], None],
        advantage: torch.Tensor | None = None,
    ) -> Update:
        """``optim.updates_per_step`` optimizer updates, each over its mini-batch of the rollouts (in order);
        ``on_update(finite)`` is told after each whether it stepped. ``advantage`` ``[B]``: each rollout's
        task-reward advantage, when the loss has that term.

        Later mini-batches were sampled by the weights before the earlier updates: the sampled estimator
        weighs them by importance. The returned log-probs are the training pass's for the first mini-batch
        (what the log-prob gap checks: same weights as generation) and generation's for the rest.
        """
        device = self.student.device
        exact = scores.query_exact.to(device) if scores.query_exact is not None else None
        wants_topk = getattr(LOSS_ESTIMATORS.get(self.config.loss.estimator), "queries_teacher_topk", False)
        targets = LossTargets(
            teacher=scores.query_logprobs.to(device),
            loss_weight=loss_weight.to(device),
            num_tokens=0,  # each update's own (:meth:`_apply`)
            teacher_exact=exact,
            mean_advantage=self.mean_advantage(rollouts, scores),
            behaviour=rollouts.sampled_logprobs.to(device),
            teacher_topk=scores.topk_logprobs.to(device) if wants_topk else None,
            advantage=advantage.to(device) if advantage is not None else None,
            mask=rollouts.mask.to(device) if advantage is not None else None,
        )
        query_ids, sampled_lp = rollouts.query_ids(), rollouts.sampled_logprobs.clone()
        if wants_topk:  # the teacher's top-k T_t after the query layout's columns
            query_ids = torch.cat([query_ids, scores.topk_ids[:, : query_ids.shape[1]].to(query_ids.device)], -1)
        parts, norms, finite = [], [], []
        for number, rows in enumerate(mini_batches(len(rollouts), self.config.optim.updates_per_step)):
            first = number == 0  # drawn by these very weights: no importance weight
            part = replace(targets.select(rows), behaviour=None) if first else targets.select(rows)
            terms, grad_norm, stepped, logprobs = self._apply(rollouts.select(rows), query_ids[rows], part)
            on_update(stepped)
            parts.append(terms)
            norms.append(grad_norm)
            finite.append(stepped)
            if first:
                sampled_lp[rows, : logprobs.shape[1]] = logprobs
        self.student.weights_updated()
        opd, reward = (sum(p[i] for p in parts) / len(parts) for i in (0, 1))
        mean_norm = sum(norms) / len(norms)
        return Update(opd + reward, mean_norm, self.lr, not all(finite), sampled_lp, loss_opd=opd, loss_reward=reward)

    def _apply(
        self, rollouts: Rollouts, query_ids: torch.Tensor, targets: LossTargets
    ) -> tuple[tuple[float, float], float, bool, torch.Tensor]:
        """One update: forward/backward over micro-batches of similar length, then one clipped optimizer step
        unless the loss or gradient is not finite. Returns the loss's two terms (OPD, task reward), the gradient
        norm, whether it stepped and the training pass's log-probs of the sampled tokens.

        The loss is a token mean over the mini-batch (all processes); DistributedDataParallel
        averages gradients over processes, so each process scales its part by their number.
        """
        cfg, world = self.config, self.world
        targets = replace(targets, num_tokens=max(1, int(world.sum(int(rollouts.mask.sum())))))
        opd_total, reward_total, sampled_lp = 0.0, 0.0, torch.zeros_like(rollouts.sampled_logprobs)
        groups = length_groups(rollouts.lengths, cfg.optim.grad_accum)
        groups = split_to(groups, max(world.collect(len(groups))))  # the same number in every process
        for number, rows in enumerate(groups):
            part = rollouts.select(rows)
            width = part.response_ids.shape[1]
            with self.parallel.gradient_sync(number == len(groups) - 1):
                student_lp = self.student.logprobs(part, query_ids[rows, :width])
                opd, reward = mixed_loss(cfg, student_lp, targets.select(rows, width))
                ((opd + reward) * world.size).backward()
            opd_total, reward_total = opd_total + opd.item(), reward_total + reward.item()
            layout = student_lp[..., : targets.teacher.shape[-1]]  # without the teacher's top-k, if queried
            sampled_lp[rows, :width] = QueryLayout.sampled(layout).detach().float().cpu()
        opd_total, reward_total = world.sum(opd_total), world.sum(reward_total)
        total_loss = opd_total + reward_total
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.grad_clip or math.inf)
        finite = math.isfinite(total_loss) and bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return (opd_total, reward_total), float(grad_norm), finite, sampled_lp
