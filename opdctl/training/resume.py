"""Resuming a run: which checkpoint it continues from, what a resume may change, and what it tells the user.

Rules: the newest complete checkpoint wins and every newer, damaged one is named with its
fault; no checkpoint means a restart from step 0; ``optim.steps`` may not fall below the
checkpoint's step; a checkpoint that cannot be loaded stops the resume before anything in
the run directory changes, with the command that sets it aside. A config that differs from
the one the checkpoint was trained with (an override, or an edit of the run's config.yaml)
applies from the next step and is recorded in the run's ``changes.jsonl``, except for the keys
in :data:`FIXED_ON_RESUME`, which are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opdctl.config.schema import Config
from opdctl.errors import ConfigError, RunError, reason
from opdctl.progress import reporter
from opdctl.runs.checkpoint import CONFIG_FILE, STATE_FILE, checkpoint_problem
from opdctl.runs.rundir import RunDir

FIXED_ON_RESUME = {
    "output.dir": "the run goes on in its own directory",
    "student.model": "the student goes on from the run's checkpoints of the model it started with",
    "student.backend": "the checkpoints hold that backend's student",
    "student.lora": "the checkpoints hold the student's weights as they were trained",
}


def config_changes(before: Config, after: Config) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs between two configs: (before, after)."""
    old, new = _flat(before.model_dump(mode="json")), _flat(after.model_dump(mode="json"))
    keys = sorted(old.keys() | new.keys())
    return {key: (old.get(key), new.get(key)) for key in keys if old.get(key) != new.get(key)}


def _flat(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value and f"{prefix}{key}" != "student.lora":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def refuse_fixed(changes: dict[str, tuple[Any, Any]], where: str) -> None:
    """A one-line error for the first change a resume cannot apply (``where``: what asked for it)."""
    for key, why in FIXED_ON_RESUME.items():
        if key in changes:
            before, after = changes[key]
            raise ConfigError(f"{key}={after} cannot change on --resume ({why}: {before}; {where}); "
                              "start a new run instead")  # fmt: skip


def trained_config(run: RunDir) -> Path | None:
    """The config.yaml of the newest complete checkpoint (the config its steps were trained with), if it has one."""
    for _, path in reversed(run.all_checkpoints()):
        if checkpoint_problem(path) is None:
            return path / CONFIG_FILE if (path / CONFIG_FILE).is_file() else None
    return None


def resume_checkpoint(run: RunDir, steps: int) -> tuple[int, Path] | None:
    """The checkpoint to continue from (None: start over), after telling what was skipped and why."""
    chosen = None
    for step, path in reversed(run.all_checkpoints()):
        problem = checkpoint_problem(path)
        if problem is None:
            chosen = (step, path)
            break
        reporter().message(f"warning: skipping checkpoint {path}: incomplete or damaged ({problem})")
    if chosen is None:
        reporter().message(f"{run.path} has no complete checkpoint: restarting from step 0")
        return None
    step, path = chosen
    if steps < step:
        raise RunError(
            f"optim.steps={steps} is below step {step} of the checkpoint {path}: set optim.steps={step} or more"
        )
    check_loadable(path)
    return chosen


def check_loadable(path: Path) -> None:
    """Read what is cheap to read of a checkpoint (trainer state, safetensors headers) before any model loads."""
    from safetensors import safe_open

    try:
        json.loads((path / STATE_FILE).read_text())
        for weights in sorted(path.glob("*.safetensors")):
            with safe_open(str(weights), "pt") as handle:
                handle.keys()
    except Exception as exc:
        raise unloadable(path, exc) from exc


def unloadable(path: Path, exc: BaseException) -> RunError:
    """A checkpoint that fails to load: its path, the cause, and how to resume from the one before it."""
    aside = path.parent / f"damaged-{path.name}"
    return RunError(
        f"checkpoint {path} cannot be loaded ({reason(exc, limit=160)}): set it aside with "
        f"mv {path} {aside} and resume again to continue from the checkpoint before it"
    )


def finished_note(run: RunDir, step: int, steps: int) -> str | None:
    """The message for resuming a run that already reached ``optim.steps``."""
    if step < steps:
        return None
    return f"{run.path} already finished at step {step}: nothing to train (raise optim.steps to train longer)"
