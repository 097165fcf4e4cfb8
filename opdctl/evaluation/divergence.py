"""The student's reverse KL to the teacher on held-out prompts (``eval.reverse_kl``): what OPD minimises,
measured where the student was not trained."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from opdctl.algorithm.losses import advantage_sum
from opdctl.backends.protocols import Generator, Teacher
from opdctl.backends.types import Sampling
from opdctl.data.benchmarks import Benchmark
from opdctl.data.prompts import chat_prompts
from opdctl.progress import reporter

BATCH = 64


def held_out_reverse_kl(
    student: Generator,
    teacher: Teacher,
    tokenizer: PreTrainedTokenizerBase,
    benchmark: Benchmark,
    max_new_tokens: int,
    seed: int,
    chat_template: bool,
) -> tuple[float, int]:
    """KL(student || teacher) per token on the student's own answers to ``benchmark``'s problems, and the
    number of tokens: the k1 estimate, mean of log p(y_t) - log q(y_t) with y_t sampled from the student
    at temperature 1 (the same seed at every evaluation, so before and after see the same draws)."""
    prompts = chat_prompts(tokenizer, [benchmark.prompt(problem) for problem in benchmark.problems], chat_template)
    total, count = 0.0, 0
    with reporter().task(f"{benchmark.name}: reverse KL", len(prompts)) as advance:
        for start in range(0, len(prompts), BATCH):
            batch = prompts[start : start + BATCH]
            rollouts = student.generate(batch, Sampling(max_new_tokens, 1.0, seed=seed + start))
            scores = teacher.score(rollouts, rollouts.response_ids.unsqueeze(-1), 1)
            advantages, tokens = advantage_sum(rollouts.sampled_logprobs, scores.query_logprobs[..., 0], rollouts.mask)
            total -= advantages  # the k1 advantage log q(y) - log p(y) is minus the k1 estimate of the KL
            count += tokens
            advance(len(batch), kl=f"{total / max(count, 1):.3f}")
    return (total / count if count else 0.0), count
