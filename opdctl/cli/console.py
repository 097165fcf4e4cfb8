"""Terminal rendering for the CLI: progress bars, messages, result tables."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from opdctl.errors import OpdctlError
from opdctl.evaluation.metrics import BenchmarkScore
from opdctl.progress import LineReporter, Reporter

if TYPE_CHECKING:
    from opdctl.tools.calibrate import Calibration
    from opdctl.tools.sft import SFTResult, SFTSettings
    from opdctl.tools.shrink import ShrinkResult

PIPED_WIDTH = 160  # wide enough for our tables when output goes to a file or a CI log


def _console(stream: TextIO, stderr: bool) -> Console:
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPED_WIDTH if piped else None)


console = _console(sys.stderr, stderr=True)  # progress, messages, errors
stdout = _console(sys.stdout, stderr=False)  # results


def cli_reporter() -> Reporter:
    """Progress bars on a terminal; plain progress lines in a log (nohup, a batch scheduler, ``| tee``)."""
    return RichReporter() if console.is_terminal else LineReporter(sys.stderr)


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


def _accuracy(accuracy: float | None, unanswered: float | None) -> str:
    return _pct(accuracy) + (f" ({_pct(unanswered)} unanswered)" if unanswered is not None else "")


def summary_table(summary: dict[str, Any]) -> Table:
    """The end-of-run table: accuracy before/after (and the teacher's), held-out reverse KL, tokens, lengths, time."""
    table = Table(title=f"opdctl run {summary['run_dir']}", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("value", justify="right")
    for bench, acc in summary["eval"].items():
        unanswered = summary.get("eval_unanswered", {}).get(bench, {})
        table.add_row(f"student accuracy on {bench}, before", _accuracy(acc["before"], unanswered.get("before")))
        table.add_row(f"student accuracy on {bench}, after", _accuracy(acc["after"], unanswered.get("after")))
        if acc.get("teacher") is not None:
            table.add_row(f"teacher accuracy on {bench}", _accuracy(acc["teacher"], unanswered.get("teacher")))
    for bench, kl in summary.get("eval_reverse_kl", {}).items():
        before, after = (_num(kl[when], ".3f") for when in ("before", "after"))
        table.add_row(f"student reverse KL to the teacher on {bench}", f"{before} -> {after}")
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
    if summary.get("drift_checks"):
        table.add_row("drift checks (the teacher scored a chunk)", f"{summary['drift_checks']:,}")
    if summary["skipped_steps"]:
        table.add_row("skipped (non-finite) steps", str(summary["skipped_steps"]))
    cpu = f", {summary['cpu_seconds']:.0f} s of CPU" if summary.get("cpu_seconds") else ""
    table.add_row("training time", f"{summary['seconds']:.0f} s{cpu}")
    if "cpu_threads" in summary:
        table.add_row("CPU threads", _threads(summary["cpu_threads"]))
    return table


def _threads(setting: dict[str, Any]) -> str:
    """'2, waiting threads sleep (why)' or '2, waiting threads spin, then sleep (why)'."""
    waiting = {"PASSIVE": "sleep", "ACTIVE": "spin"}.get(setting["wait_policy"], "spin, then sleep")
    return f"{setting['threads']}, waiting threads {waiting} ({setting['why']})"


def sft_table(model: str, out: Path, settings: SFTSettings, report: SFTResult) -> Table:
    """What ``opdctl sft`` trained and how the loss went."""
    table = Table(title=f"{model} fine-tuned into {out}", header_style="bold")
    table.add_column("")
    table.add_column("value", justify="right")
    how = f"LoRA rank {settings.lora_rank}" if settings.lora_rank else "full fine-tuning"
    table.add_row("trained", f"{report.trainable_parameters / 1e6:.1f}M parameters ({how})")
    table.add_row("data", ", ".join(settings.data))
    table.add_row("steps x examples", f"{report.steps} x {settings.batch_size} ({report.examples:,} examples)")
    if report.losses:
        tenth = max(1, len(report.losses) // 10)
        first, last = report.losses[:tenth], report.losses[-tenth:]
        table.add_row("loss, first / last tenth", f"{_mean(first):.3f} / {_mean(last):.3f}")
    table.add_row("time", f"{report.seconds:.0f} s")
    return table


def _mean(losses: list[tuple[int, float]]) -> float:
    return sum(loss for _, loss in losses) / len(losses)


def shrink_table(model: str, out: Path, report: ShrinkResult) -> Table:
    """What ``opdctl shrink`` built and what it cost in KL to the teacher."""
    table = Table(title=f"student of {model} in {out}", header_style="bold")
    table.add_column("")
    table.add_column("value", justify="right")
    kept = len(report.kept_layers)
    table.add_row("layers kept", f"{kept} of {kept + len(report.dropped_layers)}")
    table.add_row("layers dropped", ", ".join(map(str, report.dropped_layers)))
    table.add_row("parameters", f"{report.parameters_after / 1e6:.1f}M of {report.parameters_before / 1e6:.1f}M")
    table.add_row("KL(teacher || student) after dropping", f"{report.kl_dropped:.3f}")
    table.add_row("KL(teacher || student) after the warm-up", f"{report.kl_warmed:.3f}")
    table.add_row("KL(student || teacher) after dropping", f"{report.reverse_kl_dropped:.3f}")
    table.add_row("KL(student || teacher) after the warm-up", f"{report.reverse_kl_warmed:.3f}")
    table.add_row("time", f"{report.seconds:.0f} s")
    return table


def calibration_tables(result: Calibration) -> list[Table]:
    """Every signal's bad-event rates on both texts, then the configured signal's histogram."""
    from opdctl.tools.calibrate import DEFAULT_THRESHOLDS, choose_threshold

    counts = [text.values(result.signal).numel() for text in (result.teacher_text, result.student_text)]
    title = f"bad-event rates on {counts[0]:,} tokens of teacher text and {counts[1]:,} of student rollouts"
    rates = Table(title=title, header_style="bold")
    for header in ("signal", "default threshold", "teacher text", "student text", f"threshold for {result.target:.0%}",
                   "teacher text", "student text"):  # fmt: skip
        rates.add_column(header, justify="right" if header != "signal" else "left")
    for signal in result.signals():
        teacher, student = result.teacher_text.values(signal), result.student_text.values(signal)
        paper = DEFAULT_THRESHOLDS[signal.metric]
        try:
            own = choose_threshold(signal, teacher, result.target)
            calibrated = [f"{own:.3g}", _pct(signal.bad_rate(teacher, own)), _pct(signal.bad_rate(student, own))]
        except OpdctlError:
            calibrated = ["unreachable", "-", "-"]
        style = "bold" if signal == result.signal else None
        row = [signal.name, f"{paper:g}", _pct(signal.bad_rate(teacher, paper)), _pct(signal.bad_rate(student, paper))]
        rates.add_row(*row, *calibrated, style=style)
    detectors = _detection_table(result)
    return [rates, _histogram(result), *([detectors] if detectors else [])]


def _detection_table(result: Calibration) -> Table | None:
    """Each signal, at the paper's threshold and at its own calibrated one, as a detector of the student's first
    wrong number (only when the prompts came with worked solutions)."""
    from opdctl.tools.calibrate import DEFAULT_THRESHOLDS, choose_threshold

    if result.first_errors is None:
        return None
    with_error = sum(e is not None for e in result.first_errors)
    tokens = int(result.student_text.rollouts.mask.sum())
    late = result.detection(result.signal, result.threshold).tokens_after / max(tokens, 1)
    table = Table(title=f"drift signals against the first wrong number ({with_error} of {len(result.first_errors)} "
                  f"student rollouts have one; {_pct(late)} of their tokens come at or after it, the precision of a "
                  "signal that fires at random)", header_style="bold")  # fmt: skip
    for header in ("signal", "threshold", "bad events before", "after", "precision", "recall", "rollouts found",
                   "median delay (tokens)"):  # fmt: skip
        table.add_column(header, justify="right" if header != "signal" else "left")
    for signal in result.signals():
        thresholds = {f"{DEFAULT_THRESHOLDS[signal.metric]:g} (default)": DEFAULT_THRESHOLDS[signal.metric]}
        try:
            own = choose_threshold(signal, result.teacher_text.values(signal), result.target)
            thresholds[f"{own:.3g}"] = own
        except OpdctlError:
            pass
        for label, threshold in thresholds.items():
            found = result.detection(signal, threshold)
            table.add_row(signal.name, label, f"{found.before:,}", f"{found.after:,}", _pct(found.precision),
                          _pct(found.recall), _pct(found.found_share), _num(found.median_delay),
                          style="bold" if signal == result.signal else None)  # fmt: skip
    return table


def _histogram(result: Calibration, bins: int = 10) -> Table:
    import torch

    signal = result.signal
    teacher, student = result.teacher_text.values(signal), result.student_text.values(signal)
    table = Table(title=f"{signal.name}: chosen threshold {result.threshold:.4g} ({_pct(result.teacher_rate)} of "
                  f"teacher tokens, {_pct(result.student_rate)} of student tokens are bad events)",
                  header_style="bold")  # fmt: skip
    for header in ("value", "teacher text", "", "student text", ""):
        table.add_column(header)
    edges = torch.linspace(0, 1, bins + 1)
    for low, high in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        last = high >= 1.0
        cells = []
        for values in (teacher, student):
            inside = (values >= low) & ((values <= high) if last else (values < high))
            share = float(inside.float().mean()) if values.numel() else 0.0
            cells += [_pct(share), "█" * round(share * 40)]
        table.add_row(f"{low:.1f}-{high:.1f}", *cells)
    if not signal.bad_below:
        outside = [_pct(float(torch.isinf(v).float().mean())) if v.numel() else "-" for v in (teacher, student)]
        table.add_row("not in top-k", outside[0], "", outside[1], "")
    return table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def eval_table(title: str, scores: list[BenchmarkScore], total: BenchmarkScore, n: int) -> Table:
    """Per-benchmark metrics and their unweighted mean: avg@n, pass@k, maj@n, lengths, truncation, no answer."""
    ks = sorted(total.pass_at)
    context = any(s.over_context for s in scores)
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, padding=0)
    names = [s.name for s in [*scores, total]]
    table.add_column("benchmark", no_wrap=True, min_width=max(map(len, names)))
    headers = ["problems", f"avg@{n}", *(f"pass@{k}" for k in ks), f"maj@{n}", "length", "truncated", "no answer"]
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
            _pct(score.no_answer),
            *([_pct(score.over_context)] if context else []),
        ]
        table.add_row(*cells, end_section=row == len(scores) - 1, style="bold" if row == len(scores) else None)
    return table
