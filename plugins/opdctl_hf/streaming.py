"""Teacher scoring chunk by chunk, with the teacher's own KV cache (truncation on drift)."""

from __future__ import annotations

import torch

from opdctl.backends.types import TeacherScores

from .cache import decoding_cache
from .sampling import cache_keyword
from .sequences import chunked_logprobs, left_pad, positions


class HFTeacherStream:
    """Feeds each new chunk of tokens through the teacher once; no prefix is ever recomputed.

    The hidden state that predicts a row's next token is kept between chunks, so the
    scores of positions [start, start + c) come from one forward pass over the c new
    tokens.
    """

    def __init__(self, model: torch.nn.Module, prompts: list[list[int]], pad_id: int, logprob_chunk: int) -> None:
        self.model, self.logprob_chunk = model, logprob_chunk
        self.device = next(model.parameters()).device
        self.decoder = model.get_decoder()
        self.cache = decoding_cache(model.config)
        self.keyword = cache_keyword(self.decoder)
        ids, self.mask = left_pad(prompts, pad_id, self.device)
        position_ids = positions(self.mask)
        with torch.no_grad():
            out = self._forward(ids, position_ids)
        self.pending = out[:, -1]  # hidden states predicting each row's next token
        self.next_position = position_ids[:, -1] + 1
        self.rows = list(range(len(prompts)))

    def _forward(self, ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        kwargs = {self.keyword: self.cache}
        out = self.decoder(input_ids=ids, attention_mask=self.mask, position_ids=position_ids, use_cache=True, **kwargs)
        return out.last_hidden_state

    def _keep(self, rows: list[int]) -> None:
        """Drop finished rows from the cache and the state."""
        if rows == self.rows:
            return
        where = {row: i for i, row in enumerate(self.rows)}
        index = torch.tensor([where[row] for row in rows], device=self.device)
        self.cache.batch_select_indices(index)
        self.pending, self.mask, self.next_position = self.pending[index], self.mask[index], self.next_position[index]
        self.rows = list(rows)

    @torch.no_grad()
    def extend(
        self, rows: list[int], tokens: torch.Tensor, lengths: torch.Tensor, query_ids: torch.Tensor, top_k: int
    ) -> TeacherScores:
        self._keep(rows)
        width = tokens.shape[1]
        lengths = lengths.to(self.device)
        valid = torch.arange(width, device=self.device).unsqueeze(0) < lengths.unsqueeze(1)
        self.mask = torch.cat([self.mask, valid.long()], dim=1)
        position_ids = self.next_position.unsqueeze(1) + torch.arange(width, device=self.device)
        hidden = self._forward(tokens.to(self.device), position_ids)
        predicting = torch.cat([self.pending.unsqueeze(1), hidden[:, :-1]], dim=1)
        query_lp, topk_ids, topk_lp = chunked_logprobs(
            self.model, predicting, valid, query_ids.to(self.device), self.logprob_chunk, top_k
        )
        ends = (lengths - 1).clamp_min(0)
        self.pending = torch.where(
            (lengths > 0).unsqueeze(1), hidden[torch.arange(len(rows), device=self.device), ends], self.pending
        )
        self.next_position = self.next_position + lengths
        return TeacherScores(topk_ids=topk_ids.cpu(), topk_logprobs=topk_lp.cpu(), query_logprobs=query_lp.cpu())

    def close(self) -> None:
        self.cache = None
