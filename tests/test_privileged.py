"""A privileged-context teacher (data.teacher_prompt_template): it scores the student's own response tokens after
a prompt of its own, position for position, whichever way a step generates and scores."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from opdctl.backends.types import Sampling
from opdctl.config.files import validate
from opdctl.data.demo_task import held_out
from opdctl.data.prompts import chat_prompts, load_prompts, teacher_prompts
from opdctl.models.demo import prompt_ids
from opdctl.models.demo_tokenizer import build_tokenizer
from opdctl.training.generation import monitored, overlapped, sequential

from .conftest import assert_one_line_error, run_cli, tiny_config, write_config

TEMPLATE = "{prompt}={answer}\n{solution}"  # the demo's row fields: the answer and the worked solution


def direct_scores(model_dir, teacher_prompts_, rollouts) -> torch.Tensor:
    """The teacher's log-probs of the query ids, from one plain forward over teacher prompt + response."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    query = rollouts.query_ids()
    out = torch.zeros(query.shape)
    for row, prompt in enumerate(teacher_prompts_):
        length = int(rollouts.lengths[row])
        ids = torch.tensor([prompt + rollouts.response_ids[row, :length].tolist()])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
        positions = logprobs[len(prompt) - 1 : len(prompt) - 1 + length]  # predicting response tokens 0..length-1
        out[row, :length] = positions.gather(-1, query[row, :length])
    return out


class Overlapping:
    """The HF teacher taking rows as they finish (as a served teacher does), scoring each at once."""

    overlaps_generation = True

    def __init__(self, teacher) -> None:
        self.teacher = teacher

    def submit(self, rollouts, query_ids, top_k):
        scores = self.teacher.score(rollouts, query_ids, top_k)
        return type("Done", (), {"result": lambda self: scores})()


@pytest.mark.parametrize("strategy", ["sequential", "overlapped", "monitored"])
def test_the_teacher_scores_each_response_after_its_own_prompt(tiny_models, strategy):
    from opdctl_hf import HFStudent, HFTeacher

    tokenizer = build_tokenizer()
    problems = held_out(4)
    student_prompts = [prompt_ids(tokenizer, p) for p in problems]
    rows = [{"prompt": p.prompt, "answer": p.answer, "solution": p.solution()} for p in problems]
    config = validate({"data": {"teacher_prompt_template": TEMPLATE}, "loss": {"k": 4}, "prune": {"k": 4}})
    privileged = teacher_prompts(config.data, tokenizer, rows)
    assert all(len(t) > len(s) for t, s in zip(privileged, student_prompts, strict=True))
    student = HFStudent(HFStudent.Config(model=str(tiny_models["student"])))
    teacher = HFTeacher(HFTeacher.Config(model=str(tiny_models["teacher"])))
    sampling = Sampling(max_new_tokens=20, temperature=1.0, record_topk=4, seed=5)
    run = {"sequential": sequential, "overlapped": overlapped, "monitored": monitored}[strategy]
    scorer = Overlapping(teacher) if strategy == "overlapped" else teacher
    gen = run(config, student, scorer, student_prompts, sampling, privileged)
    mask = gen.rollouts.mask
    expected = direct_scores(tiny_models["teacher"], privileged, gen.rollouts)
    assert torch.allclose(gen.scores.query_logprobs[mask], expected[mask], atol=1e-4)
    plain = direct_scores(tiny_models["teacher"], student_prompts, gen.rollouts)
    assert not torch.allclose(plain[mask], expected[mask], atol=1e-3)  # the context does change the scores
    assert gen.rollouts.prompt_ids == student_prompts  # the student saw its own prompts


def test_a_run_traces_the_prompt_the_teacher_scored_after(tiny_models, tmp_path):
    config = tiny_config(tiny_models, tmp_path / "run", data={"teacher_prompt_template": TEMPLATE})
    config["optim"]["steps"] = 1
    result = run_cli("train", "-c", str(write_config(tmp_path / "c.yaml", config)))
    assert result.exit_code == 0, result.output
    traced = pq.read_table(tmp_path / "run" / "traces" / "rollouts").to_pandas()
    tokenizer = build_tokenizer()
    for row in traced.itertuples():
        problem = tokenizer.decode(row.prompt_ids).removeprefix("<bos>Q:").removesuffix("\nA:")
        teacher_text = tokenizer.decode(row.teacher_prompt_ids)
        assert teacher_text.startswith(f"<bos>Q:{problem}=") and "\\boxed{" in teacher_text


def test_a_template_naming_a_missing_field_is_one_line_naming_the_fields(tiny_models, tmp_path):
    config = tiny_config(tiny_models, tmp_path / "run", data={"teacher_prompt_template": "{prompt} {hint}"})
    result = run_cli("train", "-c", str(write_config(tmp_path / "c.yaml", config)))
    assert_one_line_error(result, "data.teacher_prompt_template '{prompt} {hint}' fails on row 1", "fields: prompt")


def test_a_data_file_s_columns_fill_the_teacher_template(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "a1+b2", "hint": "3"}\n{"question": "a2+b2", "hint": "4"}\n')
    template = "{prompt}={hint}"
    config = validate({"data": {"source": str(data), "prompt_field": "question", "teacher_prompt_template": template}})
    tokenizer = build_tokenizer()
    prompts = load_prompts(config.data, tokenizer, 0)
    assert prompts.teacher_ids == chat_prompts(tokenizer, ["a1+b2=3", "a2+b2=4"], True)
    assert prompts.ids == chat_prompts(tokenizer, ["a1+b2", "a2+b2"], True)
