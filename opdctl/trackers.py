"""Experiment trackers: every metrics.jsonl record also goes to TensorBoard, Weights & Biases, Trackio or MLflow.

``output.report_to`` names the trackers. Each is a class found through the entry-point
group ``opdctl.trackers`` (like backends), so a package adds its own by declaring::

    [project.entry-points."opdctl.trackers"]
    mytracker = "my_package:MyTracker"

A tracker is a :class:`Tracker` subclass: it starts or continues one run, logs scalars
(and histograms, if ``histograms``) by step, and closes. Step records keep their
metrics.jsonl names; evaluation records become ``eval/<benchmark>/<metric>`` (the
teacher's ``teacher/<benchmark>/<metric>``). Every record reaches a tracker once: on
``--resume`` the tracker continues the run it started (its id is kept in
``RUN_DIR/trackers.json``) and skips the records it was sent before the crash.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import sys
import time
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from opdctl.errors import ConfigError, RunError, reason
from opdctl.files import atomic_write
from opdctl.progress import reporter
from opdctl.rundir import RunDir, step_name

GROUP = "opdctl.trackers"
STATE_FILE = "trackers.json"
RecordKey = tuple[int, str | None, str | None]


@dataclass
class TrackedRun:
    """What a tracker needs to start a run, or to continue the one it started."""

    path: Path  # the run directory
    name: str  # the run's name in the tracker: the run directory's name
    project: str  # output.project
    config: dict[str, Any]  # the resolved config, nested
    state: dict[str, Any] | None  # what the tracker stored when it started this run; None for a new run


class Tracker:
    """One tracker's run. Subclasses import their library in ``__init__`` only."""

    libraries: ClassVar[tuple[str, ...]]  # modules that must be importable
    extra: ClassVar[str]  # the opdctl extra that installs them
    histograms: ClassVar[bool] = False

    def __init__(self, run: TrackedRun) -> None:
        self.run = run

    def state(self) -> dict[str, Any]:
        """What to store to continue this run on --resume."""
        return {}

    def log(self, scalars: dict[str, float], histograms: dict[str, np.ndarray], step: int) -> None:
        """One record's values (``histograms`` is empty unless the class sets ``histograms``)."""
        raise NotImplementedError

    def close(self, failed: bool) -> None:
        raise NotImplementedError


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


# the registry ------------------------------------------------------------------


def tracker_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def tracker_class(name: str) -> type[Tracker]:
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name not in found:
        raise ConfigError(f"output.report_to: unknown tracker {name!r}; installed: {', '.join(sorted(found))}")
    return found[name].load()


def require_trackers(names: list[str]) -> None:
    """Refuse, before anything loads, a tracker whose library is not installed."""
    for name in names:
        cls = tracker_class(name)
        missing = [module for module in cls.libraries if importlib.util.find_spec(module) is None]
        if missing:
            raise ConfigError(
                f"output.report_to includes {name}, but {', '.join(missing)} is not installed: "
                f"pip install 'opdctl[{cls.extra}]'"
            )


# records to series ---------------------------------------------------------------


def record_key(record: dict[str, Any]) -> RecordKey:
    """What identifies a record: its step, and for an evaluation the benchmark and when it ran."""
    return record.get("step", 0), record.get("eval"), record.get("when")


def flatten(values: dict[str, Any], sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level, keys joined by ``sep``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, sep, name + sep))
        else:
            flat[name] = value
    return flat


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A record's numbers by series name (booleans as 0/1; text and missing values left out)."""
    if "eval" in record:
        who = "teacher" if record["when"] == "teacher" else "eval"
        prefix = f"{who}/{record['eval']}/"
        values = {prefix + key: v for key, v in record.items() if key not in ("step", "eval", "when")}
    else:
        values = {key: v for key, v in record.items() if key != "step"}
    return {key: float(v) for key, v in flatten(values).items() if isinstance(v, int | float) and v == v}


def drift_histograms(run: RunDir, step: int) -> dict[str, np.ndarray]:
    """The step's traced weights and overlaps, and the positions of its bad events (none if untraced)."""
    import pyarrow.parquet as pq

    path = run.traces_path / "tokens" / f"{step_name(step)}.parquet"
    if not path.is_file():
        return {}
    table = pq.read_table(path, columns=["position", "weight", "overlap", "bad"])
    bad = table["bad"].to_numpy(zero_copy_only=False)
    return {
        "drift/weight": table["weight"].to_numpy(),
        "drift/overlap": table["overlap"].to_numpy(),
        "drift/bad_event_position": table["position"].to_numpy()[bad],
    }


# the trackers of one run -----------------------------------------------------------


class Trackers:
    """The trackers of one run, fed by :meth:`RunDir.append_metrics`; a context that closes them."""

    def __init__(self, run: RunDir, trackers: dict[str, Tracker], sent: dict[str, set[RecordKey]]) -> None:
        self.run, self.trackers, self.sent = run, trackers, sent

    @classmethod
    def open(
        cls, names: list[str], run: RunDir, project: str, config: dict[str, Any], before_rewind: list[dict[str, Any]]
    ) -> Trackers:
        """Start each tracker's run, or continue the one it started (``before_rewind``: what it was sent).

        A tracker added on --resume is sent the run's records so far.
        """
        path = run.path / STATE_FILE
        stored = json.loads(path.read_text()) if path.is_file() else {}
        trackers: dict[str, Tracker] = {}
        for name in names:
            try:
                tracked = TrackedRun(run.path, run.path.name, project, config, stored.get(name))
                trackers[name] = tracker_class(name)(tracked)
            except Exception as exc:
                for started in trackers.values():
                    started.close(failed=True)
                raise RunError(
                    f"{name} could not start: {reason(exc)}; fix that and continue with opdctl train --resume "
                    f"{run.path} (or drop {name} from output.report_to)"
                ) from exc
        if trackers or stored:  # no trackers.json for a run that reports to none
            atomic_write(path, json.dumps({**stored, **{n: t.state() for n, t in trackers.items()}}, indent=2) + "\n")
        earlier = {record_key(r) for r in before_rewind}
        sent = {name: set(earlier) if name in stored else set() for name in names}
        replay = {name for name in names if name not in stored}
        opened = cls(run, trackers, sent)
        run.on_metrics.append(opened.log)
        for record in run.read_metrics() if replay else []:
            opened.log(record, only=replay)
        return opened

    def log(self, record: dict[str, Any], only: set[str] | None = None) -> None:
        """One record to each tracker (or to those in ``only``) that has not had it.

        A tracker that fails is warned about, not the end of the run: metrics.jsonl has the record.
        """
        key = record_key(record)
        due = [name for name in only or self.trackers if key not in self.sent[name]]
        if not due:
            return
        values = scalars(record)
        wants_histograms = key[1] is None and any(self.trackers[name].histograms for name in due)
        histograms = drift_histograms(self.run, key[0]) if wants_histograms else {}
        for name in due:
            self.sent[name].add(key)
            tracker = self.trackers[name]
            try:
                tracker.log(values, histograms if tracker.histograms else {}, key[0])
            except Exception as exc:
                reporter().message(f"warning: {name} could not log step {key[0]}: {reason(exc)}")

    def close(self, failed: bool = False) -> None:
        if self.log in self.run.on_metrics:
            self.run.on_metrics.remove(self.log)
        for tracker in self.trackers.values():
            tracker.close(failed)
        self.trackers = {}

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(failed=kind is not None)


def _markdown_code(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
