"""Resuming a run: which checkpoint it continues from, what a resume may change, and what it tells the user.

Rules: the newest complete checkpoint wins and every newer, damaged one is named with its
fault; no checkpoint means a restart from step 0; ``optim.steps`` may not fall below the
checkpoint's step; a checkpoint that cannot be loaded stops the resume before anything in
the run directory changes, with the command that sets it aside.
"""

from __future__ import annotations

import json
from pathlib import Path

from opdctl.checkpoint import STATE_FILE, checkpoint_problem
from opdctl.errors import RunError, reason
from opdctl.progress import reporter
from opdctl.rundir import RunDir


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
