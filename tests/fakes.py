"""In-memory student and teacher backends with scripted behaviour, for unit tests of the training loop.

Prompt ``[p]`` gets a response of ``LENGTHS[p]`` tokens (cut at the step's limit, then
finish reason "length"); the student's top-k at every position is ids ``0..k-1``, and the
teacher agrees with it on positions before ``DRIFT_FROM[p]`` and shares none of them from
there on. The student's policy is one trainable vector of logits, the same at every
position; the teacher's is a fixed vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from opdctl.backends.protocols import GenerationMonitor
from opdctl.backends.types import FinishedCallback, GeneratedChunk, Rollouts, Sampling, TeacherScores
from opdctl.config.schema import BackendConfig

VOCAB = 16
LENGTHS = {0: 5, 1: 9, 2: 12, 3: 3}
DRIFT_FROM = {0: 99, 1: 2, 2: 6, 3: 99}
TEACHER_LOGPROBS = torch.log_softmax(-0.3 * torch.arange(VOCAB, dtype=torch.float32), -1)


class Policy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.linspace(1.0, -1.0, VOCAB))


class FakeStudent:
    """Scripted generation (with the monitor and on_finished protocols); differentiable log-probs."""

    Config = BackendConfig

    def __init__(self) -> None:
        self.model = Policy()
        self.device = torch.device("cpu")
        self.tokenizer = None
        self.limits: list[int] = []  # max_new_tokens of every generate call

    @staticmethod
    def load_tokenizer(config: BackendConfig) -> None:
        return None

    def generate(
        self,
        prompts: list[list[int]],
        sampling: Sampling,
        on_finished: FinishedCallback | None = None,
        monitor: GenerationMonitor | None = None,
    ) -> Rollouts:
        self.limits.append(sampling.max_new_tokens)
        k, limit = sampling.record_topk, sampling.max_new_tokens
        lengths = torch.tensor([min(LENGTHS[p[0]], limit) for p in prompts])
        reasons = ["eos" if LENGTHS[p[0]] <= limit else "length" for p in prompts]
        width = int(lengths.max())
        positions = torch.arange(width).expand(len(prompts), width)
        tokens = (positions % k) * (positions < lengths.unsqueeze(1))
        student = torch.log_softmax(self.model.logits.detach(), -1)
        topk = torch.arange(k).expand(len(prompts), width, k)
        if monitor is not None:
            lengths = _monitored(monitor, tokens, topk, student[topk], lengths, reasons)
        rollouts = Rollouts(
            prompt_ids=[list(p) for p in prompts],
            response_ids=tokens,
            lengths=lengths,
            topk_ids=topk.clone(),
            topk_logprobs=student[topk],
            sampled_logprobs=student[tokens],
            finish_reasons=reasons,
        ).select(list(range(len(prompts))))
        if on_finished is not None:  # shortest rows first, each group trimmed to its own width
            order = sorted(range(len(prompts)), key=lambda row: int(lengths[row]))
            for group in (order[: len(order) // 2], order[len(order) // 2 :]):
                on_finished(group, rollouts.select(group))
        return rollouts

    def logprobs(self, rollouts: Rollouts, query_ids: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.model.logits, -1)[query_ids[:, : rollouts.response_ids.shape[1]]]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    def vocab_size(self) -> int:
        return VOCAB

    def context_length(self) -> int | None:
        return None

    def save(self, directory: str, state: Any = None) -> None:
        torch.save(self.model.state_dict(), f"{directory}/policy.pt")

    def weights_updated(self) -> None:
        pass

    def close(self) -> None:
        pass


def _monitored(
    monitor: GenerationMonitor,
    tokens: torch.Tensor,
    topk: torch.Tensor,
    topk_logprobs: torch.Tensor,
    lengths: torch.Tensor,
    reasons: list[str],
) -> torch.Tensor:
    """Show the monitor every ``chunk_tokens`` new tokens of the running rows, as the HF sampler does."""
    lengths, live, size = lengths.clone(), list(range(len(lengths))), monitor.chunk_tokens
    for start in range(0, int(lengths.max()), size):
        rows = [row for row in live if lengths[row] > start]
        if not rows:
            break
        index = torch.tensor(rows)
        stop = min(start + size, int(lengths[index].max()))
        chunk = GeneratedChunk(
            rows=rows,
            start=start,
            lengths=torch.clamp(lengths[index], max=stop),
            tokens=tokens[index, start:stop],
            topk_ids=topk[index, start:stop],
            topk_logprobs=topk_logprobs[index, start:stop],
        )
        for row, position in monitor.observe(chunk).items():
            lengths[row], reasons[row] = position + 1, "drift"
            live.remove(row)
    return lengths


@dataclass
class FakeTeacher:
    """Scores by the script: agreement before DRIFT_FROM, disjoint top-k after; NaN scores when ``broken``."""

    Config: ClassVar[type[BackendConfig]] = BackendConfig
    broken: bool = False
    overlaps_generation: bool = False
    rescores_prefix: bool = False
    scored_rows: list[int] = field(default_factory=list)  # how many rows each score/submit call got

    def scores(self, prompts: list[list[int]], start: int | list[int], query_ids: torch.Tensor, top_k: int):
        batch, width = query_ids.shape[:2]
        starts = torch.tensor([start] * batch if isinstance(start, int) else start).unsqueeze(1)
        drifted = (starts + torch.arange(width)) >= torch.tensor([DRIFT_FROM[p[0]] for p in prompts]).unsqueeze(1)
        ids = torch.arange(top_k).expand(batch, width, top_k) + VOCAB // 2 * drifted.unsqueeze(-1)
        query = TEACHER_LOGPROBS[query_ids]
        if self.broken:
            query = torch.full_like(query, float("nan"))
        return TeacherScores(topk_ids=ids, topk_logprobs=TEACHER_LOGPROBS[ids], query_logprobs=query)

    def check(self, tokenizer: Any, drift_k: int, loss_k: int) -> dict[str, str]:
        return {}

    def score(self, rollouts: Rollouts, query_ids: torch.Tensor, top_k: int) -> TeacherScores:
        self.scored_rows.append(len(rollouts))
        return self.scores(rollouts.prompt_ids, 0, query_ids, top_k)

    def submit(self, rollouts: Rollouts, query_ids: torch.Tensor, top_k: int) -> Any:
        scores = self.score(rollouts, query_ids, top_k)
        return type("Pending", (), {"result": lambda self: scores})()

    def stream(self, prompts: list[list[int]]) -> FakeStream:
        return FakeStream(self, prompts)

    def close(self) -> None:
        pass


class FakeStream:
    """Scores chunk by chunk, keeping each row's position."""

    def __init__(self, teacher: FakeTeacher, prompts: list[list[int]]) -> None:
        self.teacher, self.prompts = teacher, prompts
        self.done = [0] * len(prompts)

    def extend(
        self, rows: list[int], tokens: torch.Tensor, lengths: torch.Tensor, query_ids: torch.Tensor, top_k: int
    ) -> TeacherScores:
        starts = [self.done[row] for row in rows]
        for row, new in zip(rows, lengths.tolist(), strict=True):
            self.done[row] += new
        return self.teacher.scores([self.prompts[r] for r in rows], starts, query_ids, top_k)

    def close(self) -> None:
        pass
