"""Benchmarks: named problem sets with reference answers and a prompt template."""

from __future__ import annotations

from dataclasses import dataclass

SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str


@dataclass(frozen=True)
class Benchmark:
    name: str
    problems: list[Problem]
    prompt_template: str = "{problem}"

    def prompt(self, problem: Problem) -> str:
        return self.prompt_template.format(problem=problem.problem)


def synthetic(limit: int | None = None) -> Benchmark:
    """The demo task's fixed held-out problems (never trained on)."""
    from opdctl.demo.task import held_out

    problems = [Problem(f"synthetic-{i}", p.prompt, p.answer) for i, p in enumerate(held_out())]
    return Benchmark(SYNTHETIC, problems[:limit])
