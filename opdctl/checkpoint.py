"""What a checkpoint holds besides the model: the trainer's state, saved and restored in one place.

A checkpoint directory has the student (Hugging Face format, written by its backend),
``optimizer.pt`` and ``trainer_state.json``: the step, the non-finite streak, the
training time so far, the budget, the learning-rate scheduler and both RNGs, so a
resumed run continues exactly where the uninterrupted one would have.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from opdctl.budget import BudgetState

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


@dataclass
class TrainerState:
    """The loop's counters and controllers that a resumed run must get back."""

    budget: BudgetState
    step: int = 0
    nonfinite_streak: int = 0  # non-finite steps in a row
    elapsed: float = 0.0  # seconds spent in training steps

    def save(self, directory: Path, scheduler: Any) -> None:
        """Write the state, the scheduler's and the global RNGs' to ``directory``."""
        state = {
            "step": self.step,
            "budget": self.budget.to_dict(),
            "nonfinite_streak": self.nonfinite_streak,
            "elapsed": self.elapsed,
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
        )
