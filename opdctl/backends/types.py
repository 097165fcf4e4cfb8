"""The data teacher and student backends exchange: rollouts, teacher scores, sampling settings.

The backends' protocols are in :mod:`opdctl.backends.protocols`; backends are plugins found through
entry points (:mod:`opdctl.plugins`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch

FinishedCallback = Callable[[list[int], "Rollouts"], None]
FINISH_REASONS = ("eos", "length", "drift")


class QueryLayout:
    """What the teacher is asked about at each response position: the last axis of query ids and their log-probs.

    Columns ``0..k-1`` are the student's top-k candidates S_t (best first), column ``k``
    is the sampled token y_t: ``[B, T, k + 1]``.
    """

    @staticmethod
    def ids(topk_ids: torch.Tensor, sampled_ids: torch.Tensor) -> torch.Tensor:
        """Query ids from the student's top-k ``[..., k]`` and the sampled ids ``[...]``."""
        return torch.cat([topk_ids, sampled_ids.unsqueeze(-1)], dim=-1)

    @staticmethod
    def candidates(values: torch.Tensor) -> torch.Tensor:
        """The top-k candidates' columns ``[..., k]``."""
        return values[..., :-1]

    @staticmethod
    def sampled(values: torch.Tensor) -> torch.Tensor:
        """The sampled token's column ``[...]``."""
        return values[..., -1]


@dataclass
class Rollouts:
    """A batch of sampled responses, right-padded, with what the student saw while sampling.

    ``topk_ids``/``topk_logprobs`` are the student's top-k candidates S_t and their
    log-probs (temperature 1) at each response position, recorded during generation.
    """

    prompt_ids: list[list[int]]
    response_ids: torch.Tensor  # [B, T] long, 0 beyond each length
    lengths: torch.Tensor  # [B] long
    topk_ids: torch.Tensor  # [B, T, k] long
    topk_logprobs: torch.Tensor  # [B, T, k] float32
    sampled_logprobs: torch.Tensor  # [B, T] float32, the student's log-prob of each sampled token
    finish_reasons: list[str]

    @property
    def mask(self) -> torch.Tensor:
        """Boolean ``[B, T]``: true on valid response positions."""
        positions = torch.arange(self.response_ids.shape[1], device=self.lengths.device)
        return positions.unsqueeze(0) < self.lengths.unsqueeze(1)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def select(self, index: slice | list[int]) -> Rollouts:
        """A sub-batch (rows by slice or list of indices), trimmed to its longest response."""
        rows = list(range(len(self)))[index] if isinstance(index, slice) else list(index)
        idx = torch.tensor(rows, dtype=torch.long)
        width = int(self.lengths[idx].max()) if rows else 0
        return Rollouts(
            prompt_ids=[self.prompt_ids[i] for i in rows],
            response_ids=self.response_ids[idx, :width],
            lengths=self.lengths[idx],
            topk_ids=self.topk_ids[idx, :width],
            topk_logprobs=self.topk_logprobs[idx, :width],
            sampled_logprobs=self.sampled_logprobs[idx, :width],
            finish_reasons=[self.finish_reasons[i] for i in rows],
        )

    @classmethod
    def from_responses(
        cls, prompt_ids: list[list[int]], responses: list[list[int]], finish_reasons: list[str]
    ) -> Rollouts:
        """Rollouts of generated token ids alone, with no top-k or log-probs recorded (all zero)."""
        width = max((len(r) for r in responses), default=0)
        response_ids = torch.zeros((len(responses), width), dtype=torch.long)
        for row, response in enumerate(responses):
            response_ids[row, : len(response)] = torch.tensor(response, dtype=torch.long)
        return cls(
            prompt_ids=[list(p) for p in prompt_ids],
            response_ids=response_ids,
            lengths=torch.tensor([len(r) for r in responses], dtype=torch.long),
            topk_ids=torch.zeros((len(responses), width, 0), dtype=torch.long),
            topk_logprobs=torch.zeros((len(responses), width, 0)),
            sampled_logprobs=torch.zeros((len(responses), width)),
            finish_reasons=list(finish_reasons),
        )

    def query_ids(self) -> torch.Tensor:
        """``[B, T, k + 1]`` ids the teacher is asked about (:class:`QueryLayout`)."""
        return QueryLayout.ids(self.topk_ids, self.response_ids)

    def with_prompts(self, prompt_ids: list[list[int]] | None) -> Rollouts:
        """The same responses after other prompts (a teacher's privileged context); position t of every
        response stays position t: the response's token ids are not touched."""
        return self if prompt_ids is None else replace(self, prompt_ids=[list(p) for p in prompt_ids])

    def responses(self) -> list[list[int]]:
        """Each response's token ids, without padding."""
        return [row[:n].tolist() for row, n in zip(self.response_ids, self.lengths.tolist(), strict=True)]


@dataclass
class GeneratedChunk:
    """The tokens some rows generated in decode steps [start, stop): position = decode step.

    A row that ended inside the chunk has fewer: its total length is ``lengths``.
    """

    rows: list[int]
    start: int
    lengths: torch.Tensor  # [b] each row's length so far
    tokens: torch.Tensor  # [b, stop - start]
    topk_ids: torch.Tensor  # [b, stop - start, k]
    topk_logprobs: torch.Tensor  # [b, stop - start, k]

    def query_ids(self) -> torch.Tensor:
        """``[b, stop - start, k + 1]`` ids the teacher is asked about (:class:`QueryLayout`)."""
        return QueryLayout.ids(self.topk_ids, self.tokens)


@dataclass
class TeacherScores:
    """The teacher's view of every response position, conditioned on the student's prefix.

    A served teacher returns only its own top-K: the log-prob of an asked-about id
    outside it is an estimate (an upper bound), and ``query_exact`` marks which
    values are exact. ``None`` means all are.
    """

    topk_ids: torch.Tensor  # [B, T, k] long, sorted by log-prob, descending
    topk_logprobs: torch.Tensor  # [B, T, k] float32
    query_logprobs: torch.Tensor  # [B, T, Q] float32, log-probs of the ids that were asked about
    query_exact: torch.Tensor | None = None  # [B, T, Q] bool

    def to(self, device: torch.device | str) -> TeacherScores:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return TeacherScores(**{k: v.to(device) if v is not None else None for k, v in moved.items()})

    @staticmethod
    def assemble(parts: list[tuple[list[int], TeacherScores]], batch: int, width: int) -> TeacherScores:
        """Scores of a batch assembled from scores of some of its rows (each part trimmed to its own width); a
        part without ``query_exact`` (all exact) stays exact beside parts that have it (several teachers)."""

        def place(name: str) -> torch.Tensor | None:
            given = [(rows, getattr(part, name)) for rows, part in parts if getattr(part, name) is not None]
            if not given:
                return None
            sample = given[0][1]
            out = torch.zeros((batch, width, sample.shape[-1]), dtype=sample.dtype)
            if name == "query_exact":
                out.fill_(True)
            for rows, values in given:
                out[rows, : values.shape[1]] = values.cpu()
            return out

        return TeacherScores(**{f.name: place(f.name) for f in fields(TeacherScores)})


@dataclass(frozen=True)
class Sampling:
    """How to generate: temperature 0 is greedy; ``top_p`` < 1 samples from the nucleus;
    ``record_topk`` ids per position are kept.

    A process that generates rows ``[row_offset, row_offset + len(prompts))`` of a
    larger batch of ``batch_rows`` samples them exactly as one process generating the
    whole batch would.
    """

    max_new_tokens: int
    temperature: float = 1.0
    record_topk: int = 0
    seed: int = 0
    top_p: float = 1.0
    batch_rows: int | None = None
    row_offset: int = 0


@dataclass(frozen=True)
class EngineSetup:
    """What a rollout engine is told about the student it generates for."""

    model: str  # where the student's weights come from (a directory or hub id)
    dtype: str  # the training weights' dtype, e.g. "float32"
    lora: bool  # the student trains LoRA adapters
    seed: int = 0
