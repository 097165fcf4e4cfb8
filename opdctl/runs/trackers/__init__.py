"""Experiment trackers: every metrics.jsonl record also goes to TensorBoard, Weights & Biases, Trackio or MLflow.

``output.report_to`` names the trackers. Each is a class found through the entry-point
group ``opdctl.trackers`` (like backends), so a package adds its own by declaring::

    [project.entry-points."opdctl.trackers"]
    mytracker = "my_package:MyTracker"

opdctl's own are declared the same way, one module each in this folder. A tracker is a
:class:`opdctl.runs.trackers.base.Tracker` subclass: it starts or continues one run, logs scalars
(and histograms, if ``histograms``) by step, and closes. Step records keep their
metrics.jsonl names; evaluation records become ``eval/<benchmark>/<metric>`` (the
teacher's ``teacher/<benchmark>/<metric>``). Every record reaches a tracker once: on
``--resume`` the tracker continues the run it started (its id is kept in
``RUN_DIR/trackers.json``) and skips the records it was sent before the crash.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import numpy as np

from opdctl.errors import ConfigError, RunError, reason
from opdctl.plugins import TRACKERS
from opdctl.progress import reporter
from opdctl.runs.files import atomic_write
from opdctl.runs.rundir import RunDir
from opdctl.runs.trackers.base import RecordKey, TrackedRun, Tracker, flatten

STATE_FILE = "trackers.json"


def require_trackers(names: list[str]) -> None:
    """Refuse, before anything loads, a tracker whose library is not installed."""
    for name in names:
        cls = TRACKERS.get(name)
        missing = [module for module in cls.libraries if importlib.util.find_spec(module) is None]
        if missing:
            raise ConfigError(
                f"output.report_to includes {name}, but {', '.join(missing)} is not installed: "
                f"pip install 'opdctl[{cls.extra}]'"
            )


def record_key(record: dict[str, Any]) -> RecordKey:
    """What identifies a record: its step, and for an evaluation the benchmark and when it ran."""
    return record.get("step", 0), record.get("eval"), record.get("when")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A record's numbers by series name (booleans as 0/1; text and missing values left out)."""
    if "eval" in record:
        who = "teacher" if record["when"] == "teacher" else "eval"
        prefix = f"{who}/{record['eval']}/"
        values = {prefix + key: v for key, v in record.items() if key not in ("step", "eval", "when")}
    else:
        values = {key: v for key, v in record.items() if key != "step"}
    return {key: float(v) for key, v in flatten(values).items() if isinstance(v, int | float) and v == v}


class Trackers:
    """The trackers of one run, given each record after metrics.jsonl has it; a context that closes them."""

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
                trackers[name] = TRACKERS.get(name)(tracked)
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
        for record in run.read_metrics() if replay else []:  # without histograms: those were in memory only
            opened.log(record, only=replay)
        return opened

    @property
    def histograms(self) -> bool:
        """Whether a tracker draws histograms (worth computing them for :meth:`log`)."""
        return any(tracker.histograms for tracker in self.trackers.values())

    def log(
        self, record: dict[str, Any], histograms: dict[str, np.ndarray] | None = None, only: set[str] | None = None
    ) -> None:
        """One record, and a step's histograms, to each tracker (or to those in ``only``) that has not had it.

        A tracker that fails is warned about, not the end of the run: metrics.jsonl has the record.
        """
        key = record_key(record)
        due = [name for name in only or self.trackers if key not in self.sent[name]]
        if not due:
            return
        values, histograms = scalars(record), histograms or {}
        for name in due:
            self.sent[name].add(key)
            tracker = self.trackers[name]
            try:
                tracker.log(values, histograms if tracker.histograms else {}, key[0])
            except Exception as exc:
                reporter().message(f"warning: {name} could not log step {key[0]}: {reason(exc)}")

    def close(self, failed: bool = False) -> None:
        for tracker in self.trackers.values():
            tracker.close(failed)
        self.trackers = {}

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(failed=kind is not None)
