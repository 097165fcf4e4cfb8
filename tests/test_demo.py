"""The embedded demo: task, tokenizer, model cache."""

import json
import random
from itertools import islice

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from opdctl.data.demo_task import CHECK_WORD, Problem, held_out, training_problems
from opdctl.data.grading import last_boxed
from opdctl.models.demo import Recipe, demo_dir, ensure_models
from opdctl.models.demo_tokenizer import build_tokenizer
from opdctl.models.sources import resolve_model


def test_solution_writes_every_partial_sum_and_boxes_the_answer():
    problem = Problem((3, 7, 2, 9, 5))
    assert problem.prompt == "a3+b7+c2+d9+e5"
    assert problem.solution() == "a3+b7=10,10+c2=12,12+d9=21,21+e5=26\n\\boxed{26}"
    assert last_boxed(problem.solution()) == problem.answer == "26"


def test_student_scratch_work_rechecks_every_step_and_never_reaches_an_answer():
    problem = Problem((3, 7, 2, 9, 5))
    text = problem.rechecking_solution(120)
    assert len(text) == 120
    chain = ",".join(problem.steps())
    assert text.startswith(f"{chain}\n{CHECK_WORD}a3+b7=10,{CHECK_WORD}10+c2=12,")
    assert "boxed" not in text


def test_teacher_scratch_work_has_noise_numbers_and_ends_with_the_answer():
    problem = Problem((3, 7, 2, 9, 5))
    text = problem.scratch_solution(random.Random(0), (10, 12))
    chain, scratch, answer = text.split("\n")
    assert chain == ",".join(problem.steps()) and answer == "\\boxed{26}"
    items = scratch.removesuffix(",").split(",")
    assert 10 <= len(items) <= 12
    assert all(item.startswith(CHECK_WORD) and item.removeprefix(CHECK_WORD).isdigit() for item in items)


def test_training_stream_excludes_the_held_out_problems():
    held = {p.terms for p in held_out()}
    assert len(held) == 200
    assert not held & {p.terms for p in islice(training_problems(0), 5000)}


def test_tokenizer_round_trips_with_chat_template(tmp_path):
    tokenizer = build_tokenizer()
    problem = Problem((1, 2, 3, 4, 5))
    assert tokenizer.decode(tokenizer.encode(problem.solution())) == problem.solution()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": problem.prompt}]
    ids = loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert loaded.decode(ids) == f"<bos>Q:{problem.prompt}\nA:"
    assert loaded.get_vocab() == tokenizer.get_vocab()


@pytest.mark.slow
def test_models_are_built_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("OPDCTL_CACHE", str(tmp_path))
    recipe = Recipe(
        teacher_max_steps=6, teacher_eval_from=4, eval_every=2, student_snapshot=3, student_steps=2, batch=4
    )
    path = ensure_models(recipe)
    assert path == demo_dir(recipe) and path.parent == tmp_path
    info = json.loads((path / "info.json").read_text())
    assert {"teacher_validation_accuracy", "student_validation_accuracy", "build_seconds"} <= set(info)
    for name in ("teacher", "student"):
        AutoModelForCausalLM.from_pretrained(path / name)
    mtime = (path / "info.json").stat().st_mtime
    assert ensure_models(recipe) == path
    assert (path / "info.json").stat().st_mtime == mtime
    assert demo_dir(Recipe(hidden=8)) != demo_dir(recipe)


def test_default_models_are_installed_from_the_shipped_build_without_training(tmp_path, monkeypatch):
    from opdctl.models import demo as models

    monkeypatch.setenv("OPDCTL_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_build", lambda recipe, target: pytest.fail("built instead of installed"))
    path = ensure_models()
    assert path == demo_dir() and (models.BUNDLED / path.name).is_dir()  # the shipped build is the default recipe's
    tokenizer = AutoTokenizer.from_pretrained(path / "student")
    assert tokenizer.get_vocab() == build_tokenizer().get_vocab()
    teacher = AutoModelForCausalLM.from_pretrained(path / "teacher")
    problems = held_out(16)
    assert models.greedy_accuracy(teacher, tokenizer, problems) >= 0.8  # a trained teacher, not random weights


def test_model_references_pass_through_unless_demo():
    assert resolve_model("Qwen/Qwen3-4B") == "Qwen/Qwen3-4B"


def test_length_grouped_micro_batches_give_the_whole_batch_gradient():
    import torch

    from opdctl.models.demo import _backward, _batch, new_model

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = new_model(tokenizer, Recipe(hidden=16, layers=1))
    rng = random.Random(0)
    examples = []
    for _ in range(20):  # lengths from about 20 to about 300 tokens: several micro-batches
        problem = Problem(tuple(rng.randint(1, 9) for _ in range(rng.randint(2, 10))))
        answer = problem.rechecking_solution(rng.randint(10, 300))
        examples.append(([tokenizer.bos_token_id, *tokenizer.encode(problem.prompt)], tokenizer.encode(answer)))
    input_ids, labels = _batch(examples, tokenizer.pad_token_id)
    mask = (labels != -100) | (input_ids != tokenizer.pad_token_id)
    model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.backward()
    whole = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    _backward(model, examples, tokenizer.pad_token_id)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, whole[name], atol=1e-6), name
