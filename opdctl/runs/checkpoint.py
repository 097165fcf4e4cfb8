"""What a checkpoint holds besides the model: the trainer's state, and the manifest that marks it complete.

A checkpoint directory has the student (Hugging Face format, written by its backend),
``optimizer.pt``, ``config.yaml`` (the config it was trained with) and ``trainer_state.json``:
the step, the non-finite streak, the training time so far, the budget, the learning-rate scheduler and both RNGs, so a
resumed run continues exactly where the uninterrupted one would have. Its
``manifest.json`` (every file and its size, written last) tells a complete checkpoint
from one that a crash or a full disk cut short.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from opdctl.algorithm.budget import BudgetState
from opdctl.runs.files import atomic_write

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
LEGACY_CHECKPOINT_FILES = (STATE_FILE, OPTIMIZER_FILE)  # checkpoints written before manifests


@dataclass
class TrainerState:
    """The loop's counters and controllers that a resumed run must get back."""

    budget: BudgetState
    step: int = 0
    nonfinite_streak: int = 0  # non-finite steps in a row
    elapsed: float = 0.0  # seconds spent in training steps
    cpu: float = 0.0  # this process's CPU seconds in training steps (every thread)

    def save(self, directory: Path, scheduler: Any) -> None:
        """Write the state, the scheduler's and the global RNGs' to ``directory``."""
        state = {
            "step": self.step,
            "budget": self.budget.to_dict(),
            "nonfinite_streak": self.nonfinite_streak,
            "elapsed": self.elapsed,
            "cpu": self.cpu,
            "scheduler": scheduler.state_dict(),
            "python_rng": random.getstate(),
            "torch_rng": torch.get_rng_state().tolist(),
        }
        (directory / STATE_FILE).write_text(json.dumps(state))

    @classmethod
    def restore(cls, directory: Path, scheduler: Any) -> TrainerState:
        """Read a saved state; the scheduler and the global RNGs are set as they were."""
        state = json.loads((directory / STATE_FILE).read_text())
        scheduler.load_state_dict(state["scheduler"])
        python_rng = state["python_rng"]
        random.setstate((python_rng[0], tuple(python_rng[1]), python_rng[2]))
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        return cls(
            budget=BudgetState(**state["budget"]),
            step=state["step"],
            nonfinite_streak=state["nonfinite_streak"],
            elapsed=state["elapsed"],
            cpu=state.get("cpu", 0.0),  # runs checkpointed before opdctl counted CPU time
        )


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at ``path`` is not complete (a file missing or cut short), or None if it is."""
    manifest = path / MANIFEST_FILE
    if not manifest.is_file():
        missing = [name for name in LEGACY_CHECKPOINT_FILES if not (path / name).is_file()]
        return f"{missing[0]} is missing" if missing else None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} is damaged"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, not the {size} written"
    return None


def write_manifest(directory: Path) -> None:
    """List every file of a checkpoint with its size (written last: its presence marks the checkpoint whole)."""
    files = {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}
    atomic_write(directory / MANIFEST_FILE, json.dumps({"files": files}, indent=1) + "\n")
