"""One traced rollout, token by token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opdctl.analysis.reader import RunTraces


@dataclass
class TokenRow:
    position: int
    text: str
    overlap: float
    signal: float
    bad: bool
    weight: float
    loss_weight: float
    teacher_logprob: float
    student_logprob: float
    teacher_top1: str
    student_top1: str


@dataclass
class RolloutView:
    step: int
    rollout: int
    prompt: str
    length: int
    effective_length: int
    first_bad: int
    bad_events: int
    finish_reason: str
    max_len: int
    tokens: list[TokenRow]

    def to_dict(self) -> dict[str, Any]:
        return {k: v if k != "tokens" else [t.__dict__ for t in v] for k, v in self.__dict__.items()}


def rollout_view(traces: RunTraces, step: int, rollout: int) -> RolloutView:
    """The decoded response of one rollout with every traced per-token value."""
    row, table = traces.rollout(step, rollout)
    tokenizer = traces.tokenizer()
    columns = table.to_pydict()

    def piece(token_id: int) -> str:
        return tokenizer.decode([token_id], skip_special_tokens=False)

    tokens = [
        TokenRow(
            position=columns["position"][i],
            text=piece(columns["token_id"][i]),
            overlap=columns["overlap"][i],
            signal=columns["signal"][i],
            bad=columns["bad"][i],
            weight=columns["weight"][i],
            loss_weight=columns["loss_weight"][i],
            teacher_logprob=columns["teacher_logprob"][i],
            student_logprob=columns["student_logprob"][i],
            teacher_top1=piece(columns["teacher_top1"][i]),
            student_top1=piece(columns["student_top1"][i]),
        )
        for i in range(table.num_rows)
    ]
    return RolloutView(
        step=step,
        rollout=rollout,
        prompt=tokenizer.decode(row["prompt_ids"], skip_special_tokens=False),
        length=row["length"],
        effective_length=row["effective_length"],
        first_bad=row["first_bad"],
        bad_events=row["bad_events"],
        finish_reason=row["finish_reason"],
        max_len=row["max_len"],
        tokens=tokens,
    )
