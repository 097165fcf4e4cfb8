"""Generating answers to a benchmark, grading them, and scoring the benchmark.

Work goes in chunks of at most ``batch_size`` (problem, sample) rows. The chunks and
their seeds are a pure function of the settings, and a chunk that an interruption left
half written is generated again whole (its missing rows kept), so an interrupted evaluation
that is resumed gives exactly the rows an uninterrupted one would (on CPU, HF backend).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from opdctl.backends.protocols import Generator, KnowsContextLength
from opdctl.backends.types import Sampling
from opdctl.data.benchmarks import Benchmark, Problem
from opdctl.data.grading import Grader
from opdctl.data.prompts import chat_prompts
from opdctl.evaluation.metrics import OVER_CONTEXT, BenchmarkScore, score
from opdctl.progress import reporter

Row = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    """How each problem is answered."""

    n: int = 1  # samples per problem
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 0
    chat_template: bool = True


@dataclass(frozen=True)
class _Unit:
    problem: Problem
    sample: int
    prompt: list[int]
    limit: int  # max new tokens for this problem: the setting, capped by the context


def context_length(generator: Generator) -> int | None:
    """The generator's context length in tokens, if it tells (:class:`KnowsContextLength`)."""
    return generator.context_length() if isinstance(generator, KnowsContextLength) else None


def generate_rows(
    generator: Generator,
    tokenizer: PreTrainedTokenizerBase,
    benchmark: Benchmark,
    settings: Settings,
    grader: Grader,
    *,
    batch_size: int = 64,
    done: Iterable[tuple[str, int]] = (),
    write: Callable[[list[Row]], None] | None = None,
) -> list[Row]:
    """Answer and grade every (problem, sample) of ``benchmark`` not in ``done``; returns the new rows.

    ``write`` receives each chunk's rows as soon as they are graded. A problem whose
    prompt does not fit the model's context gets empty, wrong responses (finish
    reason "context") instead of being generated.
    """
    units = _units(tokenizer, benchmark, settings, context_length(generator))
    over = len({u.problem.id for u in units if u.limit < 1})
    if over:
        reporter().message(
            f"warning: {benchmark.name}: {over} of {len(benchmark.problems)} problems do not fit the model's context; "
            "their responses count as wrong"
        )
    finished = set(done)
    rows: list[Row] = []
    with reporter().task(benchmark.name, len(units)) as advance:
        advance(len(finished & {(u.problem.id, u.sample) for u in units}))
        for index, chunk in enumerate(_chunks(units, batch_size)):
            if all((u.problem.id, u.sample) in finished for u in chunk):
                continue
            seed = _seed(settings, benchmark, index)
            answered = _answer(generator, tokenizer, benchmark, chunk, settings, grader, seed)
            new = [row for row in answered if (row["problem_id"], row["sample"]) not in finished]
            if write is not None:
                write(new)
            rows.extend(new)
            advance(len(new), acc=f"{sum(r['correct'] for r in rows) / len(rows):.1%}")
    return rows


def evaluate(
    generator: Generator,
    tokenizer: PreTrainedTokenizerBase,
    benchmark: Benchmark,
    settings: Settings,
    grader: Grader,
    *,
    batch_size: int = 64,
    pass_k: Iterable[int] = (),
) -> BenchmarkScore:
    """Sample ``settings.n`` answers per problem, grade them, and score the benchmark (nothing is written)."""
    rows = generate_rows(generator, tokenizer, benchmark, settings, grader, batch_size=batch_size)
    return score(benchmark.name, rows, pass_k)


def _units(
    tokenizer: PreTrainedTokenizerBase, benchmark: Benchmark, settings: Settings, context: int | None
) -> list[_Unit]:
    units = []
    prompts = chat_prompts(
        tokenizer, [benchmark.prompt(problem) for problem in benchmark.problems], settings.chat_template
    )
    for problem, prompt in zip(benchmark.problems, prompts, strict=True):
        limit = settings.max_new_tokens if context is None else min(settings.max_new_tokens, context - len(prompt))
        units.extend(_Unit(problem, sample, prompt, limit) for sample in range(settings.n))
    return units


def _chunks(units: list[_Unit], size: int) -> list[list[_Unit]]:
    """Units with the same token limit, ``size`` at a time, in problem order."""
    by_limit: dict[int, list[_Unit]] = {}
    for unit in units:
        by_limit.setdefault(unit.limit, []).append(unit)
    return [group[i : i + size] for group in by_limit.values() for i in range(0, len(group), size)]


def _seed(settings: Settings, benchmark: Benchmark, chunk: int) -> int:
    return zlib.crc32(f"{settings.seed}:{benchmark.name}:{chunk}".encode())


def _answer(
    generator: Generator,
    tokenizer: PreTrainedTokenizerBase,
    benchmark: Benchmark,
    units: list[_Unit],
    settings: Settings,
    grader: Grader,
    seed: int,
) -> list[Row]:
    """Generate (unless the prompt leaves no room) and grade one chunk of units sharing a token limit."""
    limit = units[0].limit
    if limit < 1:
        texts, lengths, reasons = [""] * len(units), [0] * len(units), [OVER_CONTEXT] * len(units)
    else:
        sampling = Sampling(limit, settings.temperature, seed=seed, top_p=settings.top_p)
        rollouts = generator.generate([u.prompt for u in units], sampling)
        texts = tokenizer.batch_decode(rollouts.responses(), skip_special_tokens=True)
        lengths, reasons = rollouts.lengths.tolist(), rollouts.finish_reasons
    items = [(u.problem.answer, text) for u, text in zip(units, texts, strict=True)]
    grades = grader.grade(items, lenient=benchmark.lenient)
    return [
        {
            "benchmark": benchmark.name,
            "problem_id": unit.problem.id,
            "sample": unit.sample,
            "answer": unit.problem.answer,
            "extracted": grade.extracted,
            "correct": grade.correct,
            "key": grade.key,
            "length": length,
            "finish_reason": reason,
            "grade_error": grade.error,
            "response": text,
        }
        for unit, text, grade, length, reason in zip(units, texts, grades, lengths, reasons, strict=True)
    ]
