"""Several teachers (teachers, data.teacher_field): each row scored by its own teacher, metrics and traces per
teacher, one teacher by default."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from opdctl.backends.routed import RoutedTeacher
from opdctl.backends.types import Sampling
from opdctl.data.demo_task import held_out
from opdctl.models.demo import prompt_ids
from opdctl.models.demo_tokenizer import build_tokenizer

from .conftest import assert_one_line_error, read_metrics, run_cli, tiny_config, write_config

ROUTES = ["a", "b", "b", "a", "b"]


@pytest.fixture
def pair(tiny_models):
    """Two different HF teachers (the tiny teacher and the tiny student), one student's rollouts."""
    from opdctl_hf import HFStudent, HFTeacher

    teachers = {name: HFTeacher(HFTeacher.Config(model=str(tiny_models[model]))) for name, model in
                (("a", "teacher"), ("b", "student"))}  # fmt: skip
    student = HFStudent(HFStudent.Config(model=str(tiny_models["student"])))
    prompts = [prompt_ids(build_tokenizer(), p) for p in held_out(len(ROUTES))]
    rollouts = student.generate(prompts, Sampling(max_new_tokens=16, temperature=1.0, record_topk=4, seed=2))
    return teachers, prompts, rollouts


def test_each_row_is_scored_by_its_own_teacher(pair):
    teachers, _, rollouts = pair
    routed = RoutedTeacher(teachers).for_rows(ROUTES)
    scores = routed.score(rollouts, rollouts.query_ids(), 4)
    alone = {name: teacher.score(rollouts, rollouts.query_ids(), 4) for name, teacher in teachers.items()}
    mask = rollouts.mask
    for row, name in enumerate(ROUTES):
        valid = mask[row]
        assert torch.allclose(scores.query_logprobs[row][valid], alone[name].query_logprobs[row][valid], atol=1e-5)
        assert torch.equal(scores.topk_ids[row][valid], alone[name].topk_ids[row][valid])


def test_a_routed_stream_gives_what_routed_scoring_does(pair):
    teachers, prompts, rollouts = pair
    routed = RoutedTeacher(teachers).for_rows(ROUTES)
    whole = routed.score(rollouts, rollouts.query_ids(), 4)
    stream, query = routed.stream(prompts), rollouts.query_ids()
    streamed = torch.zeros_like(whole.query_logprobs)
    for start in range(0, rollouts.response_ids.shape[1], 6):
        lengths = (rollouts.lengths - start).clamp(0, 6)
        live = [row for row in range(len(prompts)) if lengths[row] > 0]
        part = stream.extend(live, rollouts.response_ids[live, start : start + 6], lengths[live],
                             query[live, start : start + 6], 4)  # fmt: skip
        streamed[live, start : start + part.query_logprobs.shape[1]] = part.query_logprobs
    stream.close()
    mask = rollouts.mask
    assert torch.allclose(streamed[mask], whole.query_logprobs[mask], atol=1e-4)


def test_without_routes_the_first_teacher_scores_everything(pair):
    teachers, _, rollouts = pair
    scores = RoutedTeacher(teachers).score(rollouts, rollouts.query_ids(), 4)
    first = teachers["a"].score(rollouts, rollouts.query_ids(), 4)
    assert torch.allclose(scores.query_logprobs[rollouts.mask], first.query_logprobs[rollouts.mask], atol=1e-5)


def two_teacher_run(tiny_models, tmp_path, sources: list[str]) -> dict:
    data = tmp_path / "rows.jsonl"
    problems = held_out(len(sources))
    rows = [{"prompt": p.prompt, "answer": p.answer, "source": s} for p, s in zip(problems, sources, strict=True)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    sections = {"source": str(data), "limit": None, "teacher_field": "source"}
    config = tiny_config(tiny_models, tmp_path / "run", data=sections)
    config["teachers"] = {
        "arith": {"backend": "hf", "model": str(tiny_models["teacher"])},
        "other": {"backend": "hf", "model": str(tiny_models["student"])},
    }
    config["optim"]["steps"] = 2
    return config


def test_a_run_with_two_teachers_reports_and_traces_each(tiny_models, tmp_path):
    config = two_teacher_run(tiny_models, tmp_path, ["arith", "other", "arith", "other", "arith", "other"])
    result = run_cli("train", "-c", str(write_config(tmp_path / "c.yaml", config)))
    assert result.exit_code == 0, result.output
    steps = [r for r in read_metrics(tmp_path / "run") if "eval" not in r]
    for record in steps:
        parts = record["by_teacher"]
        assert sum(part["rollouts"] for part in parts.values()) == 6  # 3 prompts x 2 rollouts
        assert all(0.0 <= part["overlap"] <= 1.0 for part in parts.values())
    traced = pq.read_table(tmp_path / "run" / "traces" / "rollouts").to_pandas()
    sources = ["arith", "other"] * 3
    assert all(row.teacher == sources[row.prompt_index] for row in traced.itertuples())


def test_a_row_naming_an_unconfigured_teacher_stops_the_run(tiny_models, tmp_path):
    config = two_teacher_run(tiny_models, tmp_path, ["arith", "geometry", "other"])
    result = run_cli("train", "-c", str(write_config(tmp_path / "c.yaml", config)))
    assert_one_line_error(result, "data.teacher_field='source' names teachers that are not configured: 'geometry'")
    assert not (tmp_path / "run").exists()
