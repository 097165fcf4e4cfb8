"""Batched sampling with a KV cache that records the student's top-k at every position.

transformers' ``generate`` would keep full-vocabulary scores for every step to
give us the top-k; this loop keeps only what OPD needs, and drops finished rows
from the batch (and the cache) as it goes.

Sampling uses the Gumbel-max trick with noise drawn for every original row at
every step, so a rollout's tokens do not change when other rows of its batch
finish (or are stopped) early.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection

import torch

from opdctl.backends.protocols import GenerationMonitor
from opdctl.backends.record import RolloutRecord
from opdctl.backends.types import FinishedCallback, Rollouts, Sampling

from .cache import decoding_cache
from .sequences import left_pad, positions


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    sampling: Sampling,
    eos_ids: Collection[int],
    pad_id: int,
    on_finished: FinishedCallback | None = None,
    monitor: GenerationMonitor | None = None,
) -> Rollouts:
    """One response per prompt, at most ``sampling.max_new_tokens`` long, ending at an EOS id.

    ``on_finished(rows, rollouts)`` hears about rows as soon as they finish. A
    ``monitor`` sees every ``monitor.chunk_tokens`` new tokens of the rows still
    running (and the last tokens of rows that ended) and may stop rows: they keep
    their tokens up to the position it names, end with reason "drift", and leave
    the batch.
    """
    device = next(model.parameters()).device
    batch, limit = len(prompts), sampling.max_new_tokens
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    record = RolloutRecord.allocate(prompts, limit, sampling.record_topk, device)

    def finish(rows: torch.Tensor, reason: str) -> None:
        for row in rows.tolist():
            record.reasons[row] = reason
        if on_finished and rows.numel():
            on_finished(rows.tolist(), record.rollouts(rows.tolist()))

    input_ids, attention_mask = left_pad(prompts, pad_id, device)
    position_ids = positions(attention_mask)
    cache = {cache_keyword(model): decoding_cache(model.config)}
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
        **cache,
    )
    live = torch.arange(batch, device=device)
    next_position = position_ids[:, -1] + 1
    chunk_start, unchecked = 0, list(range(batch))
    for step in range(limit):
        logits = out.logits[:, -1].float()
        token = _choose(logits, sampling, generator, batch, live)
        record.add(step, live, token, torch.log_softmax(logits, dim=-1))
        ended = torch.isin(token, eos)
        finish(live[ended], "eos")
        keep = ~ended
        last = step == limit - 1 or not keep.any()
        if monitor and (last or step + 1 - chunk_start == monitor.chunk_tokens):
            stopped = record.stop(monitor.observe(record.chunk(unchecked, chunk_start, step + 1)))
            keep &= ~torch.isin(live, torch.tensor(stopped, dtype=torch.long, device=device))
            chunk_start, unchecked = step + 1, live[keep].tolist()
        if last or not keep.any():
            break
        if not keep.all():
            kept = keep.nonzero().squeeze(-1)
            next(iter(cache.values())).batch_select_indices(kept)
            live, token, attention_mask = live[kept], token[kept], attention_mask[kept]
            next_position, keep = next_position[kept], keep[kept]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(live), 1))], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=next_position[:, None],
            use_cache=True,
            **cache,
        )
        next_position = next_position + 1
    finish(live[keep], "length")
    return record.rollouts(list(range(batch)))


def cache_keyword(model: torch.nn.Module) -> str:
    """transformers 5.24 renamed forward's ``past_key_values`` to ``cache`` (asked of the model under a LoRA
    wrapper, whose own forward takes ``**kwargs``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _choose(
    logits: torch.Tensor, sampling: Sampling, generator: torch.Generator, batch: int, live: torch.Tensor
) -> torch.Tensor:
    """Greedy at temperature 0, else a Gumbel-max sample from softmax(logits / temperature) within its top-p nucleus.

    Noise is drawn for every row of the whole batch (``sampling.batch_rows``) each step, whatever the
    nucleus, so each row's draw is independent of which other rows are running.
    """
    if sampling.temperature == 0:
        return logits.argmax(-1)
    rows = sampling.batch_rows or batch
    uniform = torch.rand((rows, logits.shape[-1]), generator=generator, device=logits.device)
    gumbel = -torch.log(-torch.log(uniform[sampling.row_offset + live]))
    scaled = logits / sampling.temperature
    if sampling.top_p < 1:
        scaled = _nucleus(scaled, sampling.top_p)
    return (scaled + gumbel).argmax(-1)


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` with every token outside the smallest set whose probability reaches ``top_p`` set to -inf."""
    ordered, order = logits.sort(dim=-1, descending=True)
    probs = ordered.softmax(-1)
    outside = probs.cumsum(-1) - probs >= top_p  # the tokens ranked above already reach top_p
    return logits.masked_fill(torch.zeros_like(outside).scatter(-1, order, outside), float("-inf"))
