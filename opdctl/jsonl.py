"""Reading JSON-lines files: a damaged line is skipped and listed, never taken for data nor the lines after it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class MetricsScan:
    """What metrics.jsonl holds: its records, and the lines that are not records."""

    records: list[dict[str, Any]] = field(default_factory=list)
    damaged: list[tuple[int, str]] = field(default_factory=list)  # (1-based line number, text)
    torn: bool = False  # the last line was cut short (a crash while it was appended)

    def note(self, path: Path) -> str | None:
        """A one-line warning about damaged lines, or None."""
        if not self.damaged:
            return None
        lines = ", ".join(str(n) for n, _ in self.damaged[:5]) + (" ..." if len(self.damaged) > 5 else "")
        plural = "s" if len(self.damaged) > 1 else ""
        return f"warning: {path} line{plural} {lines}: not a JSON record, skipped"


def scan_jsonl(path: Path) -> MetricsScan:
    """Every JSON-object line of ``path``; a damaged line is skipped and listed, never the lines after it."""
    scan = MetricsScan()
    if not path.is_file():
        return scan
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    last = len(lines) - 1  # the text after the final newline: empty unless a crash cut the line short
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            scan.records.append(record)
        elif number - 1 == last:
            scan.torn = True
        else:
            scan.damaged.append((number, line))
    return scan
