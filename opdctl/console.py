"""Terminal rendering for the CLI: progress bars, messages, result tables."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from opdctl.evaluation.metrics import BenchmarkScore

PIPED_WIDTH = 160  # wide enough for our tables when output goes to a file or a CI log


def _console(stream: TextIO, stderr: bool) -> Console:
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPED_WIDTH if piped else None)


console = _console(sys.stderr, stderr=True)  # progress, messages, errors
stdout = _console(sys.stdout, stderr=False)  # results


class RichReporter:
    """Progress bars and messages on stderr (stdout stays clean for --json output)."""

    def __init__(self) -> None:
        self.progress: Progress | None = None

    def message(self, text: str) -> None:
        (self.progress.console if self.progress else console).print(f"[dim]·[/dim] {text}")

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        """A progress bar; inside another task's bar it becomes a second line of the same display."""
        if self.progress is not None:
            yield from self._add_task(self.progress, description, total, transient=True)
            return
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self.progress = progress
        try:
            with progress:
                yield from self._add_task(progress, description, total, transient=False)
        finally:
            self.progress = None

    @staticmethod
    def _add_task(progress: Progress, description: str, total: int, transient: bool) -> Iterator[Callable[..., None]]:
        task_id = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: Any) -> None:
            info = "  ".join(f"{k} {v}" for k, v in fields.items())
            progress.update(task_id, advance=n, info=info)

        try:
            yield advance
        finally:
            if transient:
                progress.remove_task(task_id)


def summary_table(summary: dict[str, Any]) -> Table:
    """The end-of-run table: accuracy before/after (and the teacher's), tokens, lengths, time."""
    table = Table(title=f"opdctl run {summary['run_dir']}", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("value", justify="right")
    for bench, acc in summary["eval"].items():
        table.add_row(f"student accuracy on {bench}, before", _pct(acc["before"]))
        table.add_row(f"student accuracy on {bench}, after", _pct(acc["after"]))
        if acc.get("teacher") is not None:
            table.add_row(f"teacher accuracy on {bench}", _pct(acc["teacher"]))
    table.add_row("steps", str(summary["steps"]))
    table.add_row("tokens generated", f"{summary['tokens_generated']:,}")
    table.add_row("mean response length", _num(summary["mean_response_length"]))
    table.add_row("mean effective length", _num(summary["mean_effective_length"]))
    table.add_row("max response length at the end", str(summary["final_max_len"]))
    if summary.get("rollouts_stopped_on_drift"):
        stopped, rollouts = summary["rollouts_stopped_on_drift"], summary["rollouts"]
        table.add_row("rollouts stopped on drift", f"{stopped:,} of {rollouts:,} ({stopped / rollouts:.0%})")
        table.add_row("tokens not generated (drift stops)", f"{summary['tokens_not_generated']:,}")
        table.add_row("tokens generated past a stop and discarded", f"{summary['tokens_discarded']:,}")
    if summary["skipped_steps"]:
        table.add_row("skipped (non-finite) steps", str(summary["skipped_steps"]))
    table.add_row("training time", f"{summary['seconds']:.0f} s")
    return table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def eval_table(title: str, scores: list[BenchmarkScore], total: BenchmarkScore, n: int) -> Table:
    """Per-benchmark metrics and their unweighted mean: avg@n, pass@k, maj@n, lengths, truncation."""
    ks = sorted(total.pass_at)
    context = any(s.over_context for s in scores)
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, padding=0)
    names = [s.name for s in [*scores, total]]
    table.add_column("benchmark", no_wrap=True, min_width=max(map(len, names)))
    headers = ["problems", f"avg@{n}", *(f"pass@{k}" for k in ks), f"maj@{n}", "length", "truncated"]
    for header in [*headers, *(["no room"] if context else [])]:
        table.add_column(header, justify="right", no_wrap=True)
    for row, score in enumerate([*scores, total]):
        cells = [
            score.name,
            str(score.problems),
            _pct(score.accuracy),
            *(_pct(score.pass_at[k]) for k in ks),
            _pct(score.majority),
            _num(score.mean_length),
            _pct(score.truncated),
            *([_pct(score.over_context)] if context else []),
        ]
        table.add_row(*cells, end_section=row == len(scores) - 1, style="bold" if row == len(scores) else None)
    return table
