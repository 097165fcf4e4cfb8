"""An evaluation's output directory: its settings, every graded response, and the summary.

    OUTPUT/
      settings.json     what was evaluated and how (a resumed evaluation must match it)
      responses.jsonl   one line per (benchmark, problem, sample), appended and fsync'ed as graded
      summary.json      metrics per benchmark and overall, written at the end

Rerunning with the same output directory resumes: rows already in responses.jsonl
are skipped. A line cut short by a crash is dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from opdctl.errors import ConfigError
from opdctl.rundir import atomic_write

Row = dict[str, Any]


class EvalDir:
    """Read and write one evaluation's files."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.settings_path = self.path / "settings.json"
        self.responses_path = self.path / "responses.jsonl"
        self.summary_path = self.path / "summary.json"

    @classmethod
    def open(cls, path: Path, settings: dict[str, Any]) -> EvalDir:
        """A new output directory, or the one an earlier run with the same ``settings`` left (to resume it)."""
        out = cls(path)
        if out.settings_path.is_file():
            out._check_same(json.loads(out.settings_path.read_text()), settings)
            atomic_write(out.responses_path, "".join(json.dumps(row) + "\n" for row in out.rows()))
        else:
            out.path.mkdir(parents=True, exist_ok=True)
            atomic_write(out.settings_path, json.dumps(settings, indent=2) + "\n")
        return out

    def _check_same(self, before: dict[str, Any], now: dict[str, Any]) -> None:
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                raise ConfigError(
                    f"{self.path} holds an evaluation with other settings ({key}: {_show(before.get(key))} there, "
                    f"{_show(now.get(key))} now): rerun with its settings to resume it, or choose another --output"
                )

    def rows(self) -> list[Row]:
        """Every complete response row (a last line cut short by a crash is ignored)."""
        if not self.responses_path.is_file():
            return []
        rows = []
        for line in self.responses_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return rows

    def append(self, rows: list[Row]) -> None:
        """Append rows, each line flushed and fsync'ed before the next."""
        with open(self.responses_path, "a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.summary_path, json.dumps(summary, indent=2) + "\n")


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
