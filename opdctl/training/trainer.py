"""The drift-aware OPD training loop (Prune-OPD; plain OPD with ``prune.enable=false budget.enable=false``).

One step, in order::

    prompts -> student.generate (under the response budget) -> rollouts            (training.generation)
    rollouts -> teacher.score -> teacher top-k, log-probs of the query ids           (training.generation)
    drift signal -> bad events -> monotone weights w_t, m_t, effective lengths       (algorithm.drift)
    student log-probs (with gradient) -> loss weighted by m_t -> optimizer step      (training.update)
    effective lengths -> budget for the next step                                    (algorithm.budget)
    metrics.jsonl, traces, checkpoints                                               (training.outcome, runs.rundir)

Runs start in :mod:`opdctl.training.start`; the checkpointed state is :class:`opdctl.runs.checkpoint.TrainerState`;
SIGINT/SIGTERM stop a run at a checkpoint (:mod:`opdctl.training.stopping`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, TypeVar

import torch

from opdctl import threads
from opdctl.algorithm.budget import BudgetLimits, BudgetState, update_budget
from opdctl.algorithm.drift import measure_drift
from opdctl.backends.protocols import Student, Teacher
from opdctl.backends.types import Sampling
from opdctl.config.schema import Config
from opdctl.data.benchmarks import Benchmark
from opdctl.data.prompts import PromptSampler, PromptSet
from opdctl.distributed import World
from opdctl.errors import BackendError, ConfigError, RunError
from opdctl.evaluation.in_training import evaluate_in_training
from opdctl.progress import reporter
from opdctl.runs.checkpoint import CONFIG_FILE, OPTIMIZER_FILE, TrainerState
from opdctl.runs.files import write_failure
from opdctl.runs.rundir import RunDir
from opdctl.runs.trackers import Trackers
from opdctl.training.generation import generate_and_score
from opdctl.training.outcome import StepOutcome, summarize_run
from opdctl.training.parallel import data_parallel
from opdctl.training.rewards import step_rewards
from opdctl.training.stopping import Stopped, StopRequest, stop_on_signals
from opdctl.training.timing import timed
from opdctl.training.traces import trace_tables
from opdctl.training.update import Updater

T = TypeVar("T")


class Trainer:
    """Owns the backends, optimizer (:class:`opdctl.training.update.Updater`), budget and run directory of one run."""

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
        self.parallel = data_parallel(student)
        self.parallel.distribute(self.world)
        self.sampler = PromptSampler(len(prompts), config.seed)
        self.updater = Updater(config, student, self.parallel, self.world)
        self.state = TrainerState(budget=BudgetState(current_len=config.budget.init_len))
        self.limits = BudgetLimits(
            min_len=config.budget.min_len,
            max_len=config.budget.max_len or config.rollout.max_new_tokens,
            increment=config.budget.increment,
            hit_ratio=config.budget.hit_ratio,
            margin=config.budget.margin,
            patience=config.budget.patience,
        )
        self.trackers = Trackers(run, {}, {})  # process 0's experiment trackers, once start_run opens them

    # setup -----------------------------------------------------------------

    def restore(self, checkpoint: Path) -> None:
        """Continue from a checkpoint written by :meth:`save` (model weights were loaded by the backend)."""
        optimizer = torch.load(checkpoint / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        self.parallel.load_optimizer_state(self.updater.optimizer, optimizer)
        self.state = TrainerState.restore(checkpoint, self.updater.scheduler)
        self.updater.reapply_config()  # a resume may have changed optim.lr, betas or weight decay

    def save(self) -> Path | None:
        """Process 0 writes a checkpoint; every process takes part in gathering sharded weights."""
        model_state, optimizer = self.parallel.full_state(), self.parallel.optimizer_state(self.updater.optimizer)

        def write(directory: Path) -> None:
            self.student.save(str(directory), model_state)
            torch.save(optimizer, directory / OPTIMIZER_FILE)
            (directory / CONFIG_FILE).write_text(self.config.to_yaml())
            self.state.save(directory, self.updater.scheduler)

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
                started, cpu = time.perf_counter(), time.process_time()
                try:
                    done = self.train_step()
                except BackendError as exc:
                    raise self._interrupted(exc) from exc
                state.elapsed += time.perf_counter() - started
                state.cpu += time.process_time() - cpu
                if done is not None:
                    record, outcome = done
                    record["elapsed_seconds"] = round(state.elapsed, 3)
                    record["cpu_seconds"] = round(state.cpu, 3)
                    self.record(record, outcome)
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
        if self.state.step == 0:
            where = "before the first step"
        else:
            if not self._save_due():
                self.save()
            where = f"after step {self.state.step}, checkpoint saved"
        return Stopped(
            f"stopped on {stop.name} {where}; continue with: opdctl train --resume {self.run.path}", stop.signum
        )

    def _stopped_at_once(self) -> Stopped:
        latest = self.run.latest_checkpoint()
        since = f"its checkpoint at step {latest[0]}" if latest else "step 0"
        return Stopped.at_once(
            f"stopped at once during step {self.state.step + 1}; continue from {since} with: "
            f"opdctl train --resume {self.run.path}"
        )

    def record(self, record: dict[str, Any], outcome: StepOutcome | None = None) -> None:
        """Process 0's metrics path: the record to metrics.jsonl (durable first), then to the experiment trackers
        with the step's drift histograms, from ``outcome`` in memory."""
        self.run.append_metrics(record)
        self.trackers.log(record, outcome.histograms() if outcome is not None and self.trackers.histograms else None)

    def train_step(self) -> tuple[dict[str, Any], StepOutcome] | None:
        """One Prune-OPD step over this process's share of the batch; process 0 returns the step's record and
        the outcome of the whole batch."""
        cfg, step, world = self.config, self.state.step, self.world
        indices = self.sampler.indices(step, cfg.optim.prompts_per_step)
        prompts = self._per_rollout(self.prompts.ids, indices)
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

        teacher_prompts = self._per_rollout(self.prompts.teacher_ids, indices)  # a privileged context
        own = teacher_prompts[start:end] if teacher_prompts else None
        routes = self._per_rollout(self.prompts.teacher_names, indices)  # several teachers
        teacher = self.teacher.for_rows(routes[start:end]) if routes else self.teacher
        gen = generate_and_score(cfg, self.student, teacher, prompts[start:end], sampling, own)
        rollouts, scores = gen.rollouts, gen.scores
        seconds = {"generate": gen.generate_seconds, "score": gen.score_seconds, "drift": gen.monitor_seconds}
        with timed("drift", seconds, self.student.device):
            measured = measure_drift(cfg, rollouts, scores)
        rewards, advantage = None, None
        if cfg.reward.coef:
            answers = self._per_rollout(self.prompts.answers, indices)[start:end]
            with timed("reward", seconds, self.student.device):
                rewards, advantage = step_rewards(cfg, self.student.tokenizer, rollouts, answers, world)
        with timed("update", seconds, self.student.device):
            weights = measured.weights.loss_weight
            update = self.updater.step(rollouts, scores, weights, self._count_nonfinite, advantage)

        local = StepOutcome.of(
            rollouts, scores, measured, update.sampled_logprobs, gen.token_counts, rewards, routes and routes[start:end]
        )
        collected = world.collect((local, seconds, gen.drift_checks))
        outcome = StepOutcome.join([o for o, _, _ in collected])
        slowest = {key: max(t[key] for _, t, _ in collected) for key in seconds}
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
            "drift_checks": sum(checks for _, _, checks in collected),
            **({"loss_opd": update.loss_opd, "loss_reward": update.loss_reward} if cfg.reward.coef else {}),
            **{f"{key}_seconds": round(value, 5) for key, value in slowest.items()},
        }
        if self._traced(step + 1):
            tables = trace_tables(step + 1, indices, cfg, outcome, max_len, teacher_prompts)
            self.run.write_traces(step + 1, *tables)
        self._check_logprobs(step + 1, record["logprob_gap_max"], record["logprob_gap_mean"])
        return record, outcome

    def _per_rollout(self, values: list[T] | None, indices: list[int]) -> list[T] | None:
        """A per-prompt list (prompt ids, teacher prompts, teacher names, answers) for the step's rollouts:
        each of the prompts ``indices`` ``rollout.n`` times; None stays None."""
        if values is None:
            return None
        return [values[i] for i in indices for _ in range(self.config.rollout.n)]

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

    def _count_nonfinite(self, finite: bool) -> None:
        """Warn about a skipped update; stop the run after ``optim.max_nonfinite_steps`` in a row."""
        if finite:
            self.state.nonfinite_streak = 0
            return
        self.state.nonfinite_streak += 1
        reporter().message(f"warning: step {self.state.step + 1}: non-finite loss or gradient, update skipped")
        if self.state.nonfinite_streak >= self.config.optim.max_nonfinite_steps:
            raise RunError(
                f"{self.state.nonfinite_streak} updates in a row had a non-finite loss or gradient: lower "
                f"optim.lr, check the teacher, or resume from the last checkpoint with --resume {self.run.path}"
            )

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
        with self.parallel.unsharded():
            if self.world.main:
                evaluate_in_training(
                    self.config,
                    self.run,
                    self.student,
                    self.teacher,
                    self.benchmarks,
                    self.state.step,
                    when,
                    self.record,
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
        summary["cpu_seconds"] = round(self.state.cpu, 3)  # as in metrics.jsonl
        summary["cpu_threads"] = threads.setting()
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
