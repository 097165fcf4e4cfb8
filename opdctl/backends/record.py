"""What a generating backend keeps per rollout while it decodes: tokens, the student's top-k, lengths, reasons."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opdctl.backends.types import GeneratedChunk, Rollouts


@dataclass
class RolloutRecord:
    """Everything a generation keeps per rollout: tokens, the student's top-k, lengths, finish reasons."""

    prompts: list[list[int]]
    tokens: torch.Tensor
    sampled_lp: torch.Tensor
    topk_ids: torch.Tensor
    topk_lp: torch.Tensor
    lengths: torch.Tensor
    reasons: list[str]

    @classmethod
    def allocate(cls, prompts: list[list[int]], limit: int, k: int, device: torch.device) -> RolloutRecord:
        batch = len(prompts)
        return cls(
            prompts=[list(p) for p in prompts],
            tokens=torch.zeros((batch, limit), dtype=torch.long, device=device),
            sampled_lp=torch.zeros((batch, limit), device=device),
            topk_ids=torch.zeros((batch, limit, k), dtype=torch.long, device=device),
            topk_lp=torch.zeros((batch, limit, k), device=device),
            lengths=torch.zeros(batch, dtype=torch.long, device=device),
            reasons=["length"] * batch,
        )

    def add(self, step: int, live: torch.Tensor, token: torch.Tensor, logprobs: torch.Tensor) -> None:
        self.tokens[live, step] = token
        self.sampled_lp[live, step] = logprobs.gather(-1, token[:, None]).squeeze(-1)
        k = self.topk_ids.shape[-1]
        if k:
            values, ids = logprobs.topk(k, dim=-1)
            self.topk_ids[live, step], self.topk_lp[live, step] = ids, values
        self.lengths[live] += 1

    def extend(self, rows: list[int], start: int, part: Rollouts) -> None:
        """Append ``part``, the continuations of ``rows`` from decode step ``start`` (one row of ``part`` per row)."""
        k = self.topk_ids.shape[-1]
        for i, row in enumerate(rows):
            n = int(part.lengths[i])
            span = slice(start, start + n)
            self.tokens[row, span] = part.response_ids[i, :n]
            self.sampled_lp[row, span] = part.sampled_logprobs[i, :n]
            if k:
                self.topk_ids[row, span], self.topk_lp[row, span] = part.topk_ids[i, :n], part.topk_logprobs[i, :n]
            self.lengths[row] = start + n
            self.reasons[row] = part.finish_reasons[i]

    def chunk(self, rows: list[int], start: int, stop: int) -> GeneratedChunk:
        """What ``rows`` generated in decode steps [start, stop)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.lengths.device)
        return GeneratedChunk(
            rows=rows,
            start=start,
            lengths=self.lengths[index].cpu(),
            tokens=self.tokens[index, start:stop].cpu(),
            topk_ids=self.topk_ids[index, start:stop].cpu(),
            topk_logprobs=self.topk_lp[index, start:stop].cpu(),
        )

    def stop(self, cuts: dict[int, int]) -> list[int]:
        """End rows for drift, each keeping its tokens up to and including the given position."""
        for row, position in cuts.items():
            self.lengths[row] = position + 1
            self.reasons[row] = "drift"
        return list(cuts)

    def rollouts(self, rows: list[int]) -> Rollouts:
        index = torch.tensor(rows, dtype=torch.long, device=self.lengths.device)
        width = int(self.lengths[index].max()) if rows else 0
        return Rollouts(
            prompt_ids=[self.prompts[r] for r in rows],
            response_ids=self.tokens[index, :width].cpu(),
            lengths=self.lengths[index].cpu(),
            topk_ids=self.topk_ids[index, :width].cpu(),
            topk_logprobs=self.topk_lp[index, :width].cpu(),
            sampled_logprobs=self.sampled_lp[index, :width].cpu(),
            finish_reasons=[self.reasons[r] for r in rows],
        )
