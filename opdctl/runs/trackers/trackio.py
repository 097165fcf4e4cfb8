"""Trackio (Hugging Face's local-first tracker)."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import numpy as np

from opdctl.runs.trackers.base import TrackedRun, Tracker


class TrackioTracker(Tracker):
    """A Trackio run in its local store ($TRACKIO_DIR; ``trackio show`` opens it) or a Space ($TRACKIO_SPACE_ID)."""

    libraries = ("trackio",)
    extra = "trackio"
    histograms = True

    def __init__(self, run: TrackedRun) -> None:
        super().__init__(run)
        import trackio

        self.trackio = trackio
        state = run.state or {"project": run.project, "name": run.name}
        with contextlib.redirect_stdout(sys.stderr):  # trackio prints its set-up; our stdout is for results
            self.handle = trackio.init(
                project=state["project"],
                name=state["name"],
                config=run.config,
                resume="allow" if run.state else "never",
                auto_log_cpu=False,
                auto_log_gpu=False,
                embed=False,
            )

    def state(self) -> dict[str, Any]:
        return {"project": self.handle.project, "name": self.handle.name}

    def log(self, scalars: dict[str, float], histograms: dict[str, np.ndarray], step: int) -> None:
        self.handle.log({**scalars, **{key: self.trackio.Histogram(a) for key, a in histograms.items()}}, step=step)

    def close(self, failed: bool) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            self.trackio.finish()  # also forgets the run, which trackio would otherwise finish again at exit
