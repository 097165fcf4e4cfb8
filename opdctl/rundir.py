"""The run directory: its layout, atomic writes, metrics, traces and checkpoints.

    RUN_DIR/
      config.yaml              the resolved config
      metrics.jsonl            one JSON object per step (and eval records)
      traces/tokens/step_NNNNNN.parquet     per traced token
      traces/rollouts/step_NNNNNN.parquet   per traced rollout
      checkpoints/step_NNNNNN/  HF model + tokenizer, optimizer.pt, trainer_state.json
      summary.json             written when the run ends

Every file appears whole or not at all: it is written beside its final name
and renamed into place; checkpoints are complete directories renamed likewise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from opdctl.checkpoint import STATE_FILE
from opdctl.errors import RunError

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{6,})$")
TRACE_PATTERN = re.compile(r"^step_(\d{6,})\.parquet$")


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """A staging directory that becomes ``path`` only if the block finishes."""
    staging = path.with_name(f".{path.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staging, path)


def step_name(step: int) -> str:
    return f"step_{step:06d}"


class RunDir:
    """Read and write one run's files."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.traces_path = self.path / "traces"
        self.checkpoints_path = self.path / "checkpoints"
        self.summary_path = self.path / "summary.json"
        self.on_metrics: list[Callable[[dict[str, Any]], None]] = []  # told of every record appended

    @staticmethod
    def refuse_existing(path: Path) -> None:
        if (Path(path) / "config.yaml").exists():
            raise RunError(
                f"{path} already holds a run: continue it with --resume {path}, or set output.dir to a new directory"
            )

    @classmethod
    def create(cls, path: Path, config_yaml: str) -> RunDir:
        """A new run directory; refuses to reuse one that already holds a run."""
        cls.refuse_existing(path)
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(config_yaml)
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run directory; a directory that is not one gets a clear error."""
        run = cls(path)
        if not run.path.is_dir():
            raise RunError(f"run directory not found: {path}")
        if not run.config_path.is_file():
            raise RunError(f"{path} is not an opdctl run directory (it has no config.yaml)")
        return run

    def write_config(self, config_yaml: str) -> None:
        atomic_write(self.config_path, config_yaml)

    # metrics ---------------------------------------------------------------

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line, make it durable, then pass the record on (to experiment trackers)."""
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        for listener in self.on_metrics:
            listener(record)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete metrics record (a line cut short by a crash is ignored)."""
        if not self.metrics_path.is_file():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return records

    def rewind(self, step: int) -> None:
        """Forget metrics and traces of steps after ``step`` (a resume continues from there)."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        for table in ("tokens", "rollouts"):
            for path in self.trace_files(table):
                if trace_step(path) > step:
                    path.unlink()

    # traces ----------------------------------------------------------------

    def write_traces(self, step: int, tokens: pa.Table, rollouts: pa.Table) -> None:
        """Rollout table first: a token file never exists without its rollout file."""
        for table, data in (("rollouts", rollouts), ("tokens", tokens)):
            path = self.traces_path / table / f"{step_name(step)}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            os.close(fd)
            try:
                pq.write_table(data, tmp, compression="zstd")
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def trace_files(self, table: str) -> list[Path]:
        directory = self.traces_path / table
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.iterdir() if TRACE_PATTERN.match(p.name))

    # checkpoints -----------------------------------------------------------

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first."""
        if not self.checkpoints_path.is_dir():
            return []
        found = []
        for path in self.checkpoints_path.iterdir():
            match = CHECKPOINT_PATTERN.match(path.name)
            if match and (path / STATE_FILE).is_file():
                found.append((int(match.group(1)), path))
        return sorted(found)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self, step: int, write: Callable[[Path], None], keep: int | None) -> Path:
        """Write a checkpoint through ``write(staging_dir)``, then drop all but the newest ``keep``."""
        path = self.checkpoints_path / step_name(step)
        with atomic_directory(path) as staging:
            write(staging)
        if keep is not None:
            for _, old in self.checkpoints()[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.summary_path, json.dumps(summary, indent=2) + "\n")


def trace_step(path: Path) -> int:
    match = TRACE_PATTERN.match(path.name)
    if not match:
        raise ValueError(f"not a trace file: {path}")
    return int(match.group(1))
