"""The built-in English word problems: exact answers, a held-out set training never sees, lenient grading."""

import random
import re
from itertools import islice

import pytest

from opdctl.config import DataConfig
from opdctl.data import load_prompts
from opdctl.evaluation.benchmarks import load_benchmarks
from opdctl.evaluation.grading import extract_answer, grade_response
from opdctl.wordproblems import SUFFIX, held_out, random_problem, training_problems


def solve(story: str) -> int:
    """An independent reading of a story, sentence by sentence."""
    sentences = re.split(r"(?<=[.?])\s+", story)
    total = int(re.match(r"\w+ has (\d+) ", sentences[0]).group(1))
    for sentence in sentences[1:-1]:
        if match := re.search(r"finds (\d+) more", sentence):
            total += int(match.group(1))
        elif match := re.search(r"gives (\d+) \w+ to", sentence):
            total -= int(match.group(1))
        elif match := re.search(r"buys (\d+) \w+ with (\d+) ", sentence):
            total += int(match.group(1)) * int(match.group(2))
        elif match := re.search(r"and (a friend|(\d+) friends)\.", sentence):
            people = 2 if match.group(1) == "a friend" else int(match.group(2)) + 1
            assert total % people == 0, f"an uneven share in {story!r}"
            total //= people
        elif "as many" in sentence:
            total *= 2
        else:
            raise AssertionError(f"unknown sentence {sentence!r}")
    return total


def test_every_answer_is_what_the_story_says():
    rng = random.Random(3)
    for _ in range(2000):
        problem = random_problem(rng)
        assert int(problem.answer) == solve(problem.story) >= 0
        assert problem.prompt == f"{problem.story}\n{SUFFIX}"


def test_training_never_draws_a_held_out_problem():
    held = {p.story for p in held_out()}
    assert len(held) == 200
    assert not held & {p.story for p in islice(training_problems(0), 3000)}


def test_held_out_set_is_fixed():
    assert [p.story for p in held_out(5)] == [p.story for p in held_out(5)]


def test_data_source_wordproblems_goes_through_the_chat_template(tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["student"])
    prompts = load_prompts(DataConfig(source="wordproblems", limit=4), tokenizer, seed=0)
    assert len(prompts) == 4 and all(SUFFIX in text for text in prompts.texts)
    assert prompts.answers == [p.answer for p in islice(training_problems(0), 4)]
    first = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompts.texts[0]}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert prompts.ids[0] == list(first)


def test_benchmark_wordproblems_is_the_held_out_set_graded_leniently():
    (bench,) = load_benchmarks(["wordproblems"], limit=10)
    assert bench.lenient and len(bench.problems) == 10
    assert bench.prompt(bench.problems[0]) == held_out(1)[0].prompt


@pytest.mark.parametrize(
    ("response", "lenient", "extracted"),
    [
        ("so he has 5 + 3 = 8 apples.\n#### 8\nThe answer is \\boxed{}.", True, "8"),
        ("so he has 5 + 3 = 8 apples.\n#### 8\nThe answer is \\boxed{}.", False, None),
        ("It is \\boxed{12}, not 13.", True, "12"),
        ("She has 1,250 coins.", True, "1250"),
        ("no number here", True, None),
    ],
)
def test_lenient_extraction_falls_back_to_the_last_number(response, lenient, extracted):
    assert extract_answer(response, lenient) == extracted


def test_lenient_grading_counts_an_unboxed_right_answer():
    response = "Tom has 5 apples and buys 3 more, so he has 5 + 3 = 8 apples.\n#### 8\nThe answer is \\boxed{}."
    assert grade_response("8", response, lenient=True).correct
    assert not grade_response("8", response).correct
    assert not grade_response("9", response, lenient=True).correct
