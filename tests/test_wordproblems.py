"""The built-in English word problems: exact answers, worked solutions, held-out sets, the first wrong number."""

import random
import re
from itertools import islice

import pytest

from opdctl.config.schema import DataConfig
from opdctl.data.benchmarks import load_benchmarks
from opdctl.data.grading import extract_answer, grade_response
from opdctl.data.prompts import load_prompts
from opdctl.data.wordproblems import KINDS, LONG, REWORDED, SHORT, SUFFIX, drills, first_error, held_out, random_problem
from opdctl.data.wordproblems import training_problems as problems

# An independent reading of a story: the amount each sentence leaves, from its words alone.
START = r"(?:has|had|starts with|started with|owns|owned|keeps|kept|holds|held|There are|There were) (\d+) "


def _n(match: re.Match, *groups: int) -> int:
    return int(next(match.group(g) for g in groups if match.group(g)))


READINGS = (  # first match wins
    (r"half of", lambda t, m: t // 2),
    (r"twice as many", lambda t, m: t * 3),  # given twice what she has: three times as many in all
    (r"as many \w+ as|doubles|doubled", lambda t, m: t * 2),
    (r"triples|tripled", lambda t, m: t * 3),
    (r"among (\d+) people|into (\d+) equal groups|into (\d+) piles", lambda t, m: t // _n(m, 1, 2, 3)),
    (r"(?:fills|filled|sells|sold) (\d+) \w+ (?:with|of) (\d+) \w+ each", lambda t, m: t - _n(m, 1) * _n(m, 2)),
    (r"pack(?:s|ed) (\d+) \w+ into each of (\d+)", lambda t, m: t - _n(m, 1) * _n(m, 2)),
    (r"(\d+) \w+ (?:with|of|holding) (\d+) \w+", lambda t, m: t + _n(m, 1) * _n(m, 2)),
    (r"(\d+) \w+, and each \w+ (?:holds|held) (\d+)", lambda t, m: t + _n(m, 1) * _n(m, 2)),
    (
        r"(?:gives|gave|loses|lost|sells|sold|donates|donated|trades|traded) (?:away )?(\d+) \w+(?! from| more)",
        lambda t, m: t - _n(m, 1),
    ),
    (r"(?:takes|took) (\d+) of|(\d+) of \w+ \w+ (?:go|went) missing", lambda t, m: t - _n(m, 1, 2)),
    (r"(\d+)", lambda t, m: t + _n(m, 1)),  # every other sentence adds what it names
)


def read(story: str) -> int:
    sentences = re.split(r"(?<=[.?])\s+", story)
    total = int(re.search(START, sentences[0]).group(1))
    for sentence in sentences[1:-1]:
        effect, match = next((e, m) for pattern, e in READINGS if (m := re.search(pattern, sentence)))
        total = effect(total, match)
    return total


@pytest.mark.parametrize("name", [SHORT, LONG, REWORDED])
def test_every_answer_is_what_the_story_says(name):
    rng = random.Random(3)
    for _ in range(1500):
        problem = random_problem(rng, KINDS[name])
        assert int(problem.answer) == read(problem.story) >= 0, problem.story
        assert problem.prompt == f"{problem.story}\n{SUFFIX}"
        sentences = len(re.split(r"(?<=[.?])\s+", problem.story)) - 2
        assert KINDS[name].operations[0] <= sentences <= KINDS[name].operations[1]


@pytest.mark.parametrize("name", [SHORT, LONG, REWORDED])
def test_worked_solutions_compute_every_step_from_the_one_before(name):
    rng = random.Random(4)
    for _ in range(500):
        problem = random_problem(rng, KINDS[name])
        lines = problem.solution.splitlines()
        total = int(re.search(r"starts with (\d+) ", lines[0]).group(1))
        for line in lines[1:-1]:
            equations = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", line)
            assert equations, line
            for a, op, b, result in equations:
                assert int(result) == {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}[
                    op](int(a), int(b))  # fmt: skip
                assert op != "/" or int(a) % int(b) == 0
            assert int(equations[-1][0]) == total  # the last equation carries on from the amount before
            total = int(equations[-1][3])
        assert lines[-1] == f"The answer is \\boxed{{{total}}}." and str(total) == problem.answer


def test_reworded_stories_share_no_sentence_form_with_training():
    def forms(stories):
        return {re.sub(r"\b[A-Z][a-z]+\b|\d+", "#", s) for story in stories for s in re.split(r"(?<=[.])\s+", story)}

    trained = forms(p.story for p in islice(problems(0, SHORT), 3000))
    reworded = forms(p.story for p in held_out(REWORDED))
    assert not {f for f in trained & reworded if not f.endswith("?")}


@pytest.mark.parametrize("name", [SHORT, LONG])
def test_training_never_draws_a_held_out_problem(name):
    held = {p.story for p in held_out(name)}
    assert len(held) == 200
    assert not held & {p.story for p in islice(problems(0, name), 3000)}


def test_reworded_problems_are_for_evaluation_only():
    with pytest.raises(ValueError, match="evaluation only"):
        next(problems(0, REWORDED))


def test_held_out_sets_are_fixed_and_distinct():
    assert [p.story for p in held_out(SHORT, 5)] == [p.story for p in held_out(SHORT, 5)]
    assert [p.story for p in held_out(SHORT, 5)] == [p.story for p in held_out(SHORT)[:5]]
    assert not {p.story for p in held_out(SHORT)} & {p.story for p in held_out(LONG)}


def test_first_error_is_the_first_number_that_differs_from_the_worked_solution():
    problem = random_problem(random.Random(0))
    solution = problem.solution
    assert first_error(problem.solution, solution) is None
    assert first_error(problem.solution, solution.splitlines()[0]) is None  # stopped early, nothing wrong yet
    numbers = list(re.finditer(r"\d+", solution))
    wrong = numbers[5]
    slipped = solution[: wrong.start()] + str(int(wrong.group()) + 1) + solution[wrong.end() :]
    assert first_error(problem.solution, slipped) == wrong.start()
    longer = solution.replace("The answer is", "Check: 1 + 1 = 2. The answer is")
    assert first_error(problem.solution, longer) == longer.index("1 + 1")


def test_first_error_on_hand_made_rollouts():
    problem = random_problem(random.Random(0))
    story_start = int(re.search(r"\d+", problem.story).group())
    assert first_error(problem.solution, f"It starts with {story_start + 1} things.") == len("It starts with ")
    assert first_error(problem.solution, "Nothing to count here.") is None
    second = int(re.findall(r"\d+", problem.solution)[1]) + 1
    assert first_error(problem.solution, f"{story_start} and {second}") == len(f"{story_start} and ")


@pytest.mark.parametrize("source", [SHORT, LONG])
def test_data_sources_go_through_the_chat_template(tiny_models, source):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["student"])
    prompts = load_prompts(DataConfig(source=source, limit=4), tokenizer, seed=0)
    assert len(prompts) == 4 and all(SUFFIX in text for text in prompts.texts)
    assert prompts.answers == [p.answer for p in islice(problems(0, source), 4)]
    first = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompts.texts[0]}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert prompts.ids[0] == list(first)


@pytest.mark.parametrize("name", [SHORT, LONG, REWORDED])
def test_each_set_is_a_benchmark_graded_leniently(name):
    (bench,) = load_benchmarks([name], limit=10)
    assert bench.lenient and len(bench.problems) == 10 and bench.name == name
    assert bench.prompt(bench.problems[0]) == held_out(name, 1)[0].prompt
    assert [p.answer for p in bench.problems] == [p.answer for p in held_out(name, 10)]


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


def test_drills_compute_every_line_right_and_practise_subtraction_most():
    lines = [line for drill in islice(drills(0), 50) for line in drill.solution.splitlines()]
    assert len(lines) == 50 * 16
    operations = []
    for line in lines:
        a, op, b, result = re.fullmatch(r"(\d+) ([-+*/]) (\d+) = (\d+)", line).groups()
        a, b, result = int(a), int(b), int(result)
        assert result == {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] >= 0
        assert op != "/" or a % b == 0
        operations.append(op)
    assert max(set(operations), key=operations.count) == "-"
