"""Batched sampling with a KV cache that records the student's top-k at every position.

transformers' ``generate`` would keep full-vocabulary scores for every step to
give us the top-k; this loop keeps only what OPD needs, and drops finished rows
from the batch (and the cache) as it goes.

Sampling uses the Gumbel-max trick with noise drawn for every original row at
every step, so a rollout's tokens do not change when other rows of its batch
finish (or are stopped) early.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from transformers import DynamicCache

from opdctl.backends import Rollouts, Sampling

from .sequences import left_pad, positions


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    sampling: Sampling,
    eos_ids: Collection[int],
    pad_id: int,
) -> Rollouts:
    """One response per prompt, at most ``sampling.max_new_tokens`` long, ending at an EOS id."""
    device = next(model.parameters()).device
    batch, limit, k = len(prompts), sampling.max_new_tokens, sampling.record_topk
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)

    tokens = torch.zeros((batch, limit), dtype=torch.long, device=device)
    sampled_lp = torch.zeros((batch, limit), dtype=torch.float32, device=device)
    topk_ids = torch.zeros((batch, limit, k), dtype=torch.long, device=device)
    topk_lp = torch.zeros((batch, limit, k), dtype=torch.float32, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    finished_by_eos = torch.zeros(batch, dtype=torch.bool, device=device)

    input_ids, attention_mask = left_pad(prompts, pad_id, device)
    position_ids = positions(attention_mask)
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    live = torch.arange(batch, device=device)
    next_position = position_ids[:, -1] + 1
    for step in range(limit):
        logits = out.logits[:, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        token = _choose(logits, sampling.temperature, generator, batch, live)
        tokens[live, step] = token
        sampled_lp[live, step] = logprobs.gather(-1, token[:, None]).squeeze(-1)
        if k:
            values, ids = logprobs.topk(k, dim=-1)
            topk_ids[live, step], topk_lp[live, step] = ids, values
        lengths[live] += 1
        done = torch.isin(token, eos)
        finished_by_eos[live[done]] = True
        keep = ~done
        if step == limit - 1 or not keep.any():
            break
        if not keep.all():
            kept = keep.nonzero().squeeze(-1)
            cache.batch_select_indices(kept)
            live, token, attention_mask, next_position = (
                live[kept],
                token[kept],
                attention_mask[kept],
                next_position[kept],
            )
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(live), 1))], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=next_position[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        next_position = next_position + 1

    width = int(lengths.max()) if batch else 0
    return Rollouts(
        prompt_ids=[list(p) for p in prompts],
        response_ids=tokens[:, :width].cpu(),
        lengths=lengths.cpu(),
        topk_ids=topk_ids[:, :width].cpu(),
        topk_logprobs=topk_lp[:, :width].cpu(),
        sampled_logprobs=sampled_lp[:, :width].cpu(),
        finish_reasons=["eos" if e else "length" for e in finished_by_eos.tolist()],
    )


def _choose(
    logits: torch.Tensor, temperature: float, generator: torch.Generator, batch: int, live: torch.Tensor
) -> torch.Tensor:
    """Greedy at temperature 0, else a Gumbel-max sample from softmax(logits / temperature)."""
    if temperature == 0:
        return logits.argmax(-1)
    uniform = torch.rand((batch, logits.shape[-1]), generator=generator, device=logits.device)[live]
    gumbel = -torch.log(-torch.log(uniform))
    return (logits / temperature + gumbel).argmax(-1)
