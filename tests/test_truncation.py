"""Truncation on drift: exactness against full generation + scoring cut at the same point, and its accounting."""

import json
import math

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from opdctl.algorithm.drift import measure_drift
from opdctl.algorithm.losses import LossTargets, opd_loss
from opdctl.analysis import RunTraces, summarize
from opdctl.backends.types import GeneratedChunk, Rollouts, Sampling
from opdctl.cli import app
from opdctl.config.files import validate
from opdctl.data.demo_task import held_out
from opdctl.models.demo import prompt_ids
from opdctl.models.demo_tokenizer import build_tokenizer
from opdctl.training.monitor import DriftMonitor, next_chunk
from opdctl_hf import HFStudent, HFTeacher

from .conftest import read_metrics, tiny_config, write_config

PROMPTS = [prompt_ids(build_tokenizer(), p) for p in held_out(10)]
SETTINGS = {
    "loss": {"k": 4},
    "prune": {"k": 2, "threshold": 0.5, "w_drop": 0.5, "w_base": 0.5},
    "rollout": {"max_new_tokens": 40, "truncate_on_drift": True, "chunk_tokens": 5},
    "budget": {"enable": False},
}


def _cut(rollouts: Rollouts, lengths: torch.Tensor) -> Rollouts:
    """The same rollouts, each cut to ``lengths``."""
    cut = Rollouts(**{**rollouts.__dict__, "lengths": torch.minimum(rollouts.lengths, lengths)})
    return cut.select(list(range(len(cut))))


@pytest.mark.parametrize(
    ("chunk", "chunking", "overshoot"),
    [
        pytest.param(1, "exact", 0, marks=pytest.mark.slow),
        (5, "exact", 0),
        (16, "exact", 0),
        (5, "exact", 2),
        (5, "predicted", 0),
    ],
)
def test_kept_tokens_match_full_generation_and_scoring_cut_at_the_same_point(tiny_models, chunk, chunking, overshoot):
    rollout = {**SETTINGS["rollout"], "chunk_tokens": chunk, "chunking": chunking, "max_overshoot": overshoot}
    config = validate({**SETTINGS, "rollout": rollout})
    student = HFStudent(HFStudent.Config(model=str(tiny_models["student"])))
    teacher = HFTeacher(HFTeacher.Config(model=str(tiny_models["teacher"]), logprob_chunk=7))
    sampling = Sampling(40, temperature=1.0, record_topk=4, seed=3)

    monitor = DriftMonitor(config, teacher.stream(PROMPTS), len(PROMPTS), 40, 5)
    truncated = student.generate(PROMPTS, sampling, monitor=monitor)
    streamed = monitor.scores(truncated.response_ids.shape[1])
    reasons = truncated.finish_reasons
    assert "drift" in reasons and len(set(reasons)) > 1, reasons
    if chunking == "exact":  # at most max_overshoot tokens generated past a stop, then discarded
        past = monitor.scored - truncated.lengths
        assert (past >= 0).all() and int(past.max()) <= overshoot and (past.any() == (overshoot > 0)), past

    full = student.generate(PROMPTS, sampling)
    full_scores = teacher.score(full, full.query_ids(), 2)  # the whole rollouts, then cut
    reference = _cut(full, truncated.lengths)
    width = reference.response_ids.shape[1]
    mask = truncated.mask
    assert torch.equal(truncated.response_ids[mask], reference.response_ids[mask])
    assert torch.equal(truncated.topk_ids[mask], reference.topk_ids[mask])

    a, b = measure_drift(config, truncated, streamed), measure_drift(config, reference, _trim(full_scores, width))
    assert torch.equal(a.overlap, b.overlap) and torch.equal(a.bad, b.bad)
    assert torch.equal(a.weights.weight, b.weights.weight) and torch.equal(a.weights.loss_weight, b.weights.loss_weight)
    assert torch.allclose(streamed.query_logprobs[mask], full_scores.query_logprobs[:, :width][mask], atol=1e-5)

    for i, reason in enumerate(reasons):
        w = a.weights.weight[i, : truncated.lengths[i]]
        if reason == "drift":  # stopped at the first position whose weight reached the stop level
            assert w[-1] <= 0.0 and (w[:-1] > 0).all()
        else:
            assert (w > 0).all() and reason == full.finish_reasons[i]

    with torch.no_grad():
        lp_a = student.logprobs(truncated, truncated.query_ids())
        lp_b = student.logprobs(reference, reference.query_ids())
    n = int(mask.sum())
    loss_a = opd_loss(config, lp_a, LossTargets(streamed.query_logprobs, a.weights.loss_weight, n))
    loss_b = opd_loss(config, lp_b, LossTargets(full_scores.query_logprobs[:, :width], b.weights.loss_weight, n))
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-5, abs=1e-6)


def _trim(scores, width):
    from opdctl.backends.types import TeacherScores

    return TeacherScores(scores.topk_ids[:, :width], scores.topk_logprobs[:, :width], scores.query_logprobs[:, :width])


@pytest.mark.slow
def test_training_with_truncation_accounts_for_every_token(tiny_models, tmp_path):
    settings = {**SETTINGS, "rollout": {**SETTINGS["rollout"], "max_overshoot": 2}}
    config = tiny_config(
        tiny_models,
        tmp_path / "run",
        optim={"steps": 3},
        **{k: {**tiny_config(tiny_models, tmp_path)[k], **v} for k, v in settings.items()},
    )
    result = CliRunner().invoke(app, ["train", "-c", str(write_config(tmp_path / "c.yaml", config))])
    assert result.exit_code == 0, result.output
    steps = [r for r in read_metrics(tmp_path / "run") if "eval" not in r]
    assert sum(r["finish_drift"] for r in steps) > 0
    rollouts = pq.read_table(tmp_path / "run" / "traces" / "rollouts").to_pandas()
    tokens = pq.read_table(tmp_path / "run" / "traces" / "tokens").to_pandas()
    for record in steps:
        mine = rollouts[rollouts.step == record["step"]]
        stopped = mine[mine.finish_reason == "drift"]
        assert record["tokens_generated"] == record["tokens_scored"] == mine.generated.sum()
        assert record["tokens_not_generated"] == (40 - stopped.generated).sum()
        assert record["finish_drift"] == len(stopped)
        past = mine.generated - mine.length  # generated past a stop, then discarded: at most max_overshoot
        assert past.between(0, 2).all() and (past[mine.finish_reason != "drift"] == 0).all()
        assert record["tokens_discarded"] == past.sum()
        assert record["tokens_trained"] == len(tokens[tokens.step == record["step"]])
        # two bad events reach the stop, so every chunk is max_overshoot + 1 = 3 decode steps: one check per 3
        assert record["drift_checks"] == math.ceil(mine.generated.max() / 3)
    assert (stopped.effective_length == stopped.length - 1).all()  # the last kept token has weight 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rollouts_stopped_on_drift"] == (rollouts.finish_reason == "drift").sum()
    assert summary["rollouts"] == len(rollouts)
    assert summary["tokens_not_generated"] == sum(r["tokens_not_generated"] for r in steps)
    assert summary["tokens_discarded"] == (rollouts.generated - rollouts.length).sum()
    assert summary["drift_checks"] == sum(r["drift_checks"] for r in steps)
    inspected = summarize(RunTraces(tmp_path / "run"), level=0.5, rows=10).totals  # opdctl inspect-drift's
    assert inspected["tokens_discarded"] == summary["tokens_discarded"]
    assert inspected["drift_checks"] == summary["drift_checks"] > 0
    assert "rollouts stopped on drift" in result.output and "drift checks" in result.output


def test_plain_opd_turns_truncation_off():
    """Truncation stops on Prune-OPD's weights; prune.enable=false (plain OPD) has none, so it is off."""
    assert not validate({"rollout": {"truncate_on_drift": True}, "prune": {"enable": False}}).rollout.truncate_on_drift
    assert validate({"rollout": {"truncate_on_drift": True}}).rollout.truncate_on_drift


class _Stream:
    """A teacher stream that records each chunk's length; its top-k agrees with the student's (no drift) or never
    does (every token a bad event)."""

    def __init__(self, agree: bool) -> None:
        self.agree, self.widths = agree, []

    def extend(self, rows, tokens, lengths, query_ids, top_k):
        from opdctl.backends.types import QueryLayout, TeacherScores

        self.widths.append(tokens.shape[1])
        ids = QueryLayout.candidates(query_ids)[..., :top_k] if self.agree else torch.full((*tokens.shape, top_k), 99)
        return TeacherScores(ids, torch.zeros(ids.shape), torch.zeros(query_ids.shape))

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("chunking", "agree", "widths", "stop"),
    [
        ("exact", False, [5] * 20, 99),  # 100 bad events to the stop, at most 5 tokens between checks
        ("auto", False, [5] * 20, 99),
        ("predicted", False, [100], 99),  # no stop can come before 100 tokens; every token is bad
        ("predicted", True, [100, 15], None),  # no bad event: no check before a stop could come
    ],
)
def test_checks_come_where_a_stop_can_or_is_expected_to_happen(chunking, agree, widths, stop):
    config = validate(
        {
            **SETTINGS,
            "prune": {**SETTINGS["prune"], "w_drop": 0.01},
            "rollout": {**SETTINGS["rollout"], "max_new_tokens": 115, "chunking": chunking},
        }
    )
    stream = _Stream(agree)
    monitor = DriftMonitor(config, stream, 2, 115, 5)
    topk = torch.arange(4).repeat(2, 115, 1)  # the student's top-4 ids at every position
    start, stops = 0, {}
    while start < 115 and not stops:
        end = min(115, start + monitor.chunk_tokens)
        chunk = GeneratedChunk(
            rows=[0, 1],
            start=start,
            lengths=torch.tensor([end, end]),
            tokens=topk[:, start:end, 0],
            topk_ids=topk[:, start:end],
            topk_logprobs=torch.full((2, end - start, 4), -1.0),
        )
        stops, start = monitor.observe(chunk), end
    assert stream.widths == widths
    assert stops == ({0: stop, 1: stop} if stop is not None else {})


@pytest.mark.parametrize(
    ("bad_so_far", "overshoot", "chunk"),
    [
        (9, 0, 1),  # one bad event from the stop (10): check the next token
        (9, 2, 3),  # ... or the next 3, generating at most 2 past the stop
        (5, 2, 5),  # 5 bad events away: no stop can come in fewer tokens anyway
        (9, 100, 64),  # never longer than chunk_tokens
        (0, 0, 10),
    ],
)
def test_exact_chunks_end_where_a_stop_can_come_or_max_overshoot_tokens_later(bad_so_far, overshoot, chunk):
    bad = torch.tensor([0, bad_so_far])
    assert next_chunk(bad, generated=40, to_stop=10, longest=64, predicting=False, overshoot=overshoot) == chunk


def test_a_teacher_that_rescores_its_prefix_is_not_streamed_unless_asked():
    from opdctl.training.generation import truncates

    from .fakes import FakeTeacher

    served, local = FakeTeacher(rescores_prefix=True), FakeTeacher()
    config = validate({"rollout": {"truncate_on_drift": True}})
    assert truncates(config, local) and not truncates(config, served)
    for chunking in ("exact", "predicted"):
        assert truncates(validate({"rollout": {"truncate_on_drift": True, "chunking": chunking}}), served)
    assert not truncates(validate({"rollout": {"truncate_on_drift": False, "chunking": "exact"}}), local)


class _TransformersEngine:
    """A rollout engine that generates with transformers (opdctl's own sampler), one whole response per call."""

    def __init__(self, student: HFStudent) -> None:
        self.student, self.calls = student, 0

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> Rollouts:
        self.calls += 1
        return self.student.generate(prompts, sampling)


@pytest.mark.parametrize("chunking", ["exact", "predicted"])
def test_an_engine_continued_chunk_by_chunk_stops_where_the_decode_loop_does(chunking):
    """Greedy, so continuing prompt + tokens so far gives the same tokens as one pass: the same cuts and reasons.
    The demo's models, whose greedy answers end at EOS, drift or run to the limit."""
    from opdctl.backends.chunked import generate_in_chunks

    prune = {**SETTINGS["prune"], "k": 1, "w_drop": 0.2}
    config = validate({**SETTINGS, "prune": prune, "rollout": {**SETTINGS["rollout"], "chunking": chunking}})
    student = HFStudent(HFStudent.Config(model="demo:student"))
    teacher = HFTeacher(HFTeacher.Config(model="demo:teacher"))
    sampling = Sampling(80, temperature=0.0, record_topk=4)

    def monitored(generate):
        monitor = DriftMonitor(config, teacher.stream(PROMPTS), len(PROMPTS), 80, 5)
        return generate(monitor), monitor.scored

    engine = _TransformersEngine(student)
    chunked, chunked_scored = monitored(lambda m: generate_in_chunks(engine, PROMPTS, sampling, m))
    looped, looped_scored = monitored(lambda m: student.generate(PROMPTS, sampling, monitor=m))
    assert set(chunked.finish_reasons) == {"drift", "eos", "length"}, chunked.finish_reasons
    assert chunked.finish_reasons == looped.finish_reasons
    assert torch.equal(chunked.lengths, looped.lengths) and torch.equal(chunked_scored, looped_scored)
    mask = looped.mask
    for name in ("response_ids", "topk_ids"):
        assert torch.equal(getattr(chunked, name)[mask], getattr(looped, name)[mask]), name
    assert torch.allclose(chunked.sampled_logprobs[mask], looped.sampled_logprobs[mask], atol=1e-5)
    assert engine.calls > 1


def test_each_chunk_samples_with_seeds_of_its_own():
    from opdctl.backends.chunked import chunk_seed

    seeds = [chunk_seed(Sampling(64, seed=seed), start) for seed in (0, 1, 2) for start in (0, 4, 8, 12)]
    assert len(set(seeds)) == len(seeds)
    assert chunk_seed(Sampling(64, seed=1), 4) == chunk_seed(Sampling(64, seed=1), 4)  # reproducible
