"""Per-step and whole-run drift statistics, computed from the trace files."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.compute as pc

from opdctl.analysis.reader import RunTraces
from opdctl.training.outcome import counter_totals, finish_totals

FULL_WEIGHT = 1.0 - 1e-6


@dataclass
class Counts:
    """Sums over traced tokens and rollouts, which add up across steps."""

    rollouts: int = 0
    tokens: int = 0
    overlap: float = 0.0
    bad: int = 0
    weight: float = 0.0
    full_weight: int = 0
    below: int = 0
    effective_length: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(**{k: getattr(self, k) + getattr(other, k) for k in asdict(self)})


@dataclass
class StepRow:
    """One line of the summary: a step or a range of steps."""

    first_step: int
    last_step: int
    rollouts: int
    tokens: int
    overlap: float
    bad_event_rate: float
    weight: float
    effective_length: float
    full_weight_share: float
    below_share: float
    max_len: tuple[int, int]
    hit_ratio: float | None = None
    tokens_generated: int | None = None
    tokens_not_generated: int | None = None
    finish: dict[str, int] = field(default_factory=dict)  # rollouts by finish reason
    step_seconds: float | None = None
    accuracy: dict[str, float] = field(default_factory=dict)


@dataclass
class RunSummary:
    run: str
    level: float
    rows: list[StepRow]
    totals: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "weight_level": self.level,
            "steps": [asdict(r) for r in self.rows],
            "totals": self.totals,
        }


def step_counts(traces: RunTraces, step: int, level: float, rollouts: int, effective_length: int) -> Counts:
    """Sums over one traced step's tokens (reads only the needed columns)."""
    table = traces.tokens(step, ["overlap", "bad", "weight"])
    weight = table["weight"]
    return Counts(
        rollouts=rollouts,
        tokens=table.num_rows,
        overlap=_sum(table["overlap"]),
        bad=int(_sum(pc.cast(table["bad"], "int64"))),
        weight=_sum(weight),
        full_weight=int(_sum(pc.cast(pc.greater_equal(weight, FULL_WEIGHT), "int64"))),
        below=int(_sum(pc.cast(pc.less(weight, level), "int64"))),
        effective_length=effective_length,
    )


def summarize(traces: RunTraces, level: float = 0.5, rows: int = 20) -> RunSummary:
    """Statistics per step, grouped into at most ``rows`` ranges, plus totals for the run."""
    per_step = (
        traces.rollouts(["step", "effective_length", "max_len"])
        .group_by("step")
        .aggregate([("effective_length", "sum"), ("effective_length", "count"), ("max_len", "max")])
        .to_pylist()
    )
    by_step = {r["step"]: r for r in per_step}
    counts = {
        s: step_counts(traces, s, level, by_step[s]["effective_length_count"], by_step[s]["effective_length_sum"])
        for s in traces.steps
    }
    max_len = {s: by_step[s]["max_len_max"] for s in traces.steps}
    metrics = {r["step"]: r for r in traces.metrics}
    groups = _group(traces.steps, rows)
    table = [_row(group, counts, max_len, metrics, traces.evals) for group in groups]
    total = sum(counts.values(), Counts())
    return RunSummary(str(traces.path), level, table, _totals(traces, total, level))


def _row(steps: list[int], counts: dict[int, Counts], max_len: dict[int, int], metrics: dict, evals: list) -> StepRow:
    c = sum((counts[s] for s in steps), Counts())
    records = [metrics[s] for s in range(steps[0], steps[-1] + 1) if s in metrics]
    hit = [r["hit_ratio"] for r in records if r.get("hit_ratio") is not None]
    seconds = [r["generate_seconds"] + r["score_seconds"] + r["update_seconds"] for r in records]
    accuracy = {
        e["eval"]: e["accuracy"] for e in evals if e["when"] != "teacher" and steps[0] <= e["step"] <= steps[-1]
    }
    lengths = [max_len[s] for s in steps]
    return StepRow(
        first_step=steps[0],
        last_step=steps[-1],
        rollouts=c.rollouts,
        tokens=c.tokens,
        overlap=_ratio(c.overlap, c.tokens),
        bad_event_rate=_ratio(c.bad, c.tokens),
        weight=_ratio(c.weight, c.tokens),
        effective_length=_ratio(c.effective_length, c.rollouts),
        full_weight_share=_ratio(c.full_weight, c.tokens),
        below_share=_ratio(c.below, c.tokens),
        max_len=(min(lengths), max(lengths)),
        hit_ratio=sum(hit) / len(hit) if hit else None,
        tokens_generated=sum(r["tokens_generated"] for r in records) if records else None,
        tokens_not_generated=sum(r.get("tokens_not_generated", 0) for r in records) if records else None,
        finish=finish_totals(records),
        step_seconds=sum(seconds) / len(seconds) if seconds else None,
        accuracy=accuracy,
    )


def _totals(traces: RunTraces, total: Counts, level: float) -> dict[str, Any]:
    metrics = traces.metrics
    finals = {}
    for record in traces.evals:
        key = "teacher" if record["when"] == "teacher" else record["when"]
        finals.setdefault(record["eval"], {})[key] = record["accuracy"]
    return {
        "traced_steps": len(traces.steps),
        "traced_rollouts": total.rollouts,
        "traced_tokens": total.tokens,
        "overlap": _ratio(total.overlap, total.tokens),
        "bad_event_rate": _ratio(total.bad, total.tokens),
        "weight": _ratio(total.weight, total.tokens),
        "effective_length": _ratio(total.effective_length, total.rollouts),
        "response_length": _ratio(total.tokens, total.rollouts),
        "full_weight_share": _ratio(total.full_weight, total.tokens),
        f"tokens_below_{level:g}": total.below,
        f"share_below_{level:g}": _ratio(total.below, total.tokens),
        "steps": len(metrics),
        **counter_totals(metrics),
        "finish": finish_totals(metrics),
        "seconds": metrics[-1]["elapsed_seconds"] if metrics else None,
        "seconds_per_step": metrics[-1]["elapsed_seconds"] / len(metrics) if metrics else None,
        "accuracy": finals,
    }


def _group(steps: list[int], rows: int) -> list[list[int]]:
    """Consecutive traced steps split into at most ``rows`` groups of nearly equal size."""
    size = -(-len(steps) // max(1, rows))
    return [steps[i : i + size] for i in range(0, len(steps), size)]


def _sum(values) -> float:
    result = pc.sum(values).as_py()
    return float(result) if result is not None else 0.0


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0
