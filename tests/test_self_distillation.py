"""Self-distillation: ``teacher.model: student`` is the student's starting weights. A LoRA student lends its
frozen base (one copy in memory, adapters off while it scores); a student that trains every weight gets a copy."""

from __future__ import annotations

import pytest
import torch

from opdctl.backends.types import Sampling
from opdctl.config.files import validate
from opdctl.data.demo_task import held_out
from opdctl.models.demo import prompt_ids
from opdctl.models.demo_tokenizer import build_tokenizer
from opdctl.training.generation import monitored, sequential
from opdctl.training.start import load_backends

from .conftest import read_metrics, run_cli, tiny_config, write_config

pytest.importorskip("peft")


def self_distilling(tiny_models, lora: bool, **sections):
    student = {"model": str(tiny_models["student"]), **({"lora": {"r": 4}} if lora else {})}
    return validate(
        {"student": student, "teacher": {"model": "student"}, "loss": {"k": 4}, "prune": {"k": 2}, **sections}
    )


def trained_adapters(model: torch.nn.Module) -> None:
    """Move the adapters away from their zero start, as training does."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)


def the_copy(tiny_models):
    from opdctl_hf import HFTeacher

    return HFTeacher(HFTeacher.Config(model=str(tiny_models["student"])))


@pytest.fixture
def prompts():
    tokenizer = build_tokenizer()
    return [prompt_ids(tokenizer, p) for p in held_out(4)]


def test_a_lora_student_lends_its_frozen_base_and_no_copy_is_loaded(tiny_models):
    student, teacher = load_backends(self_distilling(tiny_models, lora=True))
    assert teacher.model is student.model
    assert "frozen base" in teacher.check(student.tokenizer, 2, 4)["model"]


@pytest.mark.parametrize("strategy", [sequential, monitored])
def test_the_frozen_base_scores_as_the_starting_weights_while_the_adapters_train(tiny_models, prompts, strategy):
    """Chunk by chunk (monitored) the student generates with its adapters between the teacher's chunks."""
    config = self_distilling(tiny_models, lora=True)
    student, teacher = load_backends(config)
    trained_adapters(student.model)
    sampling = Sampling(max_new_tokens=20, temperature=1.0, record_topk=4, seed=3)
    gen = strategy(config, student, teacher, prompts, sampling, prompts)
    mask, query = gen.rollouts.mask, gen.rollouts.query_ids()
    starting = the_copy(tiny_models).score(gen.rollouts, query, config.teacher_k)
    assert torch.allclose(gen.scores.query_logprobs[mask], starting.query_logprobs[mask], atol=1e-5)
    assert torch.equal(gen.scores.topk_ids[mask], starting.topk_ids[mask])
    trained = student.logprobs(gen.rollouts, query).detach()
    assert not torch.allclose(trained[mask], starting.query_logprobs[mask], atol=1e-2)  # the adapters are on again


def test_scoring_leaves_the_student_in_its_own_mode(tiny_models, prompts):
    student, teacher = load_backends(self_distilling(tiny_models, lora=True))
    rollouts = student.generate(prompts, Sampling(max_new_tokens=8, temperature=1.0, record_topk=4, seed=1))
    for training in (True, False):
        student.model.train(training)
        teacher.score(rollouts, rollouts.query_ids(), 4)
        assert student.model.training is training


def test_a_student_that_trains_every_weight_is_taught_by_a_copy(tiny_models, prompts):
    student, teacher = load_backends(self_distilling(tiny_models, lora=False))
    assert teacher.model is not student.model
    rollouts = student.generate(prompts, Sampling(max_new_tokens=12, temperature=1.0, record_topk=4, seed=1))
    own = student.logprobs(rollouts, rollouts.query_ids()).detach()
    scored = teacher.score(rollouts, rollouts.query_ids(), 4).query_logprobs
    assert torch.allclose(own[rollouts.mask], scored[rollouts.mask], atol=1e-5)


def test_a_lora_self_distillation_run_starts_at_zero_divergence(tiny_models, tmp_path):
    """Step 1's rollouts come from the starting weights, the teacher's own: their reverse KL is 0."""
    config = tiny_config(tiny_models, tmp_path / "run", rollout={"n": 2, "truncate_on_drift": True, "chunk_tokens": 4})
    config["student"]["lora"] = {"r": 4}
    config["teacher"] = {"model": "student"}
    config["optim"] = {**config["optim"], "steps": 2, "lr": 0.05}
    result = run_cli("train", "-c", write_config(tmp_path / "c.yaml", config))
    assert result.exit_code == 0, result.output
    steps = [r for r in read_metrics(tmp_path / "run") if "reverse_kl" in r and "when" not in r]
    assert abs(steps[0]["reverse_kl"]) < 1e-5 and abs(steps[1]["reverse_kl"]) > 1e-4  # a sampled estimate
