"""Per-token and per-rollout trace tables (columnar, written as parquet by the run directory)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import torch

from opdctl.backends import Rollouts, TeacherScores
from opdctl.config import Config
from opdctl.drift import first_bad_position

if TYPE_CHECKING:
    from opdctl.trainer import StepDrift

TOKEN_SCHEMA = pa.schema(
    [
        ("step", pa.int32()),
        ("rollout", pa.int32()),
        ("position", pa.int32()),
        ("token_id", pa.int32()),
        ("overlap", pa.float32()),
        ("signal", pa.float32()),
        ("bad", pa.bool_()),
        ("weight", pa.float32()),
        ("loss_weight", pa.float32()),
        ("teacher_logprob", pa.float32()),
        ("student_logprob", pa.float32()),
        ("teacher_top1", pa.int32()),
        ("student_top1", pa.int32()),
    ]
)
ROLLOUT_SCHEMA = pa.schema(
    [
        ("step", pa.int32()),
        ("rollout", pa.int32()),
        ("prompt_index", pa.int32()),
        ("prompt_ids", pa.list_(pa.int32())),
        ("length", pa.int32()),
        ("effective_length", pa.int32()),
        ("first_bad", pa.int32()),
        ("bad_events", pa.int32()),
        ("finish_reason", pa.string()),
        ("generated", pa.int32()),
        ("max_len", pa.int32()),
    ]
)


def traced_rows(config: Config, batch: int) -> list[int]:
    wanted = config.output.trace_rollouts
    return list(range(batch if wanted == "all" else min(batch, wanted)))


def trace_tables(
    step: int,
    prompt_indices: list[int],
    config: Config,
    rollouts: Rollouts,
    scores: TeacherScores,
    measured: StepDrift,
    student_logprobs: torch.Tensor,
    max_len: int,
    generated: torch.Tensor,
) -> tuple[pa.Table, pa.Table]:
    """The traced rollouts of one step: (tokens table, rollouts table)."""
    rows = torch.tensor(traced_rows(config, len(rollouts)), dtype=torch.long)
    mask = rollouts.mask[rows]
    r_idx, pos = mask.nonzero(as_tuple=True)
    b = rows[r_idx]

    def at(values: torch.Tensor) -> list:
        return values[b, pos].tolist()

    tokens = pa.Table.from_pydict(
        {
            "step": [step] * len(b),
            "rollout": b.tolist(),
            "position": pos.tolist(),
            "token_id": at(rollouts.response_ids),
            "overlap": at(measured.overlap),
            "signal": at(measured.signal),
            "bad": at(measured.bad),
            "weight": at(measured.weights.weight),
            "loss_weight": at(measured.weights.loss_weight),
            "teacher_logprob": at(scores.query_logprobs[..., -1]),
            "student_logprob": at(student_logprobs),
            "teacher_top1": at(scores.topk_ids[..., 0]),
            "student_top1": at(rollouts.topk_ids[..., 0]),
        },
        schema=TOKEN_SCHEMA,
    )
    first_bad = first_bad_position(measured.bad)
    n = config.rollout.n
    rollout_table = pa.Table.from_pydict(
        {
            "step": [step] * len(rows),
            "rollout": rows.tolist(),
            "prompt_index": [prompt_indices[i // n] for i in rows.tolist()],
            "prompt_ids": [rollouts.prompt_ids[i] for i in rows.tolist()],
            "length": rollouts.lengths[rows].tolist(),
            "effective_length": measured.weights.effective_length[rows].tolist(),
            "first_bad": first_bad[rows].tolist(),
            "bad_events": measured.bad[rows].sum(-1).tolist(),
            "finish_reason": [rollouts.finish_reasons[i] for i in rows.tolist()],
            "generated": generated[rows].tolist(),
            "max_len": [max_len] * len(rows),
        },
        schema=ROLLOUT_SCHEMA,
    )
    return tokens, rollout_table
