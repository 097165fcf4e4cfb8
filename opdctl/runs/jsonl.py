"""Reading JSON-lines files: a damaged line is skipped and listed, never taken for data nor the lines after it;
a record repeated under the same key is kept once."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class MetricsScan:
    """What metrics.jsonl holds: its records, and the lines that are not records."""

    records: list[dict[str, Any]] = field(default_factory=list)
    damaged: list[tuple[int, str]] = field(default_factory=list)  # (1-based line number, text)
    torn: bool = False  # the last line was cut short (a crash while it was appended)
    repeated: list[int] = field(default_factory=list)  # 1-based lines whose record a later line repeats

    def note(self, path: Path) -> str | None:
        """A one-line warning about damaged and repeated lines, or None."""
        parts = []
        if self.damaged:
            parts.append(f"{line_numbers([n for n, _ in self.damaged])}: not a JSON record, skipped")
        if self.repeated:
            parts.append(f"{self.repeated_note()}, skipped")
        return f"warning: {path} {'; '.join(parts)}" if parts else None

    def repeated_note(self) -> str:
        return f"{line_numbers(self.repeated)}: repeated by a later record of the same step"


def line_numbers(numbers: list[int]) -> str:
    """'line 4' or 'lines 4, 9, ...' (at most five shown)."""
    shown = ", ".join(str(n) for n in numbers[:5]) + (" ..." if len(numbers) > 5 else "")
    return f"line{'s' if len(numbers) > 1 else ''} {shown}"


def scan_jsonl(path: Path, key: Callable[[dict[str, Any]], Hashable] | None = None) -> MetricsScan:
    """Every JSON-object line of ``path``; a damaged line is skipped and listed, never the lines after it.

    With ``key``, records with the same key are kept once (the last), and the lines dropped are listed."""
    scan = MetricsScan()
    if not path.is_file():
        return scan
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    last = len(lines) - 1  # the text after the final newline: empty unless a crash cut the line short
    found: dict[Hashable, tuple[int, dict[str, Any]]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            slot = key(record) if key else number
            if slot in found:
                scan.repeated.append(found.pop(slot)[0])
            found[slot] = (number, record)
        elif number - 1 == last:
            scan.torn = True
        else:
            scan.damaged.append((number, line))
    scan.records = [record for _, record in sorted(found.values(), key=lambda item: item[0])]
    scan.repeated.sort()
    return scan
