"""The run directory: its layout, metrics, traces and checkpoints.

    RUN_DIR/
      config.yaml              the resolved config
      metrics.jsonl            one JSON object per step (and eval records)
      traces/tokens/step_NNNNNN.parquet     per traced token
      traces/rollouts/step_NNNNNN.parquet   per traced rollout
      checkpoints/step_NNNNNN/  HF model + tokenizer, optimizer.pt, trainer_state.json, manifest.json
      summary.json             written when the run ends
      changes.jsonl            what each resume changed in the config, from which step
      .opdctl.lock             held (flock) by the one process that writes the run

Every file appears whole or not at all: it is written beside its final name
and renamed into place (:mod:`opdctl.runs.files`); checkpoints are complete directories
renamed likewise, and their manifest (every file and its size, written last) tells a
complete checkpoint from a damaged one (:mod:`opdctl.runs.checkpoint`). A line of
metrics.jsonl that does not parse is skipped by readers, never taken for data, and
never costs the lines after it (:mod:`opdctl.runs.jsonl`). The lock and the checks of an
output place are :mod:`opdctl.runs.ownership`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from opdctl.errors import RunError
from opdctl.runs.checkpoint import checkpoint_problem, write_manifest
from opdctl.runs.files import append_line, atomic_directory, atomic_write, disk_full, replaced_atomically
from opdctl.runs.jsonl import MetricsScan, scan_jsonl
from opdctl.runs.ownership import KIND_NAMES, LOCK_FILE, DirLock, check_output, directory_kind, make_output

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{6,})$")
TRACE_PATTERN = re.compile(r"^step_(\d{6,})\.parquet$")


def step_name(step: int) -> str:
    return f"step_{step:06d}"


class RunDir:
    """Read and write one run's files; the process that writes holds the directory's lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.traces_path = self.path / "traces"
        self.checkpoints_path = self.path / "checkpoints"
        self.summary_path = self.path / "summary.json"
        self.changes_path = self.path / "changes.jsonl"
        self.lock = DirLock(self.path)
        self._created = False

    @staticmethod
    def refuse_existing(path: Path) -> None:
        DirLock(path).refuse_if_held()
        if (Path(path) / "config.yaml").exists():
            raise RunError(
                f"{path} already holds a run: continue it with --resume {path}, or set output.dir to a new directory"
            )

    @classmethod
    def claim(cls, path: Path, unique: bool = False) -> RunDir:
        """The directory of a new run, created (if need be) and locked before anything is written into it.

        With ``unique`` (a ``{timestamp}`` name) a taken name gets a suffix (-2, -3, ...) instead of a refusal,
        so two launches in the same second never share a directory.
        """
        path = Path(path)
        check_output(path, "run", "output.dir")
        if not unique:
            cls.refuse_existing(path)
        for attempt in range(1, 1000):
            candidate = path if attempt == 1 else path.with_name(f"{path.name}-{attempt}")
            created = not candidate.exists()
            try:
                make_output(candidate, "output.dir", exist_ok=not unique)
            except FileExistsError:
                continue
            break
        run = cls(candidate)
        run.lock.acquire()
        run._created = created
        if directory_kind(run.path) is not None or run.config_path.exists():
            run.lock.release()
            cls.refuse_existing(run.path)
        return run

    @classmethod
    def create(cls, path: Path, config_yaml: str) -> RunDir:
        """A new run directory holding ``config_yaml``, locked by this process until ``lock.release()``."""
        run = cls.claim(path)
        run.write_config(config_yaml)
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run directory; a directory that is not one gets a clear error."""
        run = cls(path)
        if run.path.is_file():
            raise RunError(f"{path} is a file: pass a run directory, one that opdctl train wrote")
        if not run.path.is_dir():
            raise RunError(f"run directory not found: {path}")
        if not run.config_path.is_file():
            kind = directory_kind(run.path)
            what = KIND_NAMES[kind] if kind else "not an opdctl run directory (it has no config.yaml)"
            raise RunError(f"{path} is {what}: pass a run directory, one that opdctl train wrote")
        return run

    def abandon(self) -> None:
        """Let go of a run that failed to start: unlock, and remove the directory if this process made it empty."""
        self.lock.release()
        if self._created and {p.name for p in self.path.iterdir()} <= {LOCK_FILE}:
            shutil.rmtree(self.path, ignore_errors=True)

    def write_config(self, config_yaml: str) -> None:
        atomic_write(self.config_path, config_yaml)

    # metrics ---------------------------------------------------------------

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line and make it durable."""
        append_line(self.metrics_path, json.dumps(record))

    def scan_metrics(self) -> MetricsScan:
        """metrics.jsonl's records, one per step (and per evaluation of a step), and its damaged lines."""
        return scan_jsonl(self.metrics_path, key=_record_key)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every metrics record (damaged lines and a line cut short by a crash are skipped)."""
        return self.scan_metrics().records

    def rewind(self, step: int) -> list[str]:
        """Forget metrics and traces of steps after ``step`` (a resume continues from there).

        Damaged lines move to metrics.jsonl.damaged; every valid record up to ``step`` stays.
        Returns one-line notes on what was damaged and which steps have no record.
        """
        scan = self.scan_metrics()
        kept = [r for r in scan.records if _step_of(r) <= step]
        notes = []
        if scan.damaged:
            damaged_path = self.metrics_path.with_name(self.metrics_path.name + ".damaged")
            for _, line in scan.damaged:
                append_line(damaged_path, line)
            numbers = ", ".join(str(n) for n, _ in scan.damaged)
            notes.append(f"metrics.jsonl line(s) {numbers} damaged: moved to {damaged_path.name}")
        if scan.repeated:
            notes.append(f"metrics.jsonl {scan.repeated_note()}: dropped")
        if len(kept) != len(scan.records) or scan.damaged or scan.torn or scan.repeated:
            atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        logged = {_step_of(r) for r in kept if "eval" not in r}
        missing = [s for s in range(1, step + 1) if s not in logged]
        if missing:
            notes.append(f"no record of step {_ranges(missing)} in metrics.jsonl (trained, but its metrics are lost)")
        for table in ("tokens", "rollouts"):
            for path in self.trace_files(table):
                if trace_step(path) > step:
                    path.unlink()
        return notes

    # traces ----------------------------------------------------------------

    def write_traces(self, step: int, tokens: pa.Table, rollouts: pa.Table) -> None:
        """Rollout table first: a token file never exists without its rollout file."""
        for table, data in (("rollouts", rollouts), ("tokens", tokens)):
            with replaced_atomically(self.traces_path / table / f"{step_name(step)}.parquet") as tmp:
                pq.write_table(data, tmp, compression="zstd")

    def trace_files(self, table: str) -> list[Path]:
        directory = self.traces_path / table
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.iterdir() if TRACE_PATTERN.match(p.name))

    # checkpoints -----------------------------------------------------------

    def all_checkpoints(self) -> list[tuple[int, Path]]:
        """Every checkpoint directory, complete or not, oldest first."""
        if not self.checkpoints_path.is_dir():
            return []
        found = []
        for path in self.checkpoints_path.iterdir():
            match = CHECKPOINT_PATTERN.match(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
        return sorted(found)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first."""
        return [(step, path) for step, path in self.all_checkpoints() if checkpoint_problem(path) is None]

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self, step: int, write: Callable[[Path], None], keep: int | None) -> Path:
        """Write a checkpoint through ``write(staging_dir)``, then drop all but the newest ``keep``."""
        path = self.checkpoints_path / step_name(step)
        with atomic_directory(path) as staging:
            try:
                write(staging)
            except Exception as exc:  # torch and safetensors report a full disk as their own errors
                if isinstance(exc, OSError) or not disk_full(staging):
                    raise
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging)) from exc
            write_manifest(staging)
        if keep is not None:
            for _, old in self.checkpoints()[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def record_changes(self, step: int, changes: dict[str, tuple[Any, Any]]) -> None:
        """Log that the config changed (key: (before, after)) for the steps after ``step``."""
        entry = {"from_step": step + 1, "changes": {key: {"before": b, "after": a} for key, (b, a) in changes.items()}}
        append_line(self.changes_path, json.dumps(entry))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.summary_path, json.dumps(summary, indent=2) + "\n")


def _record_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a metrics record one of a kind: its step, and for an evaluation the benchmark and when."""
    return (_step_of(record), record.get("eval"), record.get("when"))


def _step_of(record: dict[str, Any]) -> int:
    step = record.get("step", 0)
    return step if isinstance(step, int) else 0


def _ranges(values: list[int]) -> str:
    """'2, 5-7' for a sorted list of integers."""
    parts: list[str] = []
    for value in values:
        if parts and int(parts[-1].split("-")[-1]) == value - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{value}"
        else:
            parts.append(str(value))
    return ", ".join(parts)


def trace_step(path: Path) -> int:
    match = TRACE_PATTERN.match(path.name)
    if not match:
        raise ValueError(f"not a trace file: {path}")
    return int(match.group(1))
