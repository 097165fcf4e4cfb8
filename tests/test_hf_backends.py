"""The Hugging Face teacher and student on tiny models built in the test."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from opdctl.backends.types import Sampling
from opdctl.errors import BackendError
from opdctl.models.demo_tokenizer import build_tokenizer
from opdctl.plugins import STUDENTS, TEACHERS
from opdctl_hf import HFStudent, HFTeacher
from opdctl_hf.sampling import _choose, _nucleus

from .conftest import save_tiny_model


@pytest.fixture(scope="module")
def backends(tiny_models):
    student = HFStudent(HFStudent.Config(model=str(tiny_models["student"])))
    teacher = HFTeacher(HFTeacher.Config(model=str(tiny_models["teacher"]), batch_size=2, logprob_chunk=5))
    return student, teacher


PROMPTS = [[1, 21, 18, 16, 6, 10], [1, 21, 18, 9], [1, 21, 18, 12, 6, 11, 6, 13, 20, 18]]


def test_backends_are_registered_as_entry_points():
    assert TEACHERS.entry_points()["hf"].value == "opdctl_hf:HFTeacher"
    assert STUDENTS.get("hf") is HFStudent


def test_generation_records_the_students_top_k_and_sampled_logprobs(backends):
    student, _ = backends
    rollouts = student.generate(PROMPTS, Sampling(max_new_tokens=12, temperature=1.0, record_topk=4, seed=3))
    mask = rollouts.mask
    assert rollouts.response_ids.shape[0] == 3 and rollouts.topk_ids.shape[-1] == 4
    query = rollouts.query_ids()
    with torch.no_grad():
        trained = student.logprobs(rollouts, query)
    assert torch.allclose(trained[..., -1][mask], rollouts.sampled_logprobs[mask], atol=1e-5)
    assert torch.allclose(trained[..., :4][mask], rollouts.topk_logprobs[mask], atol=1e-5)
    assert bool((rollouts.topk_logprobs[..., :-1] >= rollouts.topk_logprobs[..., 1:])[mask].all())


def test_generation_stops_at_eos_and_marks_the_finish_reason(tiny_models):
    student = HFStudent(HFStudent.Config(model=str(tiny_models["student"])))
    eos = student.tokenizer.eos_token_id
    bump = torch.zeros(len(student.tokenizer))
    bump[eos] = 100.0  # make EOS the only likely token
    student.model.get_output_embeddings().register_forward_hook(lambda module, inputs, out: out + bump)
    rollouts = student.generate(PROMPTS, Sampling(max_new_tokens=8, temperature=1.0, seed=0))
    assert rollouts.lengths.tolist() == [1, 1, 1]
    assert rollouts.finish_reasons == ["eos"] * 3
    assert rollouts.response_ids[:, 0].tolist() == [eos] * 3


def test_sampling_is_reproducible_from_the_seed(backends):
    student, _ = backends
    sampling = Sampling(max_new_tokens=10, temperature=1.0, record_topk=2, seed=11)
    first = student.generate(PROMPTS, sampling)
    assert first.responses() == student.generate(PROMPTS, sampling).responses()
    other = student.generate(PROMPTS, Sampling(max_new_tokens=10, temperature=1.0, record_topk=2, seed=12))
    assert first.responses() != other.responses()


def test_greedy_matches_transformers_generate(backends, tiny_models):
    student, _ = backends
    rollouts = student.generate(PROMPTS[:1], Sampling(max_new_tokens=10, temperature=0.0))
    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"])
    out = model.generate(torch.tensor(PROMPTS[:1]), max_new_tokens=10, do_sample=False, eos_token_id=2, pad_token_id=0)
    expected = out[0, len(PROMPTS[0]) :].tolist()
    assert rollouts.responses()[0] == expected[: len(rollouts.responses()[0])]


def test_teacher_top_k_and_queries_equal_a_direct_log_softmax(backends):
    student, teacher = backends
    rollouts = student.generate(PROMPTS, Sampling(max_new_tokens=9, temperature=1.0, record_topk=3, seed=5))
    query = rollouts.query_ids()
    scores = teacher.score(rollouts, query, top_k=4)
    for row in range(len(rollouts)):
        ids = torch.tensor([rollouts.prompt_ids[row] + rollouts.responses()[row]])
        with torch.no_grad():
            logprobs = torch.log_softmax(teacher.model(ids).logits.float(), -1)[0]
        start, n = len(rollouts.prompt_ids[row]) - 1, int(rollouts.lengths[row])
        expected = logprobs[start : start + n]
        top = expected.topk(4)
        assert torch.equal(scores.topk_ids[row, :n], top.indices)
        assert torch.allclose(scores.topk_logprobs[row, :n], top.values, atol=1e-5)
        assert torch.allclose(scores.query_logprobs[row, :n], expected.gather(-1, query[row, :n]), atol=1e-5)
        assert not scores.query_logprobs[row, n:].any()  # padding stays zero


def test_teacher_scores_do_not_depend_on_chunking_or_batching(backends, tiny_models):
    student, teacher = backends
    rollouts = student.generate(PROMPTS, Sampling(max_new_tokens=9, temperature=1.0, record_topk=3, seed=6))
    query = rollouts.query_ids()
    wide = HFTeacher(HFTeacher.Config(model=str(tiny_models["teacher"]), batch_size=64, logprob_chunk=4096))
    a, b = teacher.score(rollouts, query, 4), wide.score(rollouts, query, 4)
    assert torch.equal(a.topk_ids, b.topk_ids)
    assert torch.allclose(a.query_logprobs, b.query_logprobs, atol=1e-5)


def test_student_logprobs_carry_gradient(backends):
    student, _ = backends
    rollouts = student.generate(PROMPTS, Sampling(max_new_tokens=6, temperature=1.0, record_topk=2, seed=1))
    query = rollouts.query_ids()
    logprobs = student.logprobs(rollouts, query)
    (logprobs * rollouts.mask.unsqueeze(-1)).sum().backward()
    grads = [p.grad for p in student.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    student.model.zero_grad(set_to_none=True)


def test_checkpoint_loads_with_from_pretrained(backends, tmp_path):
    student, _ = backends
    student.save(str(tmp_path))
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for (name, a), b in zip(student.model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_tokenizer_mismatch_is_explained(tmp_path, backends):
    student, _ = backends
    other = build_tokenizer()
    other.add_tokens(["<extra>"])
    path = save_tiny_model(tmp_path / "other", seed=3, tokenizer=other)
    teacher = HFTeacher(HFTeacher.Config(model=str(path)))
    with pytest.raises(BackendError, match=r"teacher and student tokenizers differ .*<extra>"):
        teacher.check(student.tokenizer, 1, 1)


def test_missing_model_directory(tmp_path):
    with pytest.raises(BackendError, match=r"student.model=.*no Hugging Face model at"):
        HFStudent(HFStudent.Config(model=str(tmp_path / "missing")))


def test_top_p_keeps_the_smallest_nucleus_that_reaches_p():
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.05], [0.96, 0.01, 0.01, 0.01, 0.01]]))
    kept = torch.isfinite(_nucleus(logits, 0.75))
    assert kept.tolist() == [[False, True, False, True, False], [True, False, False, False, False]]
    assert torch.isfinite(_nucleus(logits, 0.85)).tolist()[0] == [True, True, False, True, False]


def test_top_p_samples_only_from_the_nucleus_and_keeps_rows_independent():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).repeat(3, 1)
    drawn = set()
    for seed in range(200):
        generator = torch.Generator().manual_seed(seed)
        nucleus = Sampling(max_new_tokens=1, temperature=1.0, top_p=0.7)
        tokens = _choose(logits, nucleus, generator, 3, torch.arange(3))
        drawn.update(tokens.tolist())
        # the same seed with row 1 already finished: rows 0 and 2 draw exactly the same tokens
        alone = _choose(logits[[0, 2]], nucleus, torch.Generator().manual_seed(seed), 3, torch.tensor([0, 2]))
        assert alone.tolist() == tokens[[0, 2]].tolist()
    assert drawn == {0, 1}


def test_top_p_one_changes_nothing(backends):
    student, _ = backends
    plain = student.generate(PROMPTS, Sampling(max_new_tokens=10, temperature=1.0, seed=4))
    full = student.generate(PROMPTS, Sampling(max_new_tokens=10, temperature=1.0, seed=4, top_p=1.0))
    nucleus = student.generate(PROMPTS, Sampling(max_new_tokens=10, temperature=1.0, seed=4, top_p=0.5))
    assert plain.responses() == full.responses()
    assert plain.responses() != nucleus.responses()
