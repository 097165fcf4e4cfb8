"""TensorBoard: event files in the run directory, with drift histograms."""

from __future__ import annotations

import json

import numpy as np

from opdctl.runs.trackers.base import TrackedRun, Tracker, flatten


class TensorBoardTracker(Tracker):
    """Event files in RUN_DIR/tensorboard (``tensorboard --logdir runs/`` shows every run)."""

    libraries = ("tensorboard",)
    extra = "tensorboard"
    histograms = True

    def __init__(self, run: TrackedRun) -> None:
        super().__init__(run)
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(str(run.path / "tensorboard"))
        if run.state is None:
            params = {key: v if isinstance(v, int | float | str | bool) else json.dumps(v)
                      for key, v in flatten(run.config, ".").items()}  # fmt: skip
            for summary in hparams(params, {}):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", _markdown_code(json.dumps(run.config, indent=2)))

    def log(self, scalars: dict[str, float], histograms: dict[str, np.ndarray], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        for key, array in histograms.items():
            self.writer.add_histogram(key, array, step)

    def close(self, failed: bool) -> None:
        self.writer.close()


def _markdown_code(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
