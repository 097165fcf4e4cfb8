"""The demo's synthetic task: add a chain of labelled single digits, writing every partial sum.

    prompt   a3+b7+c2+d9+e5
    teacher  a3+b7=10,10+c2=12,12+d9=21,21+e5=26
             \\boxed{26}

Each term carries a letter so that a tiny model finds "the next term" by its
label rather than by counting, which it learns far more slowly.

Any slip carries into the answer, which is checked exactly. The student was
pre-trained on solutions that sometimes fall into a habit the teacher never
shows: after some step it starts re-checking that step, over and over
("check 10+c2=12,check 10+c2=12,..."), and never reaches an answer. That is drift
in Prune-OPD's sense: once the prefix leaves the teacher's way of writing, the
teacher's per-token rewards stop meaning much, and every further token is
compute spent on a rollout that will not become a solution.
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

    def rechecking_solution(self, rng: random.Random, length: int) -> str:
        """The student's habit: from a random step on, re-check it forever (cut at ``length``)."""
        steps = self.steps()
        at = rng.randrange(len(steps))
        text = ",".join(steps[: at + 1]) + ","
        while len(text) < length:
            text += f"{CHECK_WORD}{steps[at]},"
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
