"""The embedded demo: task, tokenizer, model cache."""

import json
import random
from itertools import islice

from transformers import AutoModelForCausalLM, AutoTokenizer

from opdctl.demo import resolve_model
from opdctl.demo.models import Recipe, demo_dir, ensure_models
from opdctl.demo.task import CHECK_WORD, Problem, held_out, training_problems
from opdctl.demo.tokenizer import build_tokenizer
from opdctl.evaluation.grading import last_boxed


def test_solution_writes_every_partial_sum_and_boxes_the_answer():
    problem = Problem((3, 7, 2, 9, 5))
    assert problem.prompt == "a3+b7+c2+d9+e5"
    assert problem.solution() == "a3+b7=10,10+c2=12,12+d9=21,21+e5=26\n\\boxed{26}"
    assert last_boxed(problem.solution()) == problem.answer == "26"


def test_rechecking_habit_never_reaches_an_answer():
    text = Problem((3, 7, 2, 9, 5)).rechecking_solution(random.Random(0), 120)
    assert len(text) == 120
    assert CHECK_WORD in text and "boxed" not in text


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


def test_model_references_pass_through_unless_demo():
    assert resolve_model("Qwen/Qwen3-4B") == "Qwen/Qwen3-4B"
