"""An evaluation's output directory: its settings, every graded response, and the summary.

    OUTPUT/
      settings.json     what was evaluated and how (a resumed evaluation must match it)
      responses.jsonl   one line per (benchmark, problem, sample), appended and fsync'ed as graded
      summary.json      metrics per benchmark and overall, written at the end

Rerunning with the same output directory resumes: rows already in responses.jsonl
are skipped. A line cut short by a crash is dropped; a damaged line elsewhere is moved
to responses.jsonl.damaged and costs no other row. One process at a time writes the
directory (an OS lock on OUTPUT/.opdctl.lock, released when the process ends).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opdctl.errors import ConfigError
from opdctl.progress import reporter
from opdctl.runs.files import append_line, atomic_write, remove_leftovers
from opdctl.runs.jsonl import scan_jsonl
from opdctl.runs.ownership import DirLock, check_output, make_output

Row = dict[str, Any]


class EvalDir:
    """Read and write one evaluation's files."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.settings_path = self.path / "settings.json"
        self.responses_path = self.path / "responses.jsonl"
        self.summary_path = self.path / "summary.json"
        self.lock = DirLock(self.path)

    @classmethod
    def open(cls, path: Path, settings: dict[str, Any]) -> EvalDir:
        """A new output directory, or the one an earlier run with the same ``settings`` left (to resume it).

        The directory is locked until :meth:`close`; a run directory or a place inside one is refused.
        """
        check_output(path, "evaluation", "--output")
        out = cls(path)
        make_output(out.path, "--output")
        out.lock.acquire()
        try:
            if out.settings_path.is_file():
                out._check_same(json.loads(out.settings_path.read_text()), settings)
                remove_leftovers(out.path)
                out._tidy()
            else:
                atomic_write(out.settings_path, json.dumps(settings, indent=2) + "\n")
        except BaseException:
            out.lock.release()
            raise
        return out

    def close(self) -> None:
        self.lock.release()

    def _tidy(self) -> None:
        """Keep each valid row once; move damaged lines to responses.jsonl.damaged."""
        scan = scan_jsonl(self.responses_path)
        if scan.damaged:
            damaged = self.responses_path.with_name(self.responses_path.name + ".damaged")
            for _, line in scan.damaged:
                append_line(damaged, line)
            reporter().message(f"{scan.note(self.responses_path)} (kept in {damaged})")
        rows = self.rows()
        if len(rows) != len(scan.records) or scan.damaged or scan.torn:
            atomic_write(self.responses_path, "".join(json.dumps(row) + "\n" for row in rows))

    def _check_same(self, before: dict[str, Any], now: dict[str, Any]) -> None:
        """Refuse to resume with other settings, naming the first that differs (the benchmark list first)."""
        different = _first_difference(before, now, first="benchmarks")
        if different:
            raise ConfigError(
                f"{self.path} holds an evaluation with other settings ({different}): rerun with its settings "
                "to resume it, or choose another --output"
            )

    def rows(self) -> list[Row]:
        """Every complete response row, once per (benchmark, problem, sample); damaged lines are skipped."""
        rows, seen = [], set()
        for row in scan_jsonl(self.responses_path).records:
            key = (row.get("benchmark"), row.get("problem_id"), row.get("sample"))
            if None in key or key in seen:
                continue
            seen.add(key)
            rows.append(row)
        return rows

    def append(self, rows: list[Row]) -> None:
        """Append rows, each line flushed and fsync'ed before the next."""
        for row in rows:
            append_line(self.responses_path, json.dumps(row))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.summary_path, json.dumps(summary, indent=2) + "\n")


def _first_difference(before: dict[str, Any], now: dict[str, Any], first: str = "") -> str | None:
    """'key: value there, value now' for the first key whose values differ (``first`` checked first; a nested
    mapping names its own key: "benchmark x's prompt: ..."), else None."""
    for key in sorted(set(before) | set(now), key=lambda k: (k != first, k)):
        old, new = before.get(key), now.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            return f"{key}'s {_first_difference(old, new)}"
        return f"{key}: {_show(old)} there, {_show(new)} now"
    return None


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
