"""Lazy access to what a run recorded: metrics, and parquet traces one step at a time.

Trace files appear atomically (rollouts first, then tokens), so a run that is
still going can be read: a step counts once its token file exists. A damaged trace
file or metrics line leaves out that step or record only, with a warning naming it.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from opdctl.errors import RunError, reason
from opdctl.runs.rundir import RunDir, trace_step


class RunTraces:
    """One run's metrics and traces."""

    def __init__(self, path: Path, steps: tuple[int, int] | None = None) -> None:
        self.run = RunDir.open(Path(path))
        self.path = self.run.path
        self.warnings: list[str] = []
        files = {trace_step(p): p for p in self.run.trace_files("tokens")}
        rollouts = {trace_step(p): p for p in self.run.trace_files("rollouts")}
        paired = [s for s in sorted(files) if s in rollouts and _in(s, steps)]
        self.files = {s: files[s] for s in paired if self._readable(files[s], rollouts[s])}
        self.rollout_files = {s: rollouts[s] for s in self.files}
        scan = self.run.scan_metrics()
        self._records = scan.records
        note = scan.note(self.run.metrics_path)
        if note:
            self.warnings.append(note)
        self._tokenizer = None
        if not self.files:
            raise RunError(self._no_traces(steps, sorted(files)))

    def _no_traces(self, steps: tuple[int, int] | None, traced: list[int]) -> str:
        if steps and traced:
            return f"{self.path} has no traces in steps {steps[0]}-{steps[1]} (traced: steps {traced[0]}-{traced[-1]})"
        every = self._configured("output", "trace_every")
        if isinstance(every, int) and every > 0 and self.metrics:
            found = "damaged" if traced else "missing"
            return (f"{self.path} has no readable traces: its traces/ files are {found}, though the run recorded them "
                    f"(output.trace_every={every}); restore them from a copy of the run")  # fmt: skip
        return f"{self.path} has no traces (runs record them when output.trace_every > 0)"

    def _configured(self, section: str, key: str) -> Any:
        """A value of the run's config.yaml (None if it cannot be read)."""
        import yaml

        try:
            return (yaml.safe_load(self.run.config_path.read_text()) or {}).get(section, {}).get(key)
        except (OSError, yaml.YAMLError, AttributeError):
            return None

    def _readable(self, *paths: Path) -> bool:
        """Whether both trace files of a step open as parquet (else a warning names the damaged one)."""
        for path in paths:
            try:
                pq.read_metadata(path)
            except (OSError, pa.ArrowException) as exc:
                if path.exists():  # a file removed under us (a resume rewinding) is no damage
                    self.warnings.append(
                        f"warning: {path} is damaged ({reason(exc, limit=80)}): step {trace_step(path)} left out"
                    )
                return False
        return True

    @property
    def steps(self) -> list[int]:
        return list(self.files)

    def tokens(self, step: int, columns: list[str] | None = None) -> pa.Table:
        """The traced tokens of one step (only the columns asked for)."""
        return pq.read_table(self.files[step], columns=columns)

    def rollouts(self, columns: list[str] | None = None) -> pa.Table:
        """One row per traced rollout of every traced step (no per-token data)."""
        return ds.dataset(list(map(str, self.rollout_files.values())), format="parquet").to_table(columns=columns)

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        return [r for r in self._records if "eval" not in r]

    @cached_property
    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self._records if "eval" in r]

    def rollout(self, step: int, rollout: int) -> tuple[dict[str, Any], pa.Table]:
        """One rollout's row and its tokens in position order."""
        if step not in self.files:
            raise RunError(f"step {step} was not traced in {self.path} (traced steps: {_ranges(self.steps)})")
        table = pq.read_table(self.rollout_files[step])
        rows = table.filter(pc.field("rollout") == rollout).to_pylist()
        if not rows:
            traced = table["rollout"].to_pylist()
            raise RunError(f"rollout {rollout} of step {step} was not traced (traced: {_ranges(traced)})")
        tokens = self.tokens(step).filter(pc.field("rollout") == rollout).sort_by("position")
        return rows[0], tokens

    def tokenizer(self):
        """The student's tokenizer, from the newest checkpoint or the configured model (loaded once).

        A live run may rotate a checkpoint away while it is read: the next one down is tried.
        """
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        from opdctl.models.sources import resolve_model

        for _, checkpoint in reversed(self.run.checkpoints()):
            try:
                return AutoTokenizer.from_pretrained(checkpoint)
            except (OSError, ValueError):
                continue
        return AutoTokenizer.from_pretrained(resolve_model(self._configured("student", "model")))


def _in(step: int, window: tuple[int, int] | None) -> bool:
    return window is None or window[0] <= step <= window[1]


def _ranges(values: list[int]) -> str:
    """'1-4, 7, 9-10' for a sorted list of integers."""
    values = sorted(set(values))
    if not values:
        return "none"
    parts, start, prev = [], values[0], values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)
