"""The drift-aware OPD training loop (Prune-OPD; plain OPD with ``prune.enable=false budget.enable=false``).

One step, in order::

    prompts -> student.generate (under the response budget) -> rollouts       (opdctl.generation)
    rollouts -> teacher.score -> teacher top-k, log-probs of the query ids      (opdctl.generation)
    drift signal -> bad events -> monotone weights w_t, m_t, effective lengths  (opdctl.drift)
    student log-probs (with gradient) -> reverse-KL loss weighted by m_t -> optimizer step  (opdctl.losses)
    effective lengths -> budget for the next step                               (opdctl.budget)
    metrics.jsonl, traces, checkpoints                                          (opdctl.outcome, opdctl.rundir)

Runs start in :mod:`opdctl.start`; the checkpointed state is :class:`opdctl.checkpoint.TrainerState`;
SIGINT/SIGTERM stop a run at a checkpoint (:mod:`opdctl.stopping`).
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from opdctl.backends import QueryLayout, Rollouts, Sampling, Student, Teacher, TeacherScores
from opdctl.batching import length_groups, mini_batches, split_to
from opdctl.budget import BudgetLimits, BudgetState, update_budget
from opdctl.checkpoint import OPTIMIZER_FILE, TrainerState
from opdctl.config import Config
from opdctl.data import PromptSampler, PromptSet
from opdctl.distributed import World
from opdctl.drift import measure_drift
from opdctl.errors import BackendError, ConfigError, RunError
from opdctl.evaluation.benchmarks import Benchmark
from opdctl.evaluation.in_training import evaluate_in_training
from opdctl.files import write_failure
from opdctl.generation import generate_and_score, now
from opdctl.losses import advantage_sum, opd_loss
from opdctl.outcome import StepOutcome, summarize_run
from opdctl.progress import reporter
from opdctl.rundir import RunDir
from opdctl.schedules import lr_scheduler
from opdctl.stopping import Stopped, StopRequest, stop_on_signals
from opdctl.traces import trace_tables
from opdctl.trackers import Trackers


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
class Update:
    """What a step's optimizer updates did (means over them; skipped if any was)."""

    loss: float
    grad_norm: float
    lr: float  # the rate for the next step
    skipped: bool  # non-finite loss or gradient: no optimizer step
    sampled_logprobs: torch.Tensor  # [B, T] the student's log-prob of each sampled token, from the training pass

    def metrics(self) -> dict[str, Any]:
        return {"loss": self.loss, "grad_norm": self.grad_norm, "lr": self.lr, "skipped": self.skipped}


class Trainer:
    """Owns the backends, optimizer, budget and run directory of one training run."""

    def __init__(
        self,
        config: Config,
        run: RunDir,
        student: Student,
        teacher: Teacher,
        prompts: PromptSet,
        world: World | None = None,
        benchmarks: list[Benchmark] | None = None,
    ) -> None:
        self.config, self.run, self.student, self.teacher, self.prompts = config, run, student, teacher, prompts
        self.benchmarks = benchmarks or []
        self.world = world or World()
        start, end = self.world.share(config.optim.prompts_per_step * config.rollout.n)  # refuse uneven splits early
        if end - start < config.optim.updates_per_step:
            raise ConfigError(
                f"optim.updates_per_step={config.optim.updates_per_step}: each process holds {end - start} rollouts "
                "of a step, fewer than its updates: lower it or raise optim.prompts_per_step"
            )
        student.distribute(self.world)
        self.sampler = PromptSampler(len(prompts), config.seed)
        params = [p for p in student.model.parameters() if p.requires_grad]
        o = config.optim
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        updates = o.updates_per_step  # the schedule moves at every update; steps and warm-up count steps
        self.scheduler = lr_scheduler(self.optimizer, o.lr_schedule, o.warmup_steps * updates, o.steps * updates)
        self.state = TrainerState(budget=BudgetState(current_len=config.budget.init_len))
        self.limits = BudgetLimits(
            min_len=config.budget.min_len,
            max_len=config.budget.max_len or config.rollout.max_new_tokens,
            step=config.budget.step,
            hit_ratio=config.budget.hit_ratio,
            margin=config.budget.margin,
            shrink_patience=config.budget.shrink_patience,
        )
        self.trackers = Trackers(run, {}, {})  # process 0's experiment trackers, once start_run opens them

    # setup -----------------------------------------------------------------

    def restore(self, checkpoint: Path) -> None:
        """Continue from a checkpoint written by :meth:`save` (model weights were loaded by the backend)."""
        optimizer = torch.load(checkpoint / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        self.student.load_optimizer_state(self.optimizer, optimizer)
        self.state = TrainerState.restore(checkpoint, self.scheduler)

    def save(self) -> Path | None:
        """Process 0 writes a checkpoint; every process takes part in gathering sharded weights."""
        weights, optimizer = self.student.full_state(), self.student.optimizer_state(self.optimizer)

        def write(directory: Path) -> None:
            self.student.save(str(directory), weights)
            torch.save(optimizer, directory / OPTIMIZER_FILE)
            self.state.save(directory, self.scheduler)

        keep = self.config.output.keep_checkpoints
        path = self.run.save_checkpoint(self.state.step, write, keep) if self.world.main else None
        self.world.barrier()
        return path

    # the loop ----------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to ``optim.steps``; process 0 evaluates, logs and checkpoints while the others wait.

        SIGINT/SIGTERM stop after the current step with a checkpoint; a second one stops at once.
        A full disk or an unwritable file stops with the path and the resume command.
        """
        try:
            with self.trackers, stop_on_signals() as stop:
                return self._fit(stop)
        except KeyboardInterrupt:
            raise self._stopped_at_once() from None
        except OSError as exc:
            message = write_failure(exc, self.run.path, f"opdctl train --resume {self.run.path}")
            if message is None:
                raise
            raise RunError(f"{message} (the run is kept up to its last checkpoint)") from exc
        finally:
            self.run.lock.release()

    def _fit(self, stop: StopRequest) -> dict[str, Any]:
        cfg, state = self.config, self.state
        if state.step == 0:
            self.evaluate("before")
        with reporter().task("Training", cfg.optim.steps) as advance:
            advance(state.step)
            while state.step < cfg.optim.steps:
                if stop.agreed(self.world):
                    raise self._stop(stop)
                started = time.perf_counter()
                try:
                    record = self.train_step()
                except BackendError as exc:
                    raise self._interrupted(exc) from exc
                state.elapsed += time.perf_counter() - started
                if record is not None:
                    record["elapsed_seconds"] = round(state.elapsed, 3)
                    self.run.append_metrics(record)
                    advance(**_progress_fields(record))
                if cfg.eval.every and state.step % cfg.eval.every == 0 and state.step < cfg.optim.steps:
                    self.evaluate("during")
                if self._save_due():
                    self.save()
        self.evaluate("after")
        return self.summarize() if self.world.main else {}

    def _save_due(self) -> bool:
        step = self.state.step
        return step % self.config.output.save_every == 0 or step == self.config.optim.steps

    def _stop(self, stop: StopRequest) -> Stopped:
        """Checkpoint the steps done (unless just saved) and say how to continue."""
        name = signal.Signals(stop.signum).name
        if self.state.step == 0:
            where = "before the first step"
        else:
            if not self._save_due():
                self.save()
            where = f"after step {self.state.step}, checkpoint saved"
        return Stopped(f"stopped on {name} {where}; continue with: opdctl train --resume {self.run.path}", stop.signum)

    def _stopped_at_once(self) -> Stopped:
        latest = self.run.latest_checkpoint()
        since = f"its checkpoint at step {latest[0]}" if latest else "step 0"
        return Stopped(
            f"stopped at once during step {self.state.step + 1}; continue from {since} with: "
            f"opdctl train --resume {self.run.path}",
            signal.SIGINT,
        )

    def train_step(self) -> dict[str, Any] | None:
        """One Prune-OPD step over this process's share of the batch; process 0 returns the step's record."""
        cfg, step, world = self.config, self.state.step, self.world
        indices = self.sampler.indices(step, cfg.optim.prompts_per_step)
        prompts = [self.prompts.ids[i] for i in indices for _ in range(cfg.rollout.n)]
        start, end = world.share(len(prompts))
        max_len = self.state.budget.current_len if cfg.budget.enable else cfg.rollout.max_new_tokens
        sampling = Sampling(
            max_len,
            cfg.rollout.temperature,
            record_topk=cfg.loss.k,
            seed=_step_seed(cfg.seed, step),
            batch_rows=len(prompts),
            row_offset=start,
        )

        t0 = now(self.student.device)
        gen = generate_and_score(cfg, self.student, self.teacher, prompts[start:end], sampling)
        rollouts, scores, t1 = gen.rollouts, gen.scores, gen.ended_at
        t2 = now(self.student.device)
        measured = measure_drift(cfg, rollouts, scores)
        drift_seconds = time.perf_counter() - t2 + gen.monitor_seconds
        update = self.update(rollouts, rollouts.query_ids(), scores, measured.weights.loss_weight)
        t3 = now(self.student.device)

        local = StepOutcome.of(rollouts, scores, measured, update.sampled_logprobs, gen.token_counts)
        seconds = {"generate": t1 - t0, "score": t2 - t1, "update": t3 - t2, "drift": drift_seconds}
        collected = world.collect((local, seconds))
        outcome = StepOutcome.join([o for o, _ in collected])
        slowest = {key: max(t[key] for _, t in collected) for key in seconds}
        budget = (
            update_budget(self.state.budget, outcome.effective_length.tolist(), self.limits)
            if cfg.budget.enable
            else None
        )
        if budget:
            self.state.budget = budget.state
        self.state.step += 1
        if not world.main:
            return None
        record = {
            "step": step + 1,
            **update.metrics(),
            **outcome.metrics(max_len),
            "max_len": max_len,
            "next_max_len": self.state.budget.current_len if budget else max_len,
            "hit_ratio": budget.hit_ratio if budget else None,
            **{f"{key}_seconds": round(value, 5) for key, value in slowest.items()},
        }
        if self._traced(step + 1):
            self.run.write_traces(step + 1, *trace_tables(step + 1, indices, cfg, outcome, max_len))
        self._check_logprobs(step + 1, record["logprob_gap_max"], record["logprob_gap_mean"])
        return record

    def _check_logprobs(self, step: int, gap_max: float, gap_mean: float) -> None:
        """Warn when generation and training disagree about the sampled tokens (precision, stale weights)."""
        rollout = self.config.rollout
        due = step == 1 or step % rollout.logprob_check_every == 0
        if due and gap_max > rollout.logprob_tolerance:
            reporter().message(
                f"warning: step {step}: rollout log-probs differ from the training forward pass by up to "
                f"{gap_max:.3g} (mean {gap_mean:.3g}); generation and training precision or weights disagree"
            )

    def _interrupted(self, exc: BackendError) -> RunError:
        """A backend failed mid-step, before the update: checkpoint the state so far, explain how to go on."""
        latest = self.run.latest_checkpoint()
        if self.state.step > 0 and (latest is None or latest[0] < self.state.step):
            self.save()
        return RunError(
            f"step {self.state.step + 1} failed: {exc}; the run is saved: "
            f"continue with opdctl train --resume {self.run.path}"
        )

    def update(
        self, rollouts: Rollouts, query_ids: torch.Tensor, scores: TeacherScores, loss_weight: torch.Tensor
    ) -> Update:
        """``optim.updates_per_step`` optimizer updates, each over its mini-batch of the rollouts (in order).

        Later mini-batches were sampled by the weights before the earlier updates: the sampled estimator
        weighs them by importance. The returned log-probs are the training pass's for the first mini-batch
        (what the log-prob gap checks: same weights as generation) and generation's for the rest.
        """
        cfg, device = self.config, self.student.device
        exact = scores.query_exact.to(device) if scores.query_exact is not None else None
        targets = LossTargets(scores.query_logprobs.to(device), loss_weight.to(device), exact)
        behaviour = rollouts.sampled_logprobs.to(device)
        mean_advantage = self.mean_advantage(rollouts, scores)
        sampled_lp = rollouts.sampled_logprobs.clone()
        losses, norms, skipped = [], [], False
        for number, rows in enumerate(mini_batches(len(rollouts), cfg.optim.updates_per_step)):
            loss, norm, applied, training_lp = self._update_once(
                rollouts.select(rows),
                query_ids[rows],
                targets.select(rows),
                mean_advantage,
                behaviour[rows] if number else None,  # drawn by the weights before this step's first update
            )
            losses.append(loss)
            norms.append(norm)
            skipped |= not applied
            if number == 0:
                sampled_lp[rows, : training_lp.shape[1]] = training_lp
        self.student.weights_updated()
        lr = self.scheduler.get_last_lr()[0]
        return Update(sum(losses) / len(losses), sum(norms) / len(norms), lr, skipped, sampled_lp)

    def _update_once(
        self,
        rollouts: Rollouts,
        query_ids: torch.Tensor,
        targets: LossTargets,
        mean_advantage: float,
        behaviour: torch.Tensor | None,
    ) -> tuple[float, float, bool, torch.Tensor]:
        """Forward/backward over micro-batches of similar length, then one clipped optimizer step (skipped if
        non-finite): the loss, the gradient norm, whether the step was taken and the sampled tokens' log-probs
        of the training pass.

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
            with self.student.gradient_sync(number == len(groups) - 1):
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
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.model.parameters(), cfg.optim.grad_clip or math.inf)
        finite = math.isfinite(total_loss) and bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.scheduler.step()
            self.state.nonfinite_streak = 0
        else:
            self.state.nonfinite_streak += 1
            reporter().message(f"warning: step {self.state.step + 1}: non-finite loss or gradient, update skipped")
            if self.state.nonfinite_streak >= cfg.optim.max_nonfinite_steps:
                raise RunError(
                    f"{self.state.nonfinite_streak} updates in a row had a non-finite loss or gradient: lower "
                    f"optim.lr, check the teacher, or resume from the last checkpoint with --resume {self.run.path}"
                )
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, float(grad_norm), finite, sampled_lp

    def mean_advantage(self, rollouts: Rollouts, scores: TeacherScores) -> float:
        """The sampled estimator's baseline (loss.baseline=mean): the mean k1 advantage over the whole step (all
        processes), from the log-probs the rollouts were sampled with, so every micro-batch uses the same."""
        if self.config.loss.estimator != "sampled" or self.config.loss.baseline == "none":
            return 0.0
        teacher = QueryLayout.sampled(scores.query_logprobs)
        total, count = advantage_sum(rollouts.sampled_logprobs, teacher, rollouts.mask)
        return self.world.sum(total) / max(1, self.world.sum(count))

    def _traced(self, step: int) -> bool:
        every = self.config.output.trace_every
        return bool(every) and (step % every == 0 or step == 1)

    # evaluation and summary ----------------------------------------------------

    def evaluate(self, when: str) -> None:
        """Process 0 scores the student (and once, if asked, the teacher); the others wait.

        A sharded student is gathered whole in every process first, so process 0 generates alone.
        """
        if not self.benchmarks:
            return
        with self.student.unsharded():
            if self.world.main:
                evaluate_in_training(
                    self.config, self.run, self.student, self.teacher, self.benchmarks, self.state.step, when
                )
        self.world.barrier()

    def summarize(self) -> dict[str, Any]:
        """The run's totals and evaluations (damaged metrics lines skipped, with a warning): written to
        summary.json and returned."""
        scan = self.run.scan_metrics()
        note = scan.note(self.run.metrics_path)
        if note:
            reporter().message(note)
        summary = summarize_run(scan.records, str(self.run.path), self.state.step, self.state.elapsed)
        self.run.write_summary(summary)
        return summary


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919) % (2**63 - 1)


def _progress_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "kl": f"{record['reverse_kl']:.2f}",
        "overlap": f"{record['overlap']:.2f}",
        "w": f"{record['weight']:.2f}",
        "len": record["next_max_len"],
    }
