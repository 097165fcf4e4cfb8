"""Batched prompt+response tensors and memory-bounded log-prob gathering for causal LMs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from opdctl.backends.types import Rollouts


@dataclass
class Packed:
    """Left-padded prompts followed by right-padded responses, ready for one forward pass."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]
    position_ids: torch.Tensor  # [B, P + T]
    prompt_width: int  # P: response position t is predicted from column P - 1 + t


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of prompts padded on the left to a common width."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore left padding, as generation uses them."""
    return (attention_mask.cumsum(-1) - 1).clamp_min(0)


def pack(rollouts: Rollouts, pad_id: int, device: torch.device) -> Packed:
    prompt_ids, prompt_mask = left_pad(rollouts.prompt_ids, pad_id, device)
    response_ids = rollouts.response_ids.to(device)
    response_mask = rollouts.mask.to(device).long()
    response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, pad_id))
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    return Packed(
        input_ids=torch.cat([prompt_ids, response_ids], dim=1),
        attention_mask=attention_mask,
        position_ids=positions(attention_mask),
        prompt_width=prompt_ids.shape[1],
    )


def response_hidden(model: torch.nn.Module, packed: Packed, width: int) -> torch.Tensor:
    """Final hidden states ``[B, T, d]`` that predict response positions 0..T-1."""
    out = model.get_decoder()(
        input_ids=packed.input_ids, attention_mask=packed.attention_mask, position_ids=packed.position_ids
    )
    start = packed.prompt_width - 1
    return out.last_hidden_state[:, start : start + width]


def logits_of(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits from hidden states, with the model's final soft-capping if it has one."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _chunk_logprobs(model: torch.nn.Module, hidden: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    logprobs = torch.log_softmax(logits_of(model, hidden), dim=-1)
    return logprobs.gather(-1, query)


def chunked_logprobs(
    model: torch.nn.Module,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    query_ids: torch.Tensor,
    chunk_tokens: int,
    top_k: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-probs of ``query_ids`` (and optionally the top-k) at the valid positions of ``hidden``.

    Full-vocabulary log-probs exist for at most ``chunk_tokens`` positions at a
    time. With gradients enabled each chunk is recomputed in the backward pass
    (activation checkpointing), so only hidden states are kept between passes.
    Returns ``[B, T, Q]`` query log-probs and, if ``top_k``, ``[B, T, k]`` top-k
    ids and log-probs; padded positions hold 0.
    """
    rows, cols = mask.nonzero(as_tuple=True)
    flat_hidden = hidden[rows, cols]
    flat_query = query_ids.to(hidden.device)[rows, cols]
    query_parts, id_parts, lp_parts = [], [], []
    for start in range(0, flat_hidden.shape[0], chunk_tokens):
        h = flat_hidden[start : start + chunk_tokens]
        q = flat_query[start : start + chunk_tokens]
        if torch.is_grad_enabled():
            query_parts.append(checkpoint(_chunk_logprobs, model, h, q, use_reentrant=False))
            continue
        logprobs = torch.log_softmax(logits_of(model, h), dim=-1)
        query_parts.append(logprobs.gather(-1, q))
        if top_k:
            values, ids = logprobs.topk(top_k, dim=-1)
            id_parts.append(ids)
            lp_parts.append(values)
    shape = (*mask.shape, query_ids.shape[-1])
    query_lp = _scatter(query_parts, rows, cols, shape, torch.float32, hidden.device)
    if not top_k:
        return query_lp, None, None
    topk_shape = (*mask.shape, top_k)
    topk_ids = _scatter(id_parts, rows, cols, topk_shape, torch.long, hidden.device)
    topk_lp = _scatter(lp_parts, rows, cols, topk_shape, torch.float32, hidden.device)
    return query_lp, topk_ids, topk_lp


def _scatter(
    parts: list[torch.Tensor], rows: torch.Tensor, cols: torch.Tensor, shape: tuple, dtype, device
) -> torch.Tensor:
    out = torch.zeros(shape, dtype=dtype, device=device)
    if parts:
        out = out.index_put((rows, cols), torch.cat(parts))
    return out
