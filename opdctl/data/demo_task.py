"""The demo's synthetic task: add a chain of labelled single digits, writing every partial sum.

    prompt   a3+b7+c2+d9+e5
    teacher  a3+b7=10,10+c2=12,12+d9=21,21+e5=26
             \\boxed{26}

Each term carries a letter so that a tiny model finds "the next term" by its
label rather than by counting, which it learns far more slowly.

Any slip carries into the answer, which is checked exactly. Both models sometimes
do scratch work after the chain, and that is where rollouts drift. The teacher's
scratch work is long and uninformative: it learned the form ("check 47,check 3,...")
from solutions whose numbers were noise, so on a stretch of scratch work its
next-token distribution says nothing about what the student writes, much as a real
teacher's per-token reward stops meaning much deep into a long exploratory rollout.
The student's scratch work is its own: it re-checks every step in turn, on and on
("check 10+c2=12,check 12+d9=21,..."), and never reaches an answer. Because the
teacher starts scratch work too, OPD gives the student no reason to stop starting
it: the drift lasts through training, as it does for real students.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

MIN_TERMS, MAX_TERMS = 5, 10
LABELS = "abcdefghij"
CHECK_WORD = "check "


@dataclass(frozen=True)
class Problem:
    terms: tuple[int, ...]

    @property
    def prompt(self) -> str:
        return "+".join(f"{LABELS[i]}{term}" for i, term in enumerate(self.terms))

    @property
    def answer(self) -> str:
        return str(sum(self.terms))

    def steps(self) -> list[str]:
        """Each partial sum written out: 'a3+b7=10', '10+c2=12', ..."""
        total, steps = self.terms[0], []
        for i, term in enumerate(self.terms[1:], start=1):
            left = f"{LABELS[0]}{total}" if i == 1 else str(total)
            steps.append(f"{left}+{LABELS[i]}{term}={total + term}")
            total += term
        return steps

    def solution(self) -> str:
        """The teacher's way of writing."""
        return ",".join(self.steps()) + f"\n\\boxed{{{self.answer}}}"

    def scratch_solution(self, rng: random.Random, items: tuple[int, int]) -> str:
        """The teacher's scratch work: the chain, then re-checks whose numbers it never got right, then the answer."""
        scratch = "".join(f"{CHECK_WORD}{rng.randint(0, 99)}," for _ in range(rng.randint(*items)))
        return ",".join(self.steps()) + f"\n{scratch}\n\\boxed{{{self.answer}}}"

    def rechecking_solution(self, length: int) -> str:
        """The student's scratch work: the chain, then re-checking every step in turn, on and on (cut at ``length``)."""
        steps = self.steps()
        text = ",".join(steps) + "\n"
        while len(text) < length:
            text += "".join(f"{CHECK_WORD}{step}," for step in steps)
        return text[:length]


def random_problem(rng: random.Random, min_terms: int = MIN_TERMS, max_terms: int = MAX_TERMS) -> Problem:
    return Problem(tuple(rng.randint(1, 9) for _ in range(rng.randint(min_terms, max_terms))))


def held_out(count: int = 200, seed: int = 1234) -> list[Problem]:
    """The fixed evaluation problems, never used for training."""
    rng = random.Random(seed)
    return [random_problem(rng) for _ in range(count)]


def training_problems(seed: int, exclude: list[Problem] | None = None) -> Iterator[Problem]:
    """An endless stream of fresh problems, skipping the held-out ones."""
    excluded = {p.terms for p in (exclude if exclude is not None else held_out())}
    rng = random.Random(seed)
    while True:
        problem = random_problem(rng)
        if problem.terms not in excluded:
            yield problem
