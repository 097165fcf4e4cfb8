"""Every backend keeps the contract of opdctl.backends.protocols: the in-memory fakes, the HF student and teacher,
and the vLLM teacher where a server can run. A new backend adds itself to STUDENTS or TEACHERS below."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from opdctl.backends.protocols import DataParallel, Student, Teacher
from opdctl.backends.types import QueryLayout, Rollouts, Sampling, TeacherScores
from opdctl.data.demo_task import held_out
from opdctl.models.demo import prompt_ids
from opdctl.models.demo_tokenizer import build_tokenizer
from opdctl.training.parallel import SingleProcess, data_parallel

from .fakes import FakeStudent, FakeTeacher

K = 4
SAMPLING = Sampling(max_new_tokens=12, temperature=1.0, record_topk=K, seed=3)


def fake_prompts() -> list[list[int]]:
    return [[0], [1], [2], [3]]


def demo_prompts() -> list[list[int]]:
    return [prompt_ids(build_tokenizer(), problem) for problem in held_out(3)]


def hf_student(request: pytest.FixtureRequest) -> Student:
    from opdctl_hf import HFStudent

    return HFStudent(HFStudent.Config(model=str(request.getfixturevalue("tiny_models")["student"])))


def hf_teacher(request: pytest.FixtureRequest) -> Teacher:
    from opdctl_hf import HFTeacher

    return HFTeacher(HFTeacher.Config(model=str(request.getfixturevalue("tiny_models")["teacher"])))


def served_student(request: pytest.FixtureRequest) -> Student:
    from opdctl_hf import HFStudent

    return HFStudent(HFStudent.Config(model=str(request.getfixturevalue("served_model"))))


def vllm_teacher(request: pytest.FixtureRequest) -> Teacher:
    from opdctl_vllm import VLLMTeacher

    server = request.getfixturevalue("vllm_server")
    return VLLMTeacher(VLLMTeacher.Config(model="teacher", base_url=server.url))


def routed_teacher(request: pytest.FixtureRequest) -> Teacher:
    from opdctl.backends.routed import RoutedTeacher

    return RoutedTeacher({"a": hf_teacher(request), "b": hf_teacher(request)}).for_rows(["b", "a", "b"])


def frozen_base_teacher(request: pytest.FixtureRequest) -> Teacher:
    """A LoRA student's frozen base, lent as the teacher (teacher.model: student)."""
    from opdctl_hf import HFStudent, HFTeacher

    pytest.importorskip("peft")
    model = str(request.getfixturevalue("tiny_models")["student"])
    lora = HFStudent(HFStudent.Config(model=model, lora={"r": 4}))
    return lora.frozen_teacher(HFTeacher.Config(model="student"))


Build = Callable[[pytest.FixtureRequest], Any]
STUDENTS: dict[str, tuple[Build, Callable[[], list[list[int]]]]] = {  # the student, and prompts it takes
    "fake": (lambda request: FakeStudent(), fake_prompts),
    "hf": (hf_student, demo_prompts),
    "hf-served": (served_student, demo_prompts),
}
TEACHERS: dict[str, tuple[Build, str]] = {  # the teacher, and the student whose rollouts it scores
    "fake": (lambda request: FakeTeacher(), "fake"),
    "hf": (hf_teacher, "hf"),
    "vllm": (vllm_teacher, "hf-served"),  # a real server: slow, and skipped where vLLM is not installed
    "routed": (routed_teacher, "hf"),  # several teachers as one (teachers, data.teacher_field)
    "frozen-base": (frozen_base_teacher, "hf"),  # self-distillation without a second copy
}
SLOW = {"vllm", "hf-served"}  # a server, and the model it serves (trained for the test)


def params(names: dict[str, Any]) -> list:
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in names]


@pytest.fixture(params=params(STUDENTS))
def student_and_rollouts(request) -> tuple[Student, Rollouts]:
    build, prompts = STUDENTS[request.param]
    student = build(request)
    yield student, student.generate(prompts(), SAMPLING)
    student.close()


def test_a_student_is_a_student(student_and_rollouts):
    student, _ = student_and_rollouts
    assert isinstance(student, Student)
    assert student.vocab_size() >= K
    context = student.context_length()
    assert context is None or context > SAMPLING.max_new_tokens


def test_rollouts_have_the_shapes_and_limits_asked_for(student_and_rollouts):
    _, rollouts = student_and_rollouts
    batch, width = rollouts.response_ids.shape
    assert 0 < width <= SAMPLING.max_new_tokens and (rollouts.lengths <= width).all()
    assert rollouts.topk_ids.shape == rollouts.topk_logprobs.shape == (batch, width, K)
    assert rollouts.sampled_logprobs.shape == (batch, width)
    mask = rollouts.mask
    assert (rollouts.topk_logprobs[mask] <= 0).all()
    assert (rollouts.topk_logprobs[mask].diff(dim=-1) <= 1e-6).all()  # best first
    assert set(rollouts.finish_reasons) <= {"eos", "length"}


def test_training_log_probs_match_sampling_and_carry_gradient(student_and_rollouts):
    student, rollouts = student_and_rollouts
    logprobs = student.logprobs(rollouts, rollouts.query_ids())
    assert logprobs.shape == (*rollouts.response_ids.shape, K + 1) and logprobs.requires_grad
    mask = rollouts.mask
    sampled = QueryLayout.sampled(logprobs).detach()
    assert torch.allclose(sampled[mask], rollouts.sampled_logprobs[mask], atol=1e-3)
    assert torch.allclose(logprobs[..., :K].detach()[mask], rollouts.topk_logprobs[mask], atol=1e-3)
    parameters = student.trainable_parameters()
    assert parameters and all(p.requires_grad for p in parameters)
    logprobs[mask].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in parameters)


def test_a_student_writes_a_checkpoint(student_and_rollouts, tmp_path):
    student, _ = student_and_rollouts
    student.save(str(tmp_path))
    assert any(tmp_path.iterdir())


def test_a_student_without_data_parallel_trains_in_one_process_only():
    student = FakeStudent()
    assert not isinstance(student, DataParallel) and isinstance(data_parallel(student), SingleProcess)
    world = type("World", (), {"distributed": True, "size": 2})()
    with pytest.raises(Exception, match="trains in one process, but 2 were started"):
        data_parallel(student).distribute(world)


def test_the_hf_student_trains_on_several_processes(request):
    student = hf_student(request)
    assert data_parallel(student) is student
    student.close()


@pytest.fixture(params=params(TEACHERS))
def scored(request) -> tuple[Teacher, Rollouts, TeacherScores, list[list[int]]]:
    build, student_name = TEACHERS[request.param]
    make_student, prompts = STUDENTS[student_name]
    student = make_student(request)
    rollouts = student.generate(prompts(), SAMPLING)
    teacher = build(request)
    teacher.check(student.tokenizer, K, K)
    scores = teacher.score(rollouts, rollouts.query_ids(), K)
    yield teacher, rollouts, scores, prompts()
    teacher.close()
    student.close()


def test_a_teacher_is_a_teacher(scored):
    teacher, *_ = scored
    assert isinstance(teacher, Teacher) and isinstance(teacher.rescores_prefix, bool)


def test_scores_have_the_shapes_of_the_rollouts(scored):
    _, rollouts, scores, _ = scored
    batch, width = rollouts.response_ids.shape
    assert scores.topk_ids.shape == scores.topk_logprobs.shape == (batch, width, K)
    assert scores.query_logprobs.shape == (batch, width, K + 1)
    mask = rollouts.mask
    assert (scores.topk_logprobs[mask] <= 0).all() and (scores.query_logprobs[mask] <= 0).all()
    assert (scores.topk_logprobs[mask].diff(dim=-1) <= 1e-6).all()


def test_a_stream_scores_what_score_does_chunk_by_chunk(scored):
    teacher, rollouts, scores, prompts = scored
    query, mask = rollouts.query_ids(), rollouts.mask
    stream = teacher.stream(prompts)
    rows = list(range(len(prompts)))
    parts = []
    for start in range(0, rollouts.response_ids.shape[1], 5):
        stop = start + 5
        lengths = (rollouts.lengths - start).clamp(0, 5)
        live = [row for row in rows if lengths[row] > 0]
        part = stream.extend(live, rollouts.response_ids[live, start:stop], lengths[live], query[live, start:stop], K)
        parts.append((live, start, part))
    stream.close()
    streamed = torch.zeros_like(scores.query_logprobs)
    for live, start, part in parts:
        width = part.query_logprobs.shape[1]
        streamed[live, start : start + width] = part.query_logprobs[:, :width]
    assert torch.allclose(streamed[mask], scores.query_logprobs[mask], atol=1e-3)
