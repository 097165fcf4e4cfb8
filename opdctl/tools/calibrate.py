"""A drift threshold that means something: measured on text the teacher writes itself.

On the teacher's own samples nothing has drifted, so every bad event there is a false
alarm. ``calibrate`` has the teacher answer prompts and the student answer the same
prompts, scores both texts with both models, and measures each drift signal's values on
each text. For the configured metric it picks the threshold whose bad-event rate on the
teacher's text is closest to a target from below (e.g. 3%), and shows how often the same
threshold fires on the student's rollouts: a signal worth using fires far more there.
When the prompts come with worked solutions (the built-in word problems), each student
rollout's first wrong number is known too, and every signal is judged as a detector of it
(:mod:`opdctl.data.groundtruth`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opdctl.algorithm import drift
from opdctl.backends.protocols import Generator, Teacher
from opdctl.backends.types import QueryLayout, Rollouts, Sampling, TeacherScores
from opdctl.config.schema import Config
from opdctl.data.groundtruth import Detection, first_error_tokens, judge
from opdctl.data.prompts import load_prompts
from opdctl.errors import ConfigError
from opdctl.plugins import DRIFT_METRICS, TEACHERS
from opdctl.progress import reporter
from opdctl.training.start import section_teacher

# the paper's thresholds; teacher_prob's is opdctl's own (docs/real-models.md)
DEFAULT_THRESHOLDS = {"overlap_ratio": 0.7, "weighted_overlap": 0.7, "teacher_top_p": 0.9, "teacher_prob": 0.1}
KS = (1, 4, 8, 16)


@dataclass(frozen=True)
class Signal:
    """A drift metric at one top-k size."""

    metric: str
    k: int

    @property
    def name(self) -> str:
        return f"{self.metric}@{self.k}"

    @property
    def bad_below(self) -> bool:
        """Overlaps are bad below the threshold; the teacher's nucleus mass before the token is bad at or above p."""
        return self.metric != "teacher_top_p"

    def bad(self, values: torch.Tensor, threshold: float) -> torch.Tensor:
        """Where ``values`` are bad events at ``threshold``."""
        return values < threshold if self.bad_below else values >= threshold

    def bad_rate(self, values: torch.Tensor, threshold: float) -> float:
        return int(self.bad(values, threshold).sum()) / values.numel() if values.numel() else 0.0


@dataclass
class Texts:
    """One kind of text (the teacher's or the student's) as both models see it."""

    rollouts: Rollouts
    student: TeacherScores  # the student's top-K at each position
    teacher: TeacherScores  # the teacher's top-K, and its log-probs of the student's top-K and the sampled id

    def values(self, signal: Signal) -> torch.Tensor:
        """The signal's value at every valid position, flattened."""
        return self.grid(signal)[self.rollouts.mask]

    def grid(self, signal: Signal) -> torch.Tensor:
        """The signal's value at every position, ``[B, T]`` (for teacher_top_p: the nucleus mass before the sampled
        token, whose threshold is p, rather than the acceptance at one p)."""
        if signal.metric not in DEFAULT_THRESHOLDS:
            raise ConfigError(
                f"opdctl calibrate does not know prune.metric={signal.metric!r}: it calibrates "
                f"{', '.join(DEFAULT_THRESHOLDS)}"
            )
        k, sampled = signal.k, self.rollouts.response_ids
        view = drift.DriftView.of(self.student.topk_ids, self.student.topk_logprobs, sampled, self.teacher, k)
        if signal.bad_below:
            values = DRIFT_METRICS.get(signal.metric)(view, 1.0)
        else:
            values = drift.sampled_nucleus_mass(view.sampled, view.teacher_topk, view.teacher_topk_logprobs)
        return values


@dataclass
class Calibration:
    signal: Signal
    target: float
    threshold: float
    teacher_rate: float  # bad-event rate on the teacher's own text at the threshold
    student_rate: float  # the same on the student's rollouts
    teacher_text: Texts
    student_text: Texts
    first_errors: list[int | None] | None = None  # the token of each student rollout's first wrong number

    def detection(self, signal: Signal, threshold: float) -> Detection | None:
        """How ``signal``'s bad events at ``threshold`` fall around the student's first errors (None: unknown)."""
        if self.first_errors is None:
            return None
        text = self.student_text
        return judge(signal.bad(text.grid(signal), threshold), text.rollouts.mask, self.first_errors)

    def signals(self) -> list[Signal]:
        """Every signal measured: each metric at each k the run's scores hold."""
        width = self.teacher_text.student.topk_ids.shape[-1]
        return [Signal(m, k) for m in DEFAULT_THRESHOLDS for k in KS if k <= width]


def choose_threshold(signal: Signal, values: torch.Tensor, target: float) -> float:
    """The threshold whose bad-event rate on ``values`` is the largest that does not exceed ``target``."""
    unique = torch.unique(values[torch.isfinite(values)]).tolist()
    if signal.bad_below:
        candidates = sorted({v for v in unique if 0 < v <= 1} | {1.0}, reverse=True)
    else:
        candidates = sorted({min(1.0, v + 1e-6) for v in unique if v >= 0} | {1.0})
    for threshold in candidates:
        if signal.bad_rate(values, threshold) <= target:
            return threshold
    raise ConfigError(
        f"{signal.name} cannot get its bad-event rate on the teacher's text down to {target:.1%} (at best "
        f"{signal.bad_rate(values, candidates[-1]):.1%}): use a larger prune.k or another prune.metric"
    )


def calibrate(config: Config, target: float, samples: int, max_new_tokens: int) -> Calibration:
    """Pick ``prune.threshold`` for ``config``'s metric and k so that the teacher's text has ``target`` bad events."""
    width = max(KS[-1], config.prune_k)
    teacher = section_teacher(config, config.teacher)
    student = _student_scorer(config)
    try:
        prompts = load_prompts(config.data.model_copy(update={"limit": samples}), student.tokenizer, config.seed)
        teacher.check(student.tokenizer, width, width)
        if not isinstance(teacher, Generator):
            raise ConfigError(
                f"teacher.backend={config.teacher.backend!r} cannot generate its own text to calibrate on"
            )
        with reporter().task("Calibrating", 4) as advance:
            by_teacher = teacher.generate(prompts.ids, Sampling(max_new_tokens, 1.0, seed=config.seed))
            advance()
            teacher_text = both_views(by_teacher, student, teacher, width)
            advance()
            by_student = student.generate(
                prompts.ids, Sampling(max_new_tokens, config.rollout.temperature, seed=config.seed + 1)
            )
            advance()
            student_text = both_views(by_student, student, teacher, width)
            advance()
    finally:
        teacher.close()
        student.close()
    signal = Signal(config.prune.metric, config.prune_k)
    threshold = choose_threshold(signal, teacher_text.values(signal), target)
    first_errors = None
    if prompts.solutions is not None:
        rollouts = student_text.rollouts
        first_errors = first_error_tokens(student.tokenizer, rollouts.response_ids, rollouts.lengths, prompts.solutions)
    return Calibration(
        signal=signal,
        target=target,
        threshold=threshold,
        teacher_rate=signal.bad_rate(teacher_text.values(signal), threshold),
        student_rate=signal.bad_rate(student_text.values(signal), threshold),
        teacher_text=teacher_text,
        student_text=student_text,
        first_errors=first_errors,
    )


def _student_scorer(config: Config) -> Teacher:
    """The student model behind a scoring backend: its top-k on any text, and text it samples."""
    if config.student.backend != "hf":
        raise ConfigError("opdctl calibrate scores with a local student: set student.backend=hf")
    hf = TEACHERS.get("hf")
    options = {key: getattr(config.student, key) for key in ("model", "dtype", "device", "revision")}
    return hf(hf.Config(**options, trust_remote_code=config.student.trust_remote_code))


def both_views(rollouts: Rollouts, student: Teacher, teacher: Teacher, width: int) -> Texts:
    """Both models' top-``width`` at every position of ``rollouts``; the teacher is also asked about the
    student's top-``width`` and the sampled id (the query layout)."""
    student_view = student.score(rollouts, rollouts.response_ids.unsqueeze(-1), width)
    query = QueryLayout.ids(student_view.topk_ids, rollouts.response_ids)
    return Texts(rollouts, student_view, teacher.score(rollouts, query, width))
