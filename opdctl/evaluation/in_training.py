"""Evaluation during training (``eval.bench``): the student before, during and after, the teacher once.

Scores are appended to the run's metrics.jsonl as records with an ``eval`` key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from opdctl.backends.protocols import Generator, Student, Teacher
from opdctl.config.schema import Config
from opdctl.data.benchmarks import Benchmark
from opdctl.data.grading import Grader
from opdctl.evaluation.divergence import held_out_reverse_kl
from opdctl.evaluation.runner import Settings, evaluate
from opdctl.progress import reporter
from opdctl.runs.rundir import RunDir


def token_limit(config: Config) -> int:
    """The response limit of evaluations during training: eval.max_new_tokens, else rollout.max_new_tokens."""
    return config.eval.max_new_tokens or config.rollout.max_new_tokens


def evaluate_in_training(
    config: Config,
    run: RunDir,
    student: Student,
    teacher: Teacher,
    benchmarks: list[Benchmark],
    step: int,
    when: str,
    record: Callable[[dict[str, Any]], None],
) -> None:
    """Score the student (and once, if asked, the teacher) on ``eval.bench``, with the student's held-out
    reverse KL to the teacher if ``eval.reverse_kl``; ``record`` each score (the trainer's metrics path).

    A score already in the run's metrics for this step (a resumed run's) is not computed again."""
    cfg = config.eval
    models: list[tuple[str, Any]] = [(when, student)]
    if cfg.teacher and when == "before" and isinstance(teacher, Generator):
        models.append(("teacher", teacher))
    limit = token_limit(config)
    settings = Settings(cfg.n, cfg.temperature, cfg.top_p, limit, config.seed, config.data.chat_template)
    done = {(r["eval"], r["when"]) for r in run.read_metrics() if "eval" in r and r.get("step") == step}
    with Grader(workers=min(4, os.cpu_count() or 1)) as grader:
        for benchmark in benchmarks:
            for label, model in models:
                if (benchmark.name, label) in done:  # a resumed run has it already
                    continue
                score = evaluate(
                    model, student.tokenizer, benchmark, settings, grader, batch_size=256, pass_k=cfg.pass_k
                )
                values = {"step": step, "eval": benchmark.name, "when": label, **score.to_dict()}
                who = "teacher" if label == "teacher" else f"student ({label})"
                message = f"{benchmark.name}: {who} accuracy {score.accuracy:.1%}"
                if cfg.reverse_kl and model is student:
                    kl, tokens = held_out_reverse_kl(
                        student, teacher, student.tokenizer, benchmark, limit, config.seed, config.data.chat_template
                    )
                    values.update(reverse_kl=kl, reverse_kl_tokens=tokens)
                    message += f", reverse KL to the teacher {kl:.3f}"
                record(values)
                reporter().message(f"{message} at step {step}")
