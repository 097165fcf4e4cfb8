"""The training loop's orchestration through in-memory backends (tests/fakes.py): no model is loaded.

What each step does with the student's rollouts and the teacher's scores: drift weights
and effective lengths, skipped non-finite updates, the budget, truncation accounting,
which steps and rollouts are traced, that every generation strategy gives the same step, and
stopping on a signal.
"""

from __future__ import annotations

import os
import signal

import pyarrow.parquet as pq
import pytest
import torch

from opdctl.config.files import validate
from opdctl.data.prompts import PromptSet
from opdctl.errors import RunError
from opdctl.runs.rundir import RunDir
from opdctl.training.stopping import Stopped, StopRequest
from opdctl.training.trainer import Trainer

from .conftest import COSTS
from .fakes import DRIFT_FROM, LENGTHS, TEACHER_LOGPROBS, FakeStudent, FakeTeacher

PROMPTS = PromptSet(ids=[[p] for p in LENGTHS], texts=[str(p) for p in LENGTHS], answers=[None] * len(LENGTHS))
W_DROP = 0.5  # two bad events bring a weight to 0


def make_trainer(tmp_path, teacher: FakeTeacher | None = None, **sections) -> Trainer:
    raw = {
        "rollout": {"n": 1, "max_new_tokens": 12},
        "loss": {"k": 4},
        "prune": {"k": 2, "threshold": 0.7, "w_drop": W_DROP, "w_base": 0.5},
        "budget": {"init_len": 10, "min_len": 4, "max_len": 12, "increment": 2, "hit_ratio": 0.5, "margin": 0},
        "optim": {"lr": 0.1, "steps": 3, "prompts_per_step": 4},
        "output": {"dir": str(tmp_path / "run"), "save_every": 100, "trace_rollouts": "all"},
        "eval": {"bench": []},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    config = validate(raw)
    run = RunDir.create(tmp_path / "run", config.to_yaml())
    return Trainer(config, run, FakeStudent(), teacher or FakeTeacher(), PROMPTS)


def rollout_traces(trainer: Trainer):
    return pq.read_table(trainer.run.traces_path / "rollouts").to_pandas()


def effective(prompt: int, kept: int) -> int:
    """Tokens whose weight stays above 0: every one before the second bad event."""
    return min(kept, DRIFT_FROM[prompt] + 1)


def test_a_step_weights_tokens_by_the_teachers_agreement(tmp_path):
    trainer = make_trainer(tmp_path)
    record = trainer.train_step()[0]
    traces = rollout_traces(trainer)
    assert len(traces) == len(LENGTHS)
    for row in traces.itertuples():
        prompt = row.prompt_ids[0]
        assert row.length == min(LENGTHS[prompt], 10)
        assert row.finish_reason == ("eos" if LENGTHS[prompt] <= 10 else "length")
        assert row.first_bad == (DRIFT_FROM[prompt] if DRIFT_FROM[prompt] < row.length else -1)
        assert row.effective_length == effective(prompt, row.length)
    assert record["effective_length"] == traces.effective_length.mean()
    assert record["tokens_generated"] == record["tokens_scored"] == traces.length.sum()
    assert record["max_len"] == 10 and not record["skipped"]


def test_updates_move_the_student_towards_the_teacher_on_its_candidates(tmp_path):
    def kl_on_candidates(logits: torch.Tensor) -> float:  # KL(p || q) over ids 0..k-1, both renormalised there
        p, q = torch.log_softmax(logits.detach()[:4], -1), torch.log_softmax(TEACHER_LOGPROBS[:4], -1)
        return float((p.exp() * (p - q)).sum())

    trainer = make_trainer(tmp_path)
    before = kl_on_candidates(trainer.student.model.logits)
    for _ in range(3):
        trainer.train_step()
    assert kl_on_candidates(trainer.student.model.logits) < before / 2


def test_micro_batches_give_the_update_of_one_batch(tmp_path):
    whole = make_trainer(tmp_path / "a")
    split = make_trainer(tmp_path / "b", optim={"grad_accum": 3})
    a, b = whole.train_step()[0], split.train_step()[0]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert torch.allclose(whole.student.model.logits, split.student.model.logits, atol=1e-7)


def test_a_non_finite_step_is_skipped_and_a_streak_stops_the_run(tmp_path):
    teacher = FakeTeacher(broken=True)
    trainer = make_trainer(tmp_path, teacher, optim={"max_nonfinite_steps": 2})
    before = trainer.student.model.logits.detach().clone()
    record = trainer.train_step()[0]
    assert record["skipped"] and trainer.state.nonfinite_streak == 1
    assert torch.equal(trainer.student.model.logits, before)  # no optimizer step
    assert trainer.updater.scheduler.last_epoch == 0  # nor a learning-rate step
    teacher.broken = False
    assert not trainer.train_step()[0]["skipped"] and trainer.state.nonfinite_streak == 0
    teacher.broken = True
    trainer.train_step()
    with pytest.raises(RunError, match=r"2 updates in a row had a non-finite loss or gradient: .*--resume"):
        trainer.train_step()


def test_the_budget_shrinks_on_a_miss_and_the_next_step_generates_under_it(tmp_path):
    trainer = make_trainer(tmp_path, budget={"patience": 1})
    first = trainer.train_step()[0]  # the longest effective length is 7, below the boundary of 10
    assert (first["max_len"], first["next_max_len"], first["hit_ratio"]) == (10, 8, 0.0)
    second = trainer.train_step()[0]
    assert second["max_len"] == 8 and trainer.student.limits == [10, 8]


def test_the_budget_grows_when_enough_rollouts_reach_its_edge(tmp_path):
    trainer = make_trainer(tmp_path, budget={"init_len": 4, "hit_ratio": 0.5})  # 2 of 4 keep 4 reliable tokens
    record = trainer.train_step()[0]
    assert (record["max_len"], record["next_max_len"], record["hit_ratio"]) == (4, 6, 0.5)


def test_without_the_budget_every_step_generates_up_to_the_hard_limit(tmp_path):
    trainer = make_trainer(tmp_path, budget={"enable": False})
    records = [trainer.train_step()[0] for _ in range(2)]
    assert trainer.student.limits == [12, 12]
    assert all(r["next_max_len"] == 12 and r["hit_ratio"] is None for r in records)


def test_truncation_stops_drifted_rollouts_and_counts_what_was_not_generated(tmp_path):
    trainer = make_trainer(tmp_path, rollout={"truncate_on_drift": True, "chunk_tokens": 2})
    record = trainer.train_step()[0]
    traces = rollout_traces(trainer)
    for row in traces.itertuples():
        prompt = row.prompt_ids[0]
        if DRIFT_FROM[prompt] + 1 < min(LENGTHS[prompt], 10):  # the weight reaches 0 before the end
            assert row.finish_reason == "drift"
            assert row.length == DRIFT_FROM[prompt] + 2  # kept up to the second bad event
            assert row.generated == 2 * ((row.length + 1) // 2)  # the whole chunk it was stopped in
        else:
            assert row.finish_reason != "drift" and row.generated == row.length
    stopped = traces[traces.finish_reason == "drift"]
    assert len(stopped) == record["finish_drift"] == 2
    assert record["tokens_not_generated"] == (10 - stopped.generated).sum()
    assert record["tokens_generated"] == record["tokens_scored"] == traces.generated.sum()
    assert record["tokens_trained"] == traces.length.sum()


@pytest.mark.parametrize("strategy", ["overlapped", "truncated"])
def test_every_generation_strategy_gives_the_same_step_when_nothing_is_cut(tmp_path, strategy):
    settings = {"prune": {"stop_weight": 0.0, "w_drop": 0.01}}  # weights never reach 0: nothing stops
    reference = make_trainer(tmp_path / "sequential", **settings)
    if strategy == "overlapped":
        other = make_trainer(tmp_path / strategy, FakeTeacher(overlaps_generation=True), **settings)
    else:
        other = make_trainer(tmp_path / strategy, rollout={"truncate_on_drift": True, "chunk_tokens": 3}, **settings)
    for _ in range(2):
        a, b = reference.train_step()[0], other.train_step()[0]
        assert {k: v for k, v in a.items() if k not in COSTS} == {k: v for k, v in b.items() if k not in COSTS}
        assert a["drift_checks"] == 0 and (b["drift_checks"] > 0) == (strategy == "truncated")
    if strategy == "overlapped":
        assert other.teacher.scored_rows == [2, 2, 2, 2]  # rows went to the teacher as they finished


@pytest.mark.parametrize(("every", "rollouts", "steps", "rows"), [(2, "all", [1, 2, 4], 4), (3, 2, [1, 3], 2)])
def test_traced_steps_and_rollouts_follow_the_output_settings(tmp_path, every, rollouts, steps, rows):
    trainer = make_trainer(tmp_path, output={"trace_every": every, "trace_rollouts": rollouts})
    for _ in range(4):
        trainer.train_step()
    traces = rollout_traces(trainer)
    assert sorted(set(traces.step)) == steps
    assert all(list(group.rollout) == list(range(rows)) for _, group in traces.groupby("step"))


def test_no_traces_when_tracing_is_off(tmp_path):
    trainer = make_trainer(tmp_path, output={"trace_every": 0})
    trainer.train_step()
    assert trainer.run.trace_files("rollouts") == []


def test_a_signal_during_a_step_stops_the_run_after_it_with_a_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, optim={"steps": 5})
    generate = trainer.student.generate

    def signalled_in_step_two(*args, **kwargs):
        if len(trainer.student.limits) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return generate(*args, **kwargs)

    trainer.student.generate = signalled_in_step_two
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped, match=r"stopped on SIGTERM after step 2, checkpoint saved; continue with: ") as stop:
        trainer.fit()
    assert stop.value.exit_code == 128 + signal.SIGTERM
    assert trainer.state.step == 2 and [step for step, _ in trainer.run.checkpoints()] == [2]
    assert [r["step"] for r in trainer.run.read_metrics()] == [1, 2]
    assert signal.getsignal(signal.SIGTERM) is handler  # the run's handler is gone with it


class TwoProcesses:
    """A World whose other process asked for ``other`` (a signal number or None)."""

    def __init__(self, other: int | None) -> None:
        self.other = other

    def collect(self, value):
        return [value, self.other]


def test_every_process_stops_after_the_same_step_when_any_was_asked():
    here = StopRequest()
    assert not here.agreed(TwoProcesses(None))
    assert here.agreed(TwoProcesses(signal.SIGTERM)) and here.signum == signal.SIGTERM


@pytest.mark.parametrize(
    ("estimator", "divergence"),
    [
        ("forward_topk", lambda p, q: float((q.exp() * (q - p)).sum())),  # KL(q || p), what it minimises
        ("k3", lambda p, q: float((p.exp() * (p - q)).sum())),  # KL(p || q)
    ],
)
def test_every_estimator_moves_the_student_towards_the_teacher(tmp_path, estimator, divergence):
    trainer = make_trainer(tmp_path, loss={"estimator": estimator})
    before = divergence(torch.log_softmax(trainer.student.model.logits.detach(), -1), TEACHER_LOGPROBS)
    for _ in range(3):
        assert not trainer.train_step()[0]["skipped"]
    after = divergence(torch.log_softmax(trainer.student.model.logits.detach(), -1), TEACHER_LOGPROBS)
    assert after < 0.6 * before
