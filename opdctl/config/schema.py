"""The run configuration's typed schema: its sections, keys, defaults and descriptions.

Schema defaults are the paper's (docs/algorithm.md); ``opdctl train`` without ``-c``
starts from the embedded demo config instead. A Config from YAML files and
command-line overrides, with one-line errors: :mod:`opdctl.config.files`.
"""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from opdctl.plugins import DRIFT_METRICS, LOSS_ESTIMATORS, REWARDS, TRACKERS, Registry

Beta = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]


class Section(BaseModel):
    """A config section: unknown keys are errors, and so is true/false for a number (pydantic reads it as 1/0)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and _numbers_only(cls.model_fields[info.field_name].annotation):
            raise PydanticCustomError("bool_for_number", "input should be a number, not true or false")
        return value


def _numbers_only(annotation: Any) -> bool:
    """Whether a field takes numbers and never a boolean (``int``, ``float | None``, ``int | Literal["all"]``)."""
    kinds = set(get_args(annotation)) if get_origin(annotation) in (Union, UnionType) else {annotation}
    return bool(kinds & {int, float}) and bool not in kinds


STUDENT_WEIGHTS = "student"  # teacher.model: the student's starting weights (self-distillation)


class BackendConfig(Section):
    """Keys every teacher/student backend has; plugins subclass this with their own."""

    backend: str = Field("hf", description="Installed backend name (see `opdctl backends`).")
    model: str = Field(
        "demo:student",
        description="Local directory, .gguf file, hub id, pkg:PACKAGE/FILE, demo:teacher / demo:student, or "
        "smollm2:teacher / smollm2:student (SmolLM2-135M taught the word problems; smollm2:teacher@0.4: its "
        "update at 40% strength; docs/real-models.md).",
    )


class DataConfig(Section):
    """Training prompts."""

    source: str = Field(
        "demo",
        description="'demo' (the built-in task), 'wordproblems' or 'wordproblems-long' (English word problems of "
        "2-3 or 5-8 operations with worked solutions, built in), a local .jsonl/.json/.parquet file, or a hub "
        "dataset id.",
    )
    name: str | None = Field(None, description="Hub dataset configuration name.")
    split: str = Field("train", description="Hub dataset split.")
    prompt_field: str = Field("prompt", description="Column with the problem text or a list of chat messages.")
    answer_field: str | None = Field(None, description="Column with the reference answer (kept for evaluation).")
    prompt_template: str = Field(
        "{prompt}", description="Format string for text prompts: {prompt} and any column name, e.g. '{problem} ...'."
    )
    teacher_field: str | None = Field(
        None, description="With teachers: the column whose value names the teacher of each row (its data source)."
    )
    teacher_prompt_template: str | None = Field(
        None,
        description="A privileged context: the teacher scores each rollout after this prompt, a format string over "
        "the row ({prompt}, {answer}, {solution} of the built-in tasks, or any column), while the student sees only "
        "its own prompt; unset, the teacher sees the student's prompt.",
    )
    chat_template: bool = Field(True, description="Wrap prompts in the tokenizer's chat template when it has one.")
    max_prompt_tokens: int = Field(
        1024, ge=1, description="Longer prompts are an error naming the row (or skipped, see skip_long_prompts)."
    )
    skip_long_prompts: bool = Field(False, description="Skip and count prompts over max_prompt_tokens.")
    skip_bad_rows: bool = Field(
        False, description="Skip (and count) rows whose prompt is missing, empty or malformed instead of stopping."
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N rows.")


class RolloutConfig(Section):
    """Student sampling."""

    n: int = Field(4, ge=1, description="Rollouts per prompt.")
    temperature: float = Field(1.0, gt=0, allow_inf_nan=False, description="Sampling temperature (the loss uses T=1).")
    max_new_tokens: int = Field(12288, ge=1, description="Hard limit on response length.")
    truncate_on_drift: bool = Field(
        False,
        description="Score while generating and stop a rollout once its weight reaches prune.stop_weight "
        "(Prune-OPD only: prune.enable=false turns it off).",
    )
    chunk_tokens: int = Field(
        64,
        ge=1,
        description="With truncate_on_drift and exact chunking: the most tokens generated between two checks "
        "(chunks shrink as a rollout nears its stop, to max_overshoot + 1 tokens); with predicted chunking: "
        "the shortest chunk while no rollout has a bad event.",
    )
    chunking: Literal["auto", "exact", "predicted"] = Field(
        "auto",
        description="With truncate_on_drift: exact (chunks shrink as rollouts near their stop: at most max_overshoot "
        "tokens generated past a stop), predicted "
        "(the next check where the first rollout is expected to stop at its bad-event rate so far: fewer checks, "
        "a few tokens discarded), auto (exact; with a teacher that re-scores the whole prefix at every check, "
        "such as vLLM, no truncation: scored once after generation, which costs less on CPU; docs/benchmarks.md).",
    )
    max_overshoot: int = Field(
        2,
        ge=0,
        description="With truncate_on_drift and exact chunking: the most tokens a rollout may generate past its drift "
        "stop (discarded), so that a rollout one bad event from its stop is checked every max_overshoot + 1 tokens "
        "rather than every token (fewer teacher calls for a few discarded tokens; docs/benchmarks.md); 0 "
        "generates none past a stop.",
    )
    logprob_tolerance: float = Field(
        0.01,
        gt=0,
        allow_inf_nan=False,
        description="Warn when the generating engine's log-probs differ from the training forward by more.",
    )
    logprob_check_every: int = Field(50, ge=1, description="Check that agreement on step 1 and every N steps.")


class LossConfig(Section):
    """The reverse-KL estimator."""

    estimator: str = Field("topk", description="A registered loss estimator (listed below).")
    baseline: Literal["mean", "none"] = Field(
        "mean",
        description="sampled only: subtract the step's mean advantage from every token's (unbiased, less noise); "
        "none is the plain k1 policy gradient.",
    )
    k: int = Field(16, ge=1, description="Size of the student's candidate set S_t.")
    opd_coef: float = Field(
        1.0,
        ge=0,
        allow_inf_nan=False,
        description="Weight of the OPD term; 0 with reward.coef > 0 trains on the reward alone.",
    )
    renormalize: bool = Field(
        False,
        description="topk only: the student's probabilities renormalised over S_t, so training never moves "
        "probability from S_t into the rest of the vocabulary (false, the paper's, does so on large vocabularies: "
        "docs/real-models.md).",
    )
    weighting: Literal["student_p", "teacher_p", "none"] = Field(
        "student_p", description="Candidate weights w_t(v): softmax of student or teacher log-probs on S_t, or uniform."
    )
    absent_candidates: Literal["bound", "drop"] = Field(
        "bound",
        description="Served teachers only: a candidate outside the teacher's returned top-K gets the smallest "
        "returned log-prob (bound) or leaves S_t (drop).",
    )

    @field_validator("estimator")
    @classmethod
    def _check_estimator(cls, name: str) -> str:
        return _registered(LOSS_ESTIMATORS, name)


class RewardConfig(Section):
    """A verifiable task reward mixed with the OPD loss: group-normalised over a prompt's rollouts (GRPO)."""

    coef: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="Weight of the task-reward term; 0 trains on the teacher alone."
    )
    function: str = Field("correct", description="A registered reward function (listed below).")
    scale: Literal["std", "none"] = Field(
        "std", description="Divide each prompt's advantages by their standard deviation (GRPO) or not (Dr. GRPO)."
    )

    @field_validator("function")
    @classmethod
    def _check_function(cls, name: str) -> str:
        return _registered(REWARDS, name)


class PruneConfig(Section):
    """Prune-OPD's drift monitor and reliability weights."""

    enable: bool = Field(
        True, description="false gives plain OPD (every weight 1, no truncation on drift); see also budget.enable."
    )
    metric: str = Field("overlap_ratio", description="A registered drift metric (listed below).")
    k: int | None = Field(None, ge=1, description="Top-k size of the drift metric (<= loss.k); null means loss.k.")
    threshold: float = Field(
        0.7,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="Bad event: the metric below it (an overlap, the teacher's probability), or the top-p for "
        "teacher_top_p.",
    )
    w_drop: float = Field(0.01, ge=0, allow_inf_nan=False, description="Weight lost per bad event.")
    stop_weight: float = Field(
        0.0, ge=0, lt=1, allow_inf_nan=False, description="With rollout.truncate_on_drift: stop when w_t <= this."
    )
    w_base: float = Field(
        0.5, ge=0, allow_inf_nan=False, description="Added to every valid token's weight: m_t = w_t + w_base."
    )

    @field_validator("metric")
    @classmethod
    def _check_metric(cls, name: str) -> str:
        return _registered(DRIFT_METRICS, name)


def _registered(registry: Registry, name: str) -> str:
    if name not in registry.names():
        raise ValueError(
            f"{registry.key}={name!r}: input should be {registry.allowed()} "
            f"(or install a plugin that provides {name!r} in the entry-point group {registry.group})"
        )
    return name


class BudgetConfig(Section):
    """Prune-OPD's dynamic response budget."""

    enable: bool = Field(True, description="false generates up to rollout.max_new_tokens every step.")
    init_len: int = Field(2048, ge=1, description="Max response length of the first step.")
    min_len: int = Field(1024, ge=1, description="The budget never shrinks below this.")
    max_len: int | None = Field(
        12288, ge=1, description="The budget never grows above this; null means rollout.max_new_tokens."
    )
    increment: int = Field(100, ge=1, description="Tokens added or removed per change (the paper's step).")
    hit_ratio: float = Field(
        0.1, ge=0, le=1, allow_inf_nan=False, description="Grow when this share of rollouts has L_eff >= boundary."
    )
    margin: int = Field(100, ge=0, description="boundary = max(min_len, current length - margin).")
    patience: int = Field(
        3, ge=1, description="Lower the budget after this many missed steps in a row (the paper's shrink_patience)."
    )


LRSchedule = Literal["constant", "linear", "cosine"]  # opdctl.algorithm.schedules


class OptimConfig(Section):
    """The student's optimizer: AdamW, one update per step (or optim.updates_per_step)."""

    lr: float = Field(1e-6, gt=0, allow_inf_nan=False, description="Learning rate.")
    steps: int = Field(203, ge=1, description="Training steps: each generates, scores and updates once (or more).")
    prompts_per_step: int = Field(64, ge=1, description="Prompts per step; rollouts per step = this * rollout.n.")
    updates_per_step: int = Field(
        1,
        ge=1,
        description="Optimizer updates per step: its rollouts split in prompt order into this many mini-batches, "
        "one update each (verl's train_batch_size / ppo_mini_batch_size, TRL's steps_per_generation): fewer "
        "generations per update. Later mini-batches were sampled before the earlier updates (slightly off-policy; "
        "the sampled estimator corrects with importance weights, yet learns less than with 1; docs/benchmarks.md).",
    )
    grad_clip: float | None = Field(1.0, gt=0, allow_inf_nan=False, description="Max gradient norm; null disables.")
    grad_accum: int = Field(
        1,
        ge=1,
        description="Micro-batches for backward hold at most ceil(rollouts per process / grad_accum) rows (memory); "
        "rows are also split by length wherever that saves padding (same gradient).",
    )
    weight_decay: float = Field(0.01, ge=0, allow_inf_nan=False, description="AdamW weight decay.")
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="AdamW betas, each in [0, 1).")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up from 0 over this many steps.")
    lr_schedule: LRSchedule = Field(
        "constant", description="After warm-up: constant, or decayed to 0 at the last step (transformers' schedules)."
    )
    max_nonfinite_steps: int = Field(3, ge=1, description="Stop after this many non-finite updates in a row.")

    @field_validator("betas", mode="before")
    @classmethod
    def _two_betas(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise PydanticCustomError("two_betas", "needs two values, e.g. [0.9, 0.999]")
        return value


class OutputConfig(Section):
    """The run directory."""

    dir: str = Field("runs/{timestamp}", description="Run directory; {timestamp} is replaced.")
    save_every: int = Field(50, ge=1, description="Checkpoint every N steps (and at the end).")
    keep_checkpoints: int | None = Field(2, ge=1, description="Keep the newest N checkpoints; null keeps all.")
    trace_every: int = Field(1, ge=0, description="Trace every N-th step (and step 1); 0 disables traces.")
    trace_rollouts: int | Literal["all"] = Field(
        16, description="Rollouts traced per traced step (at least 1), or all."
    )
    report_to: list[str] = Field(
        default_factory=list,
        description="Experiment trackers that get every metrics record: tensorboard, wandb, trackio, mlflow "
        "(each an extra: pip install 'opdctl[wandb]'; docs/trackers.md).",
    )
    project: str = Field("opdctl", min_length=1, description="The trackers' project (MLflow: experiment) name.")

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, names: list[str]) -> list[str]:
        known = TRACKERS.names()
        for name in names:
            if name not in known:
                raise ValueError(f"output.report_to: unknown tracker {name!r}; use any of {', '.join(known)}")
        return list(dict.fromkeys(names))

    @model_validator(mode="after")
    def _check_trace_rollouts(self) -> OutputConfig:
        count = self.trace_rollouts
        _require(count == "all" or count >= 1, "output.trace_rollouts", count, ">= 1, or 'all'")
        return self


class EvalConfig(Section):
    """Held-out evaluation during training, logged to metrics.jsonl."""

    bench: list[str] = Field(
        default_factory=list,
        description="Benchmarks to evaluate (see docs/eval.md: synthetic, aime, aime24, amc23, ... or a "
        ".jsonl/.json/.parquet file with problem and answer columns); empty disables.",
    )
    every: int = Field(0, ge=0, description="Also evaluate every N steps; 0 evaluates only before and after.")
    n: int = Field(1, ge=1, description="Samples per problem.")
    temperature: float = Field(0.0, ge=0, allow_inf_nan=False, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="Nucleus sampling; 1 samples from all.")
    pass_k: list[int] = Field(
        default_factory=list, description="Also log unbiased pass@k for these k (each <= eval.n), e.g. [1, 4]."
    )
    max_new_tokens: int | None = Field(None, ge=1, description="null means rollout.max_new_tokens.")
    max_problems: int | None = Field(None, ge=1, description="Evaluate only the first N problems.")
    teacher: bool = Field(False, description="Also evaluate the teacher once, before training (if it can generate).")
    reverse_kl: bool = Field(
        False,
        description="Also log the student's reverse KL to the teacher on its own answers to the benchmark's problems "
        "(k1 estimate per token, sampled at temperature 1 with the same seed every time): what OPD minimises, "
        "held out.",
    )

    @model_validator(mode="after")
    def _check_pass_k(self) -> EvalConfig:
        for k in self.pass_k:
            _require(1 <= k <= self.n, "eval.pass_k", self.pass_k, f"between 1 and eval.n ({self.n})")
        return self


class Config(Section):
    """A whole run."""

    seed: int = Field(0, description="Seeds prompt order and sampling; same seed, same run on CPU.")
    student: SerializeAsAny[BackendConfig] = Field(default_factory=BackendConfig)
    teacher: SerializeAsAny[BackendConfig] = Field(default_factory=lambda: BackendConfig(model="demo:teacher"))
    teachers: dict[str, SerializeAsAny[BackendConfig]] = Field(
        default_factory=dict,
        description="Several teachers by name, each any backend (keys as under teacher); data.teacher_field picks "
        "one per row, the first scores what has no row (evaluation). Empty: the one teacher above.",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _check_consistency(self) -> Config:
        budget, limit = self.budget, self.rollout.max_new_tokens
        if budget.max_len is None:
            budget.max_len = limit
        _require(
            budget.min_len <= budget.max_len, "budget.min_len", budget.min_len, f"<= budget.max_len ({budget.max_len})"
        )
        _require(
            self.optim.warmup_steps <= self.optim.steps,
            "optim.warmup_steps",
            self.optim.warmup_steps,
            f"<= optim.steps ({self.optim.steps})",
        )
        if budget.enable:
            _require(
                budget.min_len <= budget.init_len,
                "budget.init_len",
                budget.init_len,
                f">= budget.min_len ({budget.min_len})",
            )
            _require(
                budget.init_len <= budget.max_len,
                "budget.init_len",
                budget.init_len,
                f"<= budget.max_len ({budget.max_len})",
            )
            _require(budget.max_len <= limit, "budget.max_len", budget.max_len, f"<= rollout.max_new_tokens ({limit})")
        _require(self.prune_k <= self.loss.k, "prune.k", self.prune.k, f"<= loss.k ({self.loss.k})")
        _require(
            bool(self.teachers) == (self.data.teacher_field is not None),
            "data.teacher_field",
            self.data.teacher_field,
            "set together with teachers (the column that names each row's teacher)",
        )
        _require(
            self.loss.opd_coef > 0 or self.reward.coef > 0,
            "loss.opd_coef",
            self.loss.opd_coef,
            "> 0 when reward.coef is 0",
        )
        if not self.prune.enable:
            self.rollout.truncate_on_drift = False  # truncation stops on Prune-OPD's weights: plain OPD has none
        batch = self.optim.prompts_per_step * self.rollout.n
        updates = self.optim.updates_per_step
        _require(
            updates <= self.optim.prompts_per_step,
            "optim.updates_per_step",
            updates,
            f"<= optim.prompts_per_step ({self.optim.prompts_per_step})",
        )
        _require(
            self.optim.grad_accum <= batch, "optim.grad_accum", self.optim.grad_accum, f"<= rollouts per step ({batch})"
        )
        return self

    @property
    def prune_k(self) -> int:
        """Top-k size of the drift metric."""
        return self.prune.k or self.loss.k

    @property
    def teacher_k(self) -> int:
        """How many of its top ids the teacher returns: the drift metric's ``prune_k``, or ``loss.k`` for an
        estimator that reads the teacher's top-k (forward_topk); the drift metric uses the first ``prune_k``."""
        estimator = LOSS_ESTIMATORS.get(self.loss.estimator)
        return self.loss.k if getattr(estimator, "queries_teacher_topk", False) else self.prune_k

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r}: must be {allowed}")
