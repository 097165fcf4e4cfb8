"""Word problems with worked solutions: English arithmetic stories whose every intermediate value is known.

    Maya has 12 marbles. She buys 3 bags with 4 marbles in each bag. Then she gives 5 marbles
    to Leo. How many marbles does Maya have now?

    Maya starts with 12 marbles.
    She buys 3 bags with 4 marbles in each bag: 3 * 4 = 12 marbles, so she has 12 + 12 = 24 marbles.
    She gives 5 marbles to Leo, so she has 24 - 5 = 19 marbles.
    The answer is \\boxed{19}.

Three sets, all generated locally with no download:

* ``wordproblems``: two or three operations in the training wordings;
* ``wordproblems-long``: five to eight operations (solutions of 150-300 tokens), where one
  slip early on spoils the rest, as on the paper's long reasoning rollouts;
* ``wordproblems-reworded``: two or three operations told in wordings that training never
  uses, to tell a model that learnt the skill from one that learnt the templates.

``data.source`` trains on the first two (one story in ten, by a hash of its text, is held
out for evaluation and never drawn); ``opdctl eval --bench`` scores all three; ``opdctl sft``
learns the worked solutions. The solution restates each sentence and computes its effect, so
the position of the first wrong number in a model's answer is where it went wrong
(:func:`first_error`).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from opdctl.data.wordings import OTHER, TRAINING, Wording

SHORT, LONG, REWORDED = "wordproblems", "wordproblems-long", "wordproblems-reworded"
DRILLS = "arithmetic"  # for opdctl sft: lines of sums as the solutions compute them
SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
HELD_OUT_SIZE = 200
HELD_OUT_SEED = 20261130
MAX_TOTAL = 100  # no intermediate amount grows past this
NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class Kind:
    """One set of problems: how many operations, in which wordings, and whether training may draw it."""

    name: str
    operations: tuple[int, int]
    wording: Wording
    trainable: bool


KINDS = {
    SHORT: Kind(SHORT, (2, 3), TRAINING, trainable=True),
    LONG: Kind(LONG, (5, 8), TRAINING, trainable=True),
    REWORDED: Kind(REWORDED, (2, 3), OTHER, trainable=False),
}


@dataclass(frozen=True)
class WordProblem:
    story: str
    answer: str
    solution: str  # worked, one line per sentence, ending "The answer is \boxed{N}."

    @property
    def prompt(self) -> str:
        return f"{self.story}\n{SUFFIX}"


def random_problem(rng: random.Random, kind: Kind = KINDS[SHORT]) -> WordProblem:
    """A story of ``kind.operations`` operations on a starting amount; every amount stays a whole number >= 0."""
    scene = kind.wording.scene(rng)
    total = rng.randint(4, 30)
    story, solution = [kind.wording.start(rng, scene, total)], [scene.fill("{name} starts with {n} {items}.", n=total)]
    wanted = rng.randint(*kind.operations)
    while len(story) <= wanted:
        step = kind.wording.operation(rng, scene, total)
        if step is None or not 0 <= step.total <= MAX_TOTAL:
            continue
        story.append(kind.wording.connect(rng, step.story) if len(story) > 1 else step.story)
        solution.append(step.solution)
        total = step.total
    story.append(kind.wording.question(rng, scene))
    solution.append(f"The answer is \\boxed{{{total}}}.")
    return WordProblem(" ".join(story), str(total), "\n".join(solution))


def _held_out(problem: WordProblem) -> bool:
    """One story in ten, by a hash of its text, belongs to the held-out set; training never uses it."""
    return hashlib.sha256(problem.story.encode()).digest()[0] % 10 == 0


def held_out(name: str = SHORT, count: int = HELD_OUT_SIZE) -> list[WordProblem]:
    """The fixed evaluation problems of set ``name`` (the same on every machine)."""
    kind = KINDS[name]
    rng, found, seen = random.Random(f"{HELD_OUT_SEED}-{name}"), [], set()
    while len(found) < count:
        problem = random_problem(rng, kind)
        if (_held_out(problem) or not kind.trainable) and problem.story not in seen:
            seen.add(problem.story)
            found.append(problem)
    return found


def training_problems(seed: int, name: str = SHORT) -> Iterator[WordProblem]:
    """An endless stream of training problems of set ``name``, none of them in its held-out set."""
    kind = KINDS[name]
    if not kind.trainable:
        raise ValueError(f"{name} is for evaluation only: train on {SHORT} or {LONG}")
    rng = random.Random(f"{seed}-{name}")
    while True:
        problem = random_problem(rng, kind)
        if not _held_out(problem):
            yield problem


@dataclass(frozen=True)
class Drill:
    prompt: str
    solution: str


def drills(seed: int, lines: int = 16) -> Iterator[Drill]:
    """Arithmetic practice for ``opdctl sft``: each solution is ``lines`` computations of the kinds and sizes
    the worked solutions write (subtractions most, which small models get wrong most), one per line."""
    rng = random.Random(f"{seed}-{DRILLS}")
    while True:
        yield Drill("Practise arithmetic.", "\n".join(_computation(rng) for _ in range(lines)))


def _computation(rng: random.Random) -> str:
    kind = rng.choices("-+*/", weights=(5, 3, 1, 1))[0]
    if kind == "*":
        a, b = rng.randint(2, 8), rng.randint(2, 8)
        return f"{a} * {b} = {a * b}"
    if kind == "/":
        b, result = rng.randint(2, 5), rng.randint(2, 25)
        return f"{b * result} / {b} = {result}"
    a, b = rng.randint(4, MAX_TOTAL), rng.randint(2, 40)
    if kind == "-":
        a, b = max(a, b + 1), b
        return f"{a} - {b} = {a - b}"
    return f"{a} + {b} = {a + b}"


def first_error(solution: str, response: str) -> int | None:
    """Where ``response`` first goes wrong: the character offset of its first number that differs from the
    worked ``solution``'s number in the same place, or None when every number it writes agrees.

    A response that follows the worked solution's form writes the same numbers in the same order, so the first
    difference is the first wrong intermediate value (or a misread number of the story). A response that stops
    early without an error has none; a wrong final answer always differs somewhere.
    """
    gold = [int(n) for n in NUMBER.findall(solution)]
    for index, match in enumerate(NUMBER.finditer(response)):
        if index >= len(gold) or int(match.group()) != gold[index]:
            return match.start()
    return None
