"""Weights & Biases."""

from __future__ import annotations

from typing import Any

import numpy as np

from opdctl.runs.trackers.base import TrackedRun, Tracker


class WandbTracker(Tracker):
    """A Weights & Biases run, files in RUN_DIR/wandb; ``WANDB_MODE=offline`` keeps it local."""

    libraries = ("wandb",)
    extra = "wandb"
    histograms = True

    def __init__(self, run: TrackedRun) -> None:
        super().__init__(run)
        import wandb

        self.wandb = wandb
        self.handle = wandb.init(
            project=run.project,
            name=run.name,
            id=run.state["id"] if run.state else None,
            resume="allow",
            config=run.config,
            dir=str(run.path),
            settings=wandb.Settings(console="off"),
        )

    def state(self) -> dict[str, Any]:
        return {"id": self.handle.id}

    def log(self, scalars: dict[str, float], histograms: dict[str, np.ndarray], step: int) -> None:
        self.handle.log({**scalars, **{key: self.wandb.Histogram(a) for key, a in histograms.items()}}, step=step)

    def close(self, failed: bool) -> None:
        self.handle.finish(exit_code=1 if failed else 0)
