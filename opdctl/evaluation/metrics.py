"""Benchmark metrics from graded responses: avg@n, unbiased pass@k, maj@n, lengths and truncation."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

CORRECT = object()  # the vote of every correct answer: they are all equal to the gold one
OVER_CONTEXT = "context"  # finish reason of a problem whose prompt leaves no room in the model's context


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021).

    Computed as a product of ratios, which stays exact for large n where the binomials overflow.
    """
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_correct(votes: Iterable[tuple[str | None, bool]]) -> bool:
    """Whether the most common answer is right, from (voting key, correct) per sample.

    Correct answers vote together; wrong ones by their key (math-verify's canonical form);
    responses without an answer do not vote. A tie goes to the answer seen first.
    """
    counts = Counter(CORRECT if correct else key for key, correct in votes if key is not None)
    return bool(counts) and counts.most_common(1)[0][0] is CORRECT


@dataclass
class BenchmarkScore:
    """One benchmark's results (or the mean over benchmarks, for the ``overall`` row)."""

    name: str
    problems: int
    samples: int
    accuracy: float  # avg@n: mean correctness over all samples, the paper's metric
    mean_length: float  # tokens per response
    truncated: float  # share of responses cut at the length limit
    majority: float = 0.0  # maj@n: share of problems whose most common answer is right
    pass_at: dict[int, float] = field(default_factory=dict)  # k -> unbiased pass@k
    no_answer: float = 0.0  # share of responses without a \boxed{} answer
    over_context: float = 0.0  # share of responses not generated: the prompt left no room in the model's context

    def to_dict(self) -> dict[str, Any]:
        """Flat, for metrics.jsonl and summary.json: pass@k as "pass@4", maj@n as "maj@16" (n per problem)."""
        n = self.samples // self.problems if self.problems else 0
        return {
            "problems": self.problems,
            "samples": self.samples,
            "accuracy": self.accuracy,
            f"maj@{n}": self.majority,
            **{f"pass@{k}": value for k, value in sorted(self.pass_at.items())},
            "mean_length": self.mean_length,
            "truncated": self.truncated,
            "no_answer": self.no_answer,
            "over_context": self.over_context,
        }


def score(name: str, rows: list[dict[str, Any]], ks: Iterable[int] = ()) -> BenchmarkScore:
    """Metrics of one benchmark from its response rows (keys: problem_id, correct, key, length, finish_reason)."""
    if not rows:
        raise ValueError(f"benchmark {name!r} has no responses to score")
    by_problem: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_problem.setdefault(row["problem_id"], []).append(row)
    groups = list(by_problem.values())
    pass_at = {
        k: _mean([pass_at_k(len(g), sum(r["correct"] for r in g), k) for g in groups])
        for k in sorted(set(ks))
        if all(len(g) >= k for g in groups)
    }
    return BenchmarkScore(
        name=name,
        problems=len(groups),
        samples=len(rows),
        accuracy=_mean([r["correct"] for r in rows]),
        mean_length=_mean([r["length"] for r in rows]),
        truncated=_mean([r["finish_reason"] == "length" for r in rows]),
        majority=_mean([majority_correct((r["key"], r["correct"]) for r in g) for g in groups]),
        pass_at=pass_at,
        no_answer=_mean([r["extracted"] is None for r in rows]),
        over_context=_mean([r["finish_reason"] == OVER_CONTEXT for r in rows]),
    )


def overall(scores: list[BenchmarkScore]) -> BenchmarkScore:
    """The unweighted mean of the benchmark rows, as papers' "Avg." column (problem and sample counts add up)."""
    common = set.intersection(*(set(s.pass_at) for s in scores)) if scores else set()
    return BenchmarkScore(
        name="overall",
        problems=sum(s.problems for s in scores),
        samples=sum(s.samples for s in scores),
        accuracy=_mean([s.accuracy for s in scores]),
        mean_length=_mean([s.mean_length for s in scores]),
        truncated=_mean([s.truncated for s in scores]),
        majority=_mean([s.majority for s in scores]),
        pass_at={k: _mean([s.pass_at[k] for s in scores]) for k in sorted(common)},
        no_answer=_mean([s.no_answer for s in scores]),
        over_context=_mean([s.over_context for s in scores]),
    )


def _mean(values: list[float] | list[bool] | list[int]) -> float:
    return sum(values) / len(values) if values else 0.0
