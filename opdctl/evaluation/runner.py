"""Generating answers to a benchmark and grading them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from transformers import PreTrainedTokenizerBase

from opdctl.backends import Rollouts, Sampling
from opdctl.data import chat_prompt
from opdctl.evaluation.benchmarks import Benchmark
from opdctl.evaluation.grading import last_boxed


class Generator(Protocol):
    tokenizer: PreTrainedTokenizerBase

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> Rollouts: ...


@dataclass
class BenchmarkScore:
    name: str
    accuracy: float  # avg@n: mean correctness over all samples
    samples: int
    mean_length: float
    truncated: float  # share of responses cut at the length limit

    def to_dict(self) -> dict[str, float | int | str]:
        return dict(self.__dict__)


def evaluate(
    generator: Generator,
    benchmark: Benchmark,
    *,
    n: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 1024,
    seed: int = 0,
    batch_size: int = 256,
) -> BenchmarkScore:
    """Sample ``n`` answers per problem and grade each by its last \\boxed{} value."""
    tokenizer = generator.tokenizer
    prompts = [chat_prompt(tokenizer, benchmark.prompt(p), True) for p in benchmark.problems for _ in range(n)]
    answers = [p.answer for p in benchmark.problems for _ in range(n)]
    correct, lengths, cut = 0, 0, 0
    for start in range(0, len(prompts), batch_size):
        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + start)
        rollouts = generator.generate(prompts[start : start + batch_size], sampling)
        texts = tokenizer.batch_decode(rollouts.responses(), skip_special_tokens=True)
        for text, answer in zip(texts, answers[start : start + batch_size], strict=True):
            boxed = last_boxed(text)
            correct += boxed is not None and boxed.strip() == answer.strip()
        lengths += int(rollouts.lengths.sum())
        cut += sum(reason == "length" for reason in rollouts.finish_reasons)
    total = len(prompts)
    return BenchmarkScore(benchmark.name, correct / total, total, lengths / total, cut / total)
