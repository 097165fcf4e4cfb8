"""Per-token and per-rollout trace tables (columnar, written as parquet by the run directory)."""

from __future__ import annotations

import pyarrow as pa
import torch

from opdctl.config.schema import Config
from opdctl.training.outcome import StepOutcome

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
        ("reward", pa.float32()),  # null without a task reward
        ("teacher_prompt_ids", pa.list_(pa.int32())),  # null unless the teacher has a privileged context
        ("teacher", pa.string()),  # null with one teacher: the name of the one of several that scored the rollout
    ]
)


def traced_rows(config: Config, batch: int) -> list[int]:
    wanted = config.output.trace_rollouts
    return list(range(batch if wanted == "all" else min(batch, wanted)))


def trace_tables(
    step: int,
    prompt_indices: list[int],
    config: Config,
    outcome: StepOutcome,
    max_len: int,
    teacher_prompts: list[list[int]] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """The traced rollouts of one step: (tokens table, rollouts table); ``teacher_prompts``: what the teacher
    scored each rollout after, when not the student's prompt."""
    rows = torch.tensor(traced_rows(config, len(outcome.finish_reasons)), dtype=torch.long)
    r_idx, pos = outcome.mask[rows].nonzero(as_tuple=True)
    b = rows[r_idx]

    def at(values: torch.Tensor) -> list:
        return values[b, pos].tolist()

    tokens = pa.Table.from_pydict(
        {
            "step": [step] * len(b),
            "rollout": b.tolist(),
            "position": pos.tolist(),
            "token_id": at(outcome.response_ids),
            "overlap": at(outcome.overlap),
            "signal": at(outcome.signal),
            "bad": at(outcome.bad),
            "weight": at(outcome.weight),
            "loss_weight": at(outcome.loss_weight),
            "teacher_logprob": at(outcome.teacher_logprob),
            "student_logprob": at(outcome.student_logprob),
            "teacher_top1": at(outcome.teacher_top1),
            "student_top1": at(outcome.student_top1),
        },
        schema=TOKEN_SCHEMA,
    )
    picked = rows.tolist()
    n = config.rollout.n
    rollout_table = pa.Table.from_pydict(
        {
            "step": [step] * len(picked),
            "rollout": picked,
            "prompt_index": [prompt_indices[i // n] for i in picked],
            "prompt_ids": [outcome.prompt_ids[i] for i in picked],
            "length": outcome.lengths[rows].tolist(),
            "effective_length": outcome.effective_length[rows].tolist(),
            "first_bad": outcome.first_bad[rows].tolist(),
            "bad_events": outcome.bad[rows].sum(-1).tolist(),
            "finish_reason": [outcome.finish_reasons[i] for i in picked],
            "generated": outcome.generated[rows].tolist(),
            "max_len": [max_len] * len(picked),
            "reward": outcome.reward[rows].tolist() if outcome.reward is not None else [None] * len(picked),
            "teacher_prompt_ids": [teacher_prompts[i] for i in picked] if teacher_prompts else [None] * len(picked),
            "teacher": [outcome.teachers[i] for i in picked] if outcome.teachers else [None] * len(picked),
        },
        schema=ROLLOUT_SCHEMA,
    )
    return tokens, rollout_table
