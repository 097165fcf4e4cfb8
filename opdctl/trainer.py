"""The drift-aware OPD training loop (Prune-OPD; plain OPD with ``prune.enable=false budget.enable=false``).

One step, in order::

    prompts -> student.generate (under the response budget) -> rollouts
    rollouts -> teacher.score -> teacher top-k, log-probs of the student's top-k and sampled ids
    drift signal -> bad events -> monotone weights w_t, m_t, effective lengths
    student log-probs (with gradient) -> reverse-KL loss weighted by m_t -> optimizer step
    effective lengths -> budget for the next step
    metrics.jsonl, traces, checkpoints
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import get_scheduler

from opdctl import drift, losses
from opdctl.backends import Rollouts, Sampling, Student, Teacher, TeacherScores, backend_class
from opdctl.budget import BudgetLimits, BudgetState, update_budget
from opdctl.config import BackendConfig, Config, resolve_run_dir, validate
from opdctl.data import PromptSampler, PromptSet, load_prompts
from opdctl.distributed import World, device_for, setup_world
from opdctl.errors import BackendError, ConfigError, OpdctlError, RunError
from opdctl.evaluation.benchmarks import Benchmark, load_benchmarks
from opdctl.evaluation.grading import Grader
from opdctl.evaluation.runner import Settings, evaluate
from opdctl.monitor import DriftMonitor
from opdctl.outcome import StepOutcome
from opdctl.progress import reporter
from opdctl.resume import finished_note, resume_checkpoint, unloadable
from opdctl.rundir import RunDir, write_failure
from opdctl.stopping import Stopped, StopRequest, stop_on_signals
from opdctl.traces import trace_tables
from opdctl.trackers import Trackers, require_trackers

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


@dataclass
class StepDrift:
    """What the drift monitor concluded about one batch."""

    overlap: torch.Tensor  # o_t, the paper's overlap ratio (logged whatever the metric)
    signal: torch.Tensor  # the configured metric's value
    bad: torch.Tensor
    weights: drift.Weights


def measure_drift(config: Config, rollouts: Rollouts, scores: TeacherScores) -> StepDrift:
    """Overlap, bad events and weights of a scored batch (plain OPD keeps every weight at 1)."""
    k, mask = config.prune_k, rollouts.mask
    student_topk, teacher_topk = rollouts.topk_ids[..., :k], scores.topk_ids[..., :k]
    signal = drift.drift_signal(
        config.prune.metric,
        student_topk=student_topk,
        student_topk_logprobs=rollouts.topk_logprobs[..., :k],
        teacher_topk=teacher_topk,
        teacher_topk_logprobs=scores.topk_logprobs[..., :k],
        sampled=rollouts.response_ids,
        threshold=config.prune.threshold,
    )
    bad = drift.bad_events(signal, mask, config.prune.metric, config.prune.threshold)
    if config.prune.enable:
        weights = drift.reliability_weights(bad, mask, config.prune.w_drop, config.prune.w_base)
    else:
        weights = drift.uniform_weights(mask)
    return StepDrift(drift.overlap_ratio(student_topk, teacher_topk) * mask, signal * mask, bad, weights)


def opd_loss(
    config: Config,
    student_lp: torch.Tensor,
    teacher_lp: torch.Tensor,
    loss_weight: torch.Tensor,
    num_tokens: int,
    teacher_exact: torch.Tensor | None = None,
    baseline: float = 0.0,
) -> torch.Tensor:
    """The configured estimator on ``[B, T, k+1]`` log-probs (the student's top-k, then the sampled id);
    ``baseline`` is the sampled estimator's (see :meth:`Trainer.baseline`)."""
    k = config.loss.k
    if config.loss.estimator == "sampled":
        return losses.sampled_reverse_kl(student_lp[..., k], teacher_lp[..., k], loss_weight, num_tokens, baseline)
    candidates = None
    if teacher_exact is not None and config.loss.absent_candidates == "drop":
        candidates = teacher_exact[..., :k]
    return losses.topk_reverse_kl(
        student_lp[..., :k], teacher_lp[..., :k], loss_weight, num_tokens, config.loss.weighting, candidates
    )


def load_backends(
    config: Config, student_model: str | None = None, world: World | None = None
) -> tuple[Student, Teacher]:
    """Instantiate the configured backends (the student from ``student_model`` when resuming).

    With several processes on GPUs, each loads its models onto its own GPU.
    """
    world = world or World()
    student_config, teacher_config = _on_own_device(config.student, world), _on_own_device(config.teacher, world)
    if student_model is not None:
        student_config = student_config.model_copy(update={"model": student_model})
    student = backend_class("student", config.student.backend)(student_config)
    teacher = backend_class("teacher", config.teacher.backend)(teacher_config)
    teacher.check(student.tokenizer, config.prune_k, config.loss.k)
    return student, teacher


def _on_own_device(section: BackendConfig, world: World) -> BackendConfig:
    if "device" not in type(section).model_fields:
        return section
    return section.model_copy(update={"device": device_for(world, section.device)})


def check_teacher(config: Config) -> dict[str, str]:
    """Probe the teacher with the student's tokenizer only (no student weights are loaded)."""
    tokenizer = backend_class("student", config.student.backend).load_tokenizer(config.student)
    teacher = backend_class("teacher", config.teacher.backend)(config.teacher)
    try:
        return teacher.check(tokenizer, config.prune_k, config.loss.k)
    finally:
        teacher.close()


@dataclass
class Generation:
    """One step's rollouts, their teacher scores, when generation ended, and what it cost."""

    rollouts: Rollouts
    scores: TeacherScores
    generated_at: float
    generated: torch.Tensor  # [B] tokens generated (and scored) per rollout, cut tails included
    monitor_seconds: float = 0.0  # the drift monitor's own time during generation


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
        self.world.share(config.optim.prompts_per_step * config.rollout.n)  # refuse an uneven split early
        student.distribute(self.world)
        self.sampler = PromptSampler(len(prompts), config.seed)
        params = [p for p in student.model.parameters() if p.requires_grad]
        o = config.optim
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        schedule = "constant_with_warmup" if o.lr_schedule == "constant" else o.lr_schedule
        self.scheduler = get_scheduler(schedule, self.optimizer, o.warmup_steps, num_training_steps=o.steps)
        self.budget = BudgetState(current_len=config.budget.init_len)
        self.limits = BudgetLimits(
            min_len=config.budget.min_len,
            max_len=config.budget.max_len or config.rollout.max_new_tokens,
            step=config.budget.step,
            hit_ratio=config.budget.hit_ratio,
            margin=config.budget.margin,
            shrink_patience=config.budget.shrink_patience,
        )
        self.step = 0
        self.nonfinite_streak = 0
        self.elapsed = 0.0
        self.trackers = Trackers(run, {}, {})  # process 0's experiment trackers, once start_run opens them

    # setup -----------------------------------------------------------------

    def restore(self, checkpoint: Path) -> None:
        """Continue from a checkpoint written by :meth:`save` (model weights were loaded by the backend)."""
        state = json.loads((checkpoint / STATE_FILE).read_text())
        optimizer = torch.load(checkpoint / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        self.student.load_optimizer_state(self.optimizer, optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.nonfinite_streak, self.elapsed = state["step"], state["nonfinite_streak"], state["elapsed"]
        self.budget = BudgetState(**state["budget"])
        random.setstate(_tuple_state(state["python_rng"]))
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))

    def save(self) -> Path | None:
        """Process 0 writes a checkpoint; every process takes part in gathering sharded weights."""
        weights, optimizer = self.student.full_state(), self.student.optimizer_state(self.optimizer)

        def write(directory: Path) -> None:
            self.student.save(str(directory), weights)
            torch.save(optimizer, directory / OPTIMIZER_FILE)
            state = {
                "step": self.step,
                "budget": self.budget.to_dict(),
                "nonfinite_streak": self.nonfinite_streak,
                "elapsed": self.elapsed,
                "scheduler": self.scheduler.state_dict(),
                "python_rng": random.getstate(),
                "torch_rng": torch.get_rng_state().tolist(),
            }
            (directory / STATE_FILE).write_text(json.dumps(state))

        path = (
            self.run.save_checkpoint(self.step, write, self.config.output.keep_checkpoints) if self.world.main else None
        )
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
        cfg = self.config
        if self.step == 0:
            self.evaluate("before")
        with reporter().task("Training", cfg.optim.steps) as advance:
            advance(self.step)
            while self.step < cfg.optim.steps:
                if self._stop_requested(stop):
                    raise self._stop(stop)
                started = time.perf_counter()
                try:
                    record = self.train_step()
                except BackendError as exc:
                    raise self._interrupted(exc) from exc
                self.elapsed += time.perf_counter() - started
                if record is not None:
                    record["elapsed_seconds"] = round(self.elapsed, 3)
                    self.run.append_metrics(record)
                    advance(**_progress_fields(record))
                if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.optim.steps:
                    self.evaluate("during")
                if self._save_due():
                    self.save()
        self.evaluate("after")
        return self.summarize() if self.world.main else {}

    def _save_due(self) -> bool:
        return self.step % self.config.output.save_every == 0 or self.step == self.config.optim.steps

    def _stop_requested(self, stop: StopRequest) -> bool:
        """Whether any process was asked to stop (all processes stop after the same step)."""
        if not self.world.distributed:
            return stop.requested
        asked = [signum for signum in self.world.gather(stop.signum) if signum is not None]
        if asked and stop.signum is None:
            stop.signum = asked[0]
        return bool(asked)

    def _stop(self, stop: StopRequest) -> Stopped:
        """Checkpoint the steps done (unless just saved) and say how to continue."""
        import signal

        name = signal.Signals(stop.signum).name
        if self.step == 0:
            where = "before the first step"
        else:
            if not self._save_due():
                self.save()
            where = f"after step {self.step}, checkpoint saved"
        return Stopped(f"stopped on {name} {where}; continue with: opdctl train --resume {self.run.path}", stop.signum)

    def _stopped_at_once(self) -> Stopped:
        import signal

        latest = self.run.latest_checkpoint()
        since = f"its checkpoint at step {latest[0]}" if latest else "step 0"
        return Stopped(
            f"stopped at once during step {self.step + 1}; continue from {since} with: "
            f"opdctl train --resume {self.run.path}",
            signal.SIGINT,
        )

    def train_step(self) -> dict[str, Any] | None:
        """One Prune-OPD step over this process's share of the batch; process 0 returns the step's record."""
        cfg, step, world = self.config, self.step, self.world
        indices = self.sampler.indices(step, cfg.optim.prompts_per_step)
        prompts = [self.prompts.ids[i] for i in indices for _ in range(cfg.rollout.n)]
        start, end = world.share(len(prompts))
        max_len = self.budget.current_len if cfg.budget.enable else cfg.rollout.max_new_tokens
        sampling = Sampling(
            max_len,
            cfg.rollout.temperature,
            record_topk=cfg.loss.k,
            seed=_step_seed(cfg.seed, step),
            batch_rows=len(prompts),
            row_offset=start,
        )

        t0 = _now(self.student.device)
        gen = self.generate_and_score(prompts[start:end], sampling)
        rollouts, scores, t1 = gen.rollouts, gen.scores, gen.generated_at
        t2 = _now(self.student.device)
        measured = measure_drift(cfg, rollouts, scores)
        drift_seconds = time.perf_counter() - t2 + gen.monitor_seconds
        update = self.update(rollouts, _query_ids(rollouts), scores, measured.weights.loss_weight)
        t3 = _now(self.student.device)

        local = StepOutcome.of(rollouts, scores, measured, update.pop("student_lp"), gen.generated)
        seconds = {"generate": t1 - t0, "score": t2 - t1, "update": t3 - t2, "drift": drift_seconds}
        gathered = world.gather((local, seconds))
        outcome = StepOutcome.join([o for o, _ in gathered])
        slowest = {key: max(t[key] for _, t in gathered) for key in seconds}
        budget = (
            update_budget(self.budget, outcome.effective_length.tolist(), self.limits) if cfg.budget.enable else None
        )
        if budget:
            self.budget = budget.state
        self.step += 1
        if not world.main:
            return None
        record = {
            "step": step + 1,
            **update,
            **outcome.metrics(max_len),
            "max_len": max_len,
            "next_max_len": self.budget.current_len if budget else max_len,
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
        if self.step > 0 and (latest is None or latest[0] < self.step):
            self.save()
        return RunError(
            f"step {self.step + 1} failed: {exc}; the run is saved: continue with opdctl train --resume {self.run.path}"
        )

    def generate_and_score(self, prompts: list[list[int]], sampling: Sampling) -> Generation:
        """Rollouts and their teacher scores.

        With ``rollout.truncate_on_drift`` the teacher scores chunks while they are
        generated and drifted rollouts stop early. Otherwise a teacher whose
        ``overlaps_generation`` is set gets each rollout as soon as it finishes; no
        partial batch is ever used.
        """
        cfg, k = self.config, self.config.prune_k
        if cfg.rollout.truncate_on_drift:
            monitor = DriftMonitor(
                cfg, self.teacher.stream(prompts), len(prompts), sampling.max_new_tokens, cfg.loss.k + 1
            )
            try:
                rollouts = self.student.generate(prompts, sampling, monitor=monitor)
            finally:
                monitor.close()
            width = rollouts.response_ids.shape[1]
            scores = monitor.scores(width)
            return Generation(rollouts, scores, _now(self.student.device), monitor.scored, monitor.seconds)
        if not getattr(self.teacher, "overlaps_generation", False):
            rollouts = self.student.generate(prompts, sampling)
            generated = _now(self.student.device)
            return Generation(
                rollouts, self.teacher.score(rollouts, _query_ids(rollouts), k), generated, rollouts.lengths
            )
        pending = []

        def submit(rows: list[int], part: Rollouts) -> None:
            pending.append((rows, self.teacher.submit(part, _query_ids(part), k)))

        rollouts = self.student.generate(prompts, sampling, on_finished=submit)
        generated = _now(self.student.device)
        parts = [(rows, scores.result()) for rows, scores in pending]
        scores = TeacherScores.gather(parts, len(rollouts), rollouts.response_ids.shape[1])
        return Generation(rollouts, scores, generated, rollouts.lengths)

    def update(
        self, rollouts: Rollouts, query_ids: torch.Tensor, scores: TeacherScores, loss_weight: torch.Tensor
    ) -> dict[str, Any]:
        """Forward/backward over micro-batches of similar length, then one clipped optimizer step (skipped if
        non-finite).

        The loss is a token mean over the whole step (all processes); DistributedDataParallel
        averages gradients over processes, so each process scales its part by their number.
        """
        cfg, device, world = self.config, self.student.device, self.world
        num_tokens = max(1, int(world.sum(int(rollouts.mask.sum()))))
        teacher_lp = scores.query_logprobs.to(device)
        exact = scores.query_exact.to(device) if scores.query_exact is not None else None
        loss_weight = loss_weight.to(device)
        total_loss, sampled_lp = 0.0, torch.zeros_like(rollouts.sampled_logprobs)
        baseline = self.baseline(rollouts, scores)
        groups = length_groups(rollouts.lengths, cfg.optim.grad_accum)
        for number, rows in enumerate(groups):
            part = rollouts.select(rows)
            width = part.response_ids.shape[1]
            with self.student.gradient_sync(number == len(groups) - 1):
                student_lp = self.student.logprobs(part, query_ids[rows, :width])
                loss = opd_loss(
                    cfg,
                    student_lp,
                    teacher_lp[rows, :width],
                    loss_weight[rows, :width],
                    num_tokens,
                    exact[rows, :width] if exact is not None else None,
                    baseline,
                )
                (loss * world.size).backward()
            total_loss += loss.item()
            sampled_lp[rows, :width] = student_lp[..., -1].detach().float().cpu()
        total_loss = world.sum(total_loss)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.model.parameters(), cfg.optim.grad_clip or math.inf)
        finite = math.isfinite(total_loss) and bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.scheduler.step()
            self.nonfinite_streak = 0
        else:
            self.nonfinite_streak += 1
            reporter().message(f"warning: step {self.step + 1}: non-finite loss or gradient, update skipped")
            if self.nonfinite_streak >= cfg.optim.max_nonfinite_steps:
                raise RunError(
                    f"{self.nonfinite_streak} steps in a row had a non-finite loss or gradient: lower optim.lr, "
                    f"check the teacher, or resume from the last checkpoint with --resume {self.run.path}"
                )
        self.optimizer.zero_grad(set_to_none=True)
        self.student.weights_updated()
        return {
            "loss": total_loss,
            "grad_norm": float(grad_norm),
            "lr": self.scheduler.get_last_lr()[0],
            "skipped": not finite,
            "student_lp": sampled_lp,
        }

    def baseline(self, rollouts: Rollouts, scores: TeacherScores) -> float:
        """The sampled estimator's baseline: the mean k1 advantage over the whole step (all processes), from
        the log-probs the rollouts were sampled with, so every micro-batch uses the same."""
        if self.config.loss.estimator != "sampled" or self.config.loss.baseline == "none":
            return 0.0
        total, count = losses.advantage_sum(rollouts.sampled_logprobs, scores.query_logprobs[..., -1], rollouts.mask)
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
        with self.student.gathered():
            if self.world.main:
                self._evaluate(when)
        self.world.barrier()

    def _evaluate(self, when: str) -> None:
        """Score the student (and once, if asked, the teacher) on ``eval.bench``; log to metrics.jsonl."""
        cfg = self.config.eval
        models: list[tuple[str, Any]] = [(when, self.student)]
        if cfg.teacher and when == "before" and hasattr(self.teacher, "generate"):
            models.append(("teacher", self.teacher))
        limit = cfg.max_new_tokens or self.config.rollout.max_new_tokens
        settings = Settings(cfg.n, cfg.temperature, cfg.top_p, limit, self.config.seed, self.config.data.chat_template)
        done = {(r["eval"], r["when"]) for r in self.run.read_metrics() if "eval" in r and r.get("step") == self.step}
        with Grader(workers=min(4, os.cpu_count() or 1)) as grader:
            for benchmark in self.benchmarks:
                for label, model in models:
                    if (benchmark.name, label) in done:  # a resumed run has it already
                        continue
                    score = evaluate(
                        model, self.student.tokenizer, benchmark, settings, grader, batch_size=256, pass_k=cfg.pass_k
                    )
                    record = {"step": self.step, "eval": benchmark.name, "when": label, **score.to_dict()}
                    self.run.append_metrics(record)
                    who = "teacher" if label == "teacher" else f"student ({label})"
                    reporter().message(f"{benchmark.name}: {who} accuracy {score.accuracy:.1%} at step {self.step}")

    def summarize(self) -> dict[str, Any]:
        scan = self.run.scan_metrics()
        note = scan.note(self.run.metrics_path)
        if note:
            reporter().message(note)
        records = scan.records
        steps = [r for r in records if "eval" not in r]
        evals = [r for r in records if "eval" in r]
        summary = {
            "run_dir": str(self.run.path),
            "steps": self.step,
            "seconds": round(self.elapsed, 1),
            "tokens_generated": sum(r["tokens_generated"] for r in steps),
            "mean_effective_length": _mean([r["effective_length"] for r in steps]),
            "mean_response_length": _mean([r["response_length"] for r in steps]),
            "final_max_len": steps[-1]["next_max_len"] if steps else None,
            "skipped_steps": sum(bool(r["skipped"]) for r in steps),
            "rollouts_stopped_on_drift": sum(r.get("finish_drift", 0) for r in steps),
            "rollouts": sum(r["finish_eos"] + r["finish_length"] + r.get("finish_drift", 0) for r in steps),
            "tokens_not_generated": sum(r.get("tokens_not_generated", 0) for r in steps),
            "tokens_discarded": sum(r.get("tokens_discarded", 0) for r in steps),
            "eval": {
                e["eval"]: {when: _latest(evals, e["eval"], when) for when in ("before", "after", "teacher")}
                for e in evals
            },
        }
        self.run.write_summary(summary)
        return summary


def check_lengths(config: Config, student: Student, prompts: PromptSet) -> None:
    """Refuse settings the student cannot run: k beyond its vocabulary, prompts plus responses beyond its context."""
    vocab = student.model.get_output_embeddings().weight.shape[0]
    if config.loss.k > vocab:
        raise ConfigError(f"loss.k={config.loss.k} is larger than the student's vocabulary ({vocab} tokens): lower it")
    context = getattr(student.model.config, "max_position_embeddings", None)
    longest = max(map(len, prompts.ids))
    if context and longest + config.rollout.max_new_tokens > context:
        raise ConfigError(
            f"the longest prompt ({longest} tokens) plus rollout.max_new_tokens={config.rollout.max_new_tokens} "
            f"exceeds the student's context of {context} tokens: lower rollout.max_new_tokens or data.max_prompt_tokens"
        )


def start_run(config: Config, resume: Path | None = None) -> Trainer:
    """Build a trainer for a new run, or for ``resume``'s run from its newest complete checkpoint.

    Process 0 owns the run directory (its lock) from the start. A new run's directory is
    removed again if the run cannot start; a resume writes nothing until the checkpoint
    has loaded, so a failed resume leaves the run as it was.
    """
    world = setup_world()
    require_trackers(config.output.report_to)
    run = _claim_run_dir(config, resume, world)
    try:
        return _build_trainer(config, run, resume is not None, world)
    except BaseException:
        if world.main:
            run.abandon()
        raise


def _claim_run_dir(config: Config, resume: Path | None, world: World) -> RunDir:
    """Process 0 locks the run directory (creating a new run's); every process learns where it is."""

    def claim() -> RunDir:
        if resume is not None:
            run = RunDir.open(resume)
            run.lock.acquire()
            return run
        template = config.output.dir
        return RunDir.claim(resolve_run_dir(template), unique="{timestamp}" in template)

    run = _on_main(world, claim)
    return run if isinstance(run, RunDir) else RunDir(run)


def _on_main(world: World, action: Callable[[], Any]) -> Any:
    """``action()`` on process 0, its result (a RunDir as its path) or its error on every process."""
    if not world.distributed:
        return action()
    result, error = None, None
    if world.main:
        try:
            result = action()
        except OpdctlError as exc:
            error = str(exc)
    shared = result.path if isinstance(result, RunDir) else result
    error, shared = world.broadcast((error, shared))
    if error:
        raise RunError(error)
    return result if world.main else shared


def _build_trainer(config: Config, run: RunDir, resuming: bool, world: World) -> Trainer:
    latest = _on_main(world, lambda: resume_checkpoint(run, config.optim.steps)) if resuming else None
    student_model = str(latest[1]) if latest else None
    try:
        student, teacher = load_backends(config, student_model=student_model, world=world)
    except BackendError as exc:
        if latest and student_model in str(exc):
            raise unloadable(latest[1], exc) from exc
        raise
    prompts = load_prompts(config.data, student.tokenizer, config.seed)
    check_lengths(config, student, prompts)
    benchmarks = load_benchmarks(config.eval.bench, limit=config.eval.max_problems) if config.eval.bench else []
    config.output.dir = str(run.path)
    trainer = Trainer(config, run, student, teacher, prompts, world, benchmarks)
    if latest is not None:
        try:
            trainer.restore(latest[1])
        except Exception as exc:
            raise unloadable(latest[1], exc) from exc
    if world.main:
        sent = run.read_metrics()  # what the run's trackers were sent before a crash
        run.write_config(config.to_yaml())
        for note in run.rewind(trainer.step) if resuming else []:
            reporter().message(f"warning: {note}")
        if latest is not None:
            reporter().message(f"Resuming {run.path} from step {trainer.step}")
        done = finished_note(run, trainer.step, config.optim.steps)
        if resuming and done:
            reporter().message(done)
        cfg = config.output
        trainer.trackers = Trackers.open(cfg.report_to, run, cfg.project, config.model_dump(mode="json"), sent)
    world.barrier()
    return trainer


def resumed_config(run_dir: Path, overrides: list[str]) -> Config:
    """The config a run was started with, plus command-line overrides."""
    from opdctl.config import apply_override, read_yaml

    run = RunDir.open(run_dir)
    raw = read_yaml(run.config_path)
    if not raw:
        raise RunError(f"{run_dir}/config.yaml is empty: the run never started; start a new run instead")
    for override in overrides:
        apply_override(raw, override)
    return validate(raw)


def length_groups(lengths: torch.Tensor, count: int) -> list[list[int]]:
    """Row indices in ``count`` micro-batches of similar length (shortest first), so each pads only to its own
    longest row; the loss is a token sum over the step, so the gradient is the same as one batch's."""
    order = sorted(range(len(lengths)), key=lambda row: (int(lengths[row]), row))
    size = math.ceil(len(order) / count)
    return [order[start : start + size] for start in range(0, len(order), size)]


def _query_ids(rollouts: Rollouts) -> torch.Tensor:
    """What the teacher is asked about at each position: the student's top-k, then the sampled id."""
    return torch.cat([rollouts.topk_ids, rollouts.response_ids.unsqueeze(-1)], dim=-1)


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919) % (2**63 - 1)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _latest(records: list[dict[str, Any]], name: str, when: str) -> float | None:
    found = [r["accuracy"] for r in records if r["eval"] == name and r["when"] == when]
    return found[-1] if found else None


def _progress_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "kl": f"{record['reverse_kl']:.2f}",
        "overlap": f"{record['overlap']:.2f}",
        "w": f"{record['weight']:.2f}",
        "len": record["next_max_len"],
    }


def _tuple_state(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])
