"""Starting a run: the backends, the data and the run directory, checked before anything is written.

A new run gets a fresh run directory, locked by process 0; ``--resume`` reopens one and
continues from its newest complete checkpoint (:mod:`opdctl.training.resume`) with the config the
run was started with (plus overrides).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opdctl.backends.protocols import LendsFrozenBase, Student, Teacher
from opdctl.backends.routed import RoutedTeacher
from opdctl.config.files import apply_override, read_yaml, validate
from opdctl.config.schema import STUDENT_WEIGHTS, BackendConfig, Config
from opdctl.data.benchmarks import check_bench, load_benchmarks
from opdctl.data.prompts import PromptSet, load_prompts
from opdctl.distributed import World, device_for, setup_world
from opdctl.errors import BackendError, ConfigError, OpdctlError, RunError
from opdctl.plugins import STUDENTS, TEACHERS
from opdctl.progress import reporter
from opdctl.runs.checkpoint import CONFIG_FILE
from opdctl.runs.files import remove_leftovers
from opdctl.runs.rundir import RunDir
from opdctl.runs.trackers import Trackers, require_trackers
from opdctl.training.generation import truncates
from opdctl.training.resume import (
    config_changes,
    finished_note,
    refuse_fixed,
    resume_checkpoint,
    trained_config,
    unloadable,
)
from opdctl.training.trainer import Trainer


def load_backends(
    config: Config, student_model: str | None = None, world: World | None = None
) -> tuple[Student, Teacher]:
    """Instantiate the configured backends (the student from ``student_model`` when resuming).

    With several processes on GPUs, each loads its models onto its own GPU.
    """
    world = world or World()
    student_config = _on_own_device(config.student, world)
    if student_model is not None:
        student_config = student_config.model_copy(update={"model": student_model})
    student = STUDENTS.get(config.student.backend)(student_config)
    try:
        teacher = build_teacher(config, world, student)
    except BaseException:
        student.close()
        raise
    teacher.check(student.tokenizer, config.prune_k, config.loss.k)
    return student, teacher


def build_teacher(config: Config, world: World | None = None, student: Student | None = None) -> Teacher:
    """The configured teacher, or the named teachers as one (``teachers``), each on this process's device.

    ``model: student`` (in a teacher section of the student's backend) is the student's starting weights:
    those ``student`` lends (a LoRA student's frozen base), else a copy of ``student.model``.
    """
    world = world or World()
    sections = config.teachers or {"": config.teacher}
    built: dict[str, Teacher] = {}
    try:
        for name, section in sections.items():
            setting = f"teachers.{name}.backend" if name else "teacher.backend"
            built[name] = section_teacher(config, _on_own_device(section, world), setting, student)
    except BaseException:
        for teacher in built.values():
            teacher.close()
        raise
    return RoutedTeacher(built) if config.teachers else built[""]


def section_teacher(
    config: Config, section: BackendConfig, setting: str = "teacher.backend", student: Student | None = None
) -> Teacher:
    """The teacher one section configures (``model: student``: see :func:`build_teacher`)."""
    if section.model == STUDENT_WEIGHTS and section.backend == config.student.backend:
        lent = student.frozen_teacher(section) if isinstance(student, LendsFrozenBase) else None
        if lent is not None:
            return lent
        section = section.model_copy(update={"model": config.student.model})
    return TEACHERS.get(section.backend, setting)(section)


def check_routes(config: Config, prompts: PromptSet) -> None:
    """Every row's teacher is one of ``teachers``."""
    unknown = sorted(set(prompts.teacher_names or []) - set(config.teachers))
    if unknown:
        raise ConfigError(
            f"data.teacher_field={config.data.teacher_field!r} names teachers that are not configured: "
            f"{', '.join(map(repr, unknown))}; add them under teachers (configured: {', '.join(config.teachers)})"
        )


def _on_own_device(section: BackendConfig, world: World) -> BackendConfig:
    if "device" not in type(section).model_fields:
        return section
    return section.model_copy(update={"device": device_for(world, section.device)})


def check_teacher(config: Config) -> dict[str, str]:
    """Probe the teacher with the student's tokenizer only (no student weights are loaded)."""
    tokenizer = STUDENTS.get(config.student.backend).load_tokenizer(config.student)
    teacher = build_teacher(config)
    try:
        return teacher.check(tokenizer, config.prune_k, config.loss.k)
    finally:
        teacher.close()


def check_lengths(config: Config, student: Student, prompts: PromptSet) -> None:
    """Refuse settings the student cannot run: k beyond its vocabulary, prompts plus responses beyond its context."""
    vocab = student.vocab_size()
    if config.loss.k > vocab:
        raise ConfigError(f"loss.k={config.loss.k} is larger than the student's vocabulary ({vocab} tokens): lower it")
    context = student.context_length()
    longest = max(map(len, prompts.ids))
    if context and longest + config.rollout.max_new_tokens > context:
        raise ConfigError(
            f"the longest prompt ({longest} tokens) plus rollout.max_new_tokens={config.rollout.max_new_tokens} "
            f"exceeds the student's context of {context} tokens: lower rollout.max_new_tokens or data.max_prompt_tokens"
        )


def check_answers(config: Config, prompts: PromptSet) -> None:
    """A task reward needs every prompt's reference answer."""
    missing = sum(answer is None for answer in prompts.answers)
    if config.reward.coef and missing:
        raise ConfigError(
            f"reward.coef={config.reward.coef} needs each prompt's reference answer, and {missing} of "
            f"{len(prompts)} prompts have none: set data.answer_field to the column that holds them"
        )


def start_run(config: Config, resume: Path | None = None) -> Trainer:
    """Build a trainer for a new run, or for ``resume``'s run from its newest complete checkpoint.

    Process 0 owns the run directory (its lock) from the start. A new run's directory is
    removed again if the run cannot start; a resume writes nothing until the checkpoint
    has loaded, so a failed resume leaves the run as it was.
    """
    world = setup_world()
    check_bench(config.eval.bench)
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
            remove_leftovers(run.path)  # of writes a kill cut short
            return run
        template = config.output.dir
        stamped = template.replace("{timestamp}", dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
        return RunDir.claim(Path(stamped), unique="{timestamp}" in template)

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
    if config.rollout.truncate_on_drift and not truncates(config, teacher) and world.main:
        reporter().message(
            "note: no truncation on drift with this teacher: it re-scores every rollout from its start at each "
            "check, slower than scoring once (docs/benchmarks.md, 'Does truncation pay with a served teacher?'); "
            "rollout.chunking=exact or predicted truncates anyway"
        )
    prompts = load_prompts(config.data, student.tokenizer, config.seed)
    check_lengths(config, student, prompts)
    check_answers(config, prompts)
    check_routes(config, prompts)
    benchmarks = load_benchmarks(config.eval.bench, limit=config.eval.max_problems) if config.eval.bench else []
    config.output.dir = str(run.path)
    trainer = Trainer(config, run, student, teacher, prompts, world, benchmarks)
    if latest is not None:
        try:
            trainer.restore(latest[1])
        except Exception as exc:
            raise unloadable(latest[1], exc) from exc
    step = trainer.state.step
    if world.main:
        sent = run.read_metrics()  # what the run's trackers were sent before a crash
        run.write_config(config.to_yaml())
        for note in run.rewind(step) if resuming else []:
            reporter().message(f"warning: {note}")
        if latest is not None:
            reporter().message(f"Resuming {run.path} from step {step}")
            record_changes(run, latest[1], config, step)
        done = finished_note(run, step, config.optim.steps)
        if resuming and done:
            reporter().message(done)
        cfg = config.output
        trainer.trackers = Trackers.open(cfg.report_to, run, cfg.project, config.model_dump(mode="json"), sent)
    world.barrier()
    return trainer


def resumed_config(run_dir: Path, overrides: list[str]) -> Config:
    """The run's config.yaml plus command-line overrides, checked against the config its newest checkpoint was
    trained with: a change that cannot apply to a running run (another student, another directory) is refused."""
    run = RunDir.open(run_dir)
    raw = read_yaml(run.config_path)
    if not raw:
        raise RunError(f"{run_dir}/config.yaml is empty: the run never started; start a new run instead")
    written = _run_config(raw, run.config_path)
    trained_path = trained_config(run)
    trained = _checkpoint_config(trained_path, written.output.dir) if trained_path else written
    refuse_fixed(config_changes(trained, written), f"{run.config_path} was edited")
    for override in overrides:
        apply_override(raw, override)
    config = validate(raw)
    refuse_fixed(config_changes(trained, config), "on the command line")
    return config


def _run_config(raw: dict[str, Any], path: Path) -> Config:
    """A run's own config file, validated; its errors name the file."""
    try:
        return validate(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _checkpoint_config(path: Path, run_dir: str) -> Config:
    """The config a checkpoint was trained with, placed in ``run_dir`` (a run directory may have been moved)."""
    config = _run_config(read_yaml(path), path)
    config.output.dir = run_dir
    return config


def record_changes(run: RunDir, checkpoint: Path, config: Config, step: int) -> None:
    """Tell and record (changes.jsonl) how ``config`` differs from the one ``checkpoint`` was trained with."""
    trained_path = checkpoint / CONFIG_FILE
    if not trained_path.is_file():
        return
    changes = config_changes(_checkpoint_config(trained_path, config.output.dir), config)
    if changes:
        shown = "; ".join(f"{key} {before} -> {after}" for key, (before, after) in changes.items())
        reporter().message(f"from step {step + 1} on: {shown}")
        run.record_changes(step, changes)
