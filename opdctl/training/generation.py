"""How a step's rollouts are generated and scored: three strategies with one result, :class:`Generation`.

* monitored (``rollout.truncate_on_drift``, see :func:`truncates`): the teacher scores
  chunks while they are generated and drifted rollouts stop early (:mod:`opdctl.training.monitor`);
* overlapped (an :class:`~opdctl.backends.protocols.OverlappedScoring` teacher whose
  ``overlaps_generation`` is set): each rollout goes to the teacher as soon as it finishes;
* sequential: generate the whole batch, then score it.

No partial batch is ever used: every strategy returns the whole batch's scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opdctl.backends.protocols import OverlappedScoring, Student, Teacher
from opdctl.backends.types import Rollouts, Sampling, TeacherScores
from opdctl.config.schema import Config
from opdctl.training.monitor import DriftMonitor
from opdctl.training.timing import now


@dataclass
class Generation:
    """One step's rollouts, their teacher scores, and what they cost."""

    rollouts: Rollouts
    scores: TeacherScores
    generate_seconds: float  # until the last rollout was generated (scoring that overlapped it included)
    score_seconds: float  # scoring after that
    token_counts: torch.Tensor  # [B] tokens generated (and scored) per rollout, cut tails included
    monitor_seconds: float = 0.0  # the drift monitor's own time during generation
    drift_checks: int = 0  # chunks the drift monitor had the teacher score (0 without truncation)


def generate_and_score(
    config: Config,
    student: Student,
    teacher: Teacher,
    prompts: list[list[int]],
    sampling: Sampling,
    teacher_prompts: list[list[int]] | None = None,
) -> Generation:
    """Rollouts of ``prompts`` and their teacher scores, by the strategy the config and the teacher allow.

    With ``teacher_prompts`` (a privileged context, row for row) the teacher scores each response after its
    own prompt instead of the student's."""
    scored_after = teacher_prompts or prompts
    if truncates(config, teacher):
        return monitored(config, student, teacher, prompts, sampling, scored_after)
    if isinstance(teacher, OverlappedScoring) and teacher.overlaps_generation:
        return overlapped(config, student, teacher, prompts, sampling, scored_after)
    return sequential(config, student, teacher, prompts, sampling, scored_after)


def truncates(config: Config, teacher: Teacher) -> bool:
    """Whether rollouts are truncated on drift: as configured, except with ``rollout.chunking=auto`` and a teacher
    that re-scores the whole prefix at every check (vLLM), where scoring once after generation costs less
    (docs/benchmarks.md, "Does truncation pay with a served teacher?")."""
    rollout = config.rollout
    return rollout.truncate_on_drift and not (teacher.rescores_prefix and rollout.chunking == "auto")


def monitored(
    config: Config,
    student: Student,
    teacher: Teacher,
    prompts: list[list[int]],
    sampling: Sampling,
    teacher_prompts: list[list[int]],
) -> Generation:
    """Score while generating; stop rollouts whose weight can no longer matter."""
    started = now(student.device)
    stream = teacher.stream(teacher_prompts)
    monitor = DriftMonitor(config, stream, len(prompts), sampling.max_new_tokens, config.loss.k + 1)
    try:
        rollouts = student.generate(prompts, sampling, monitor=monitor)
    finally:
        monitor.close()
    generated = now(student.device)
    scores = monitor.scores(rollouts.response_ids.shape[1])
    seconds = (generated - started, now(student.device) - generated)
    return Generation(rollouts, scores, *seconds, monitor.scored, monitor.seconds, monitor.checks)


def sequential(
    config: Config,
    student: Student,
    teacher: Teacher,
    prompts: list[list[int]],
    sampling: Sampling,
    teacher_prompts: list[list[int]],
) -> Generation:
    """Generate the whole batch, then score it."""
    started = now(student.device)
    rollouts = student.generate(prompts, sampling)
    generated = now(student.device)
    scores = teacher.score(rollouts.with_prompts(teacher_prompts), rollouts.query_ids(), config.teacher_k)
    return Generation(rollouts, scores, generated - started, now(student.device) - generated, rollouts.lengths)


def overlapped(
    config: Config,
    student: Student,
    teacher: OverlappedScoring,
    prompts: list[list[int]],
    sampling: Sampling,
    teacher_prompts: list[list[int]],
) -> Generation:
    """Send rows to the teacher as they finish; wait for all their scores at the end."""
    pending = []

    def submit(rows: list[int], part: Rollouts) -> None:
        scored = part.with_prompts([teacher_prompts[row] for row in rows])
        pending.append((rows, teacher.submit(scored, part.query_ids(), config.teacher_k)))

    started = now(student.device)
    rollouts = student.generate(prompts, sampling, on_finished=submit)
    generated = now(student.device)
    parts = [(rows, scores.result()) for rows, scores in pending]
    scores = TeacherScores.assemble(parts, len(rollouts), rollouts.response_ids.shape[1])
    return Generation(rollouts, scores, generated - started, now(student.device) - generated, rollouts.lengths)
