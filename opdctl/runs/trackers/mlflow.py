"""MLflow."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import numpy as np

from opdctl.runs.trackers.base import TrackedRun, Tracker, flatten


class MLflowTracker(Tracker):
    """An MLflow run in experiment ``output.project`` at $MLFLOW_TRACKING_URI (MLflow's default otherwise)."""

    libraries = ("mlflow", "sqlalchemy", "alembic")
    extra = "mlflow"
    BATCH = 100  # MLflow takes at most 100 params per call

    def __init__(self, run: TrackedRun) -> None:
        super().__init__(run)
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param

        self.metric = Metric
        if run.state:
            self.client = MlflowClient(tracking_uri=run.state["tracking_uri"])
            self.run_id = run.state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        self.client = MlflowClient()
        experiment = self.client.get_experiment_by_name(run.project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(run.project)
        self.run_id = self.client.create_run(
            experiment_id, run_name=run.name, tags={"opdctl.run_dir": str(run.path)}
        ).info.run_id
        params = [Param(key, json.dumps(value) if not isinstance(value, str) else value)
                  for key, value in flatten(run.config, ".").items()]  # fmt: skip
        for start in range(0, len(params), self.BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + self.BATCH])

    def state(self) -> dict[str, Any]:
        return {"tracking_uri": self.client.tracking_uri, "run_id": self.run_id}

    def log(self, scalars: dict[str, float], histograms: dict[str, np.ndarray], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self.metric(mlflow_name(key), value, now, step) for key, value in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def mlflow_name(key: str) -> str:
    """MLflow metric names allow letters, digits and ``_-. :/``: pass@4 becomes pass_at_4."""
    return re.sub(r"[^\w\-. :/]", "_", key.replace("@", "_at_"))
