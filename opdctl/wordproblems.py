"""Word problems: short English arithmetic stories with exact integer answers, generated locally.

    Maya has 12 marbles. She buys 3 bags with 4 marbles in each bag. Then she gives
    5 marbles to Leo. How many marbles does Maya have now?              (answer: 19)

The demo's idea (multi-step arithmetic, every slip carries into the answer) in natural
language, for real pretrained models and their chat templates, with no download:
``data.source: wordproblems`` trains on them, ``opdctl eval --bench wordproblems``
scores a model on a fixed held-out set that training never draws from.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

NAME = "wordproblems"
SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
HELD_OUT_SIZE = 200
HELD_OUT_SEED = 20261130
PEOPLE = (("Maya", "she"), ("Leo", "he"), ("Ana", "she"), ("Sam", "he"), ("Priya", "she"), ("Omar", "he"),
          ("Lena", "she"), ("Tom", "he"))  # fmt: skip
PRONOUNS = {"she": ("her", "her"), "he": ("him", "his")}  # object, possessive
ITEMS = (("marbles", "bag"), ("apples", "basket"), ("stickers", "pack"), ("pencils", "box"), ("cookies", "tray"),
         ("stamps", "album"), ("coins", "jar"), ("cards", "deck"), ("shells", "bucket"),
         ("books", "crate"))  # fmt: skip


@dataclass(frozen=True)
class WordProblem:
    story: str
    answer: str

    @property
    def prompt(self) -> str:
        return f"{self.story}\n{SUFFIX}"


@dataclass(frozen=True)
class _Scene:
    name: str
    she: str
    her: str  # object
    their: str  # possessive
    friend: str
    item: str
    container: str


Step = Callable[[random.Random, _Scene, int], tuple[str, int] | None]


def _buy(rng: random.Random, s: _Scene, total: int) -> tuple[str, int]:
    n = rng.randint(2, 15)
    return f"{s.she.capitalize()} finds {n} more {s.item}.", total + n


def _give(rng: random.Random, s: _Scene, total: int) -> tuple[str, int] | None:
    if total < 3:
        return None
    n = rng.randint(2, min(total - 1, 15))
    return f"{s.she.capitalize()} gives {n} {s.item} to {s.friend}.", total - n


def _groups(rng: random.Random, s: _Scene, total: int) -> tuple[str, int]:
    groups, each = rng.randint(2, 5), rng.randint(2, 6)
    text = f"{s.she.capitalize()} buys {groups} {s.container}s with {each} {s.item} in each {s.container}."
    return text, total + groups * each


def _share(rng: random.Random, s: _Scene, total: int) -> tuple[str, int] | None:
    ways = [k for k in (2, 3, 4, 5) if total % k == 0 and total // k >= 2]
    if not ways:
        return None
    k = rng.choice(ways)
    people = "a friend" if k == 2 else f"{k - 1} friends"
    text = f"{s.she.capitalize()} shares all of {s.their} {s.item} equally between {s.her}self and {people}."
    return text, total // k


def _double(rng: random.Random, s: _Scene, total: int) -> tuple[str, int] | None:
    if total > 40:
        return None
    return f"{s.friend} gives {s.her} as many {s.item} as {s.she} already has.", total * 2


STEPS: tuple[Step, ...] = (_buy, _give, _groups, _share, _double)


def _then(sentence: str) -> str:
    first, rest = sentence.split(" ", 1)
    return f"Then {first.lower() if first in ('She', 'He') else first} {rest}"


def random_problem(rng: random.Random, steps: tuple[int, int] = (2, 3)) -> WordProblem:
    """A story of ``steps`` operations on a starting amount; the answer stays a whole number >= 0."""
    (name, she), friend = rng.choice(PEOPLE), rng.choice(PEOPLE)[0]
    if friend == name:
        friend = "a friend"
    item, container = rng.choice(ITEMS)
    scene = _Scene(name, she, *PRONOUNS[she], friend, item, container)
    total = rng.randint(4, 20)
    sentences = [f"{name} has {total} {item}."]
    wanted = rng.randint(*steps)
    while len(sentences) <= wanted:
        result = rng.choice(STEPS)(rng, scene, total)
        if result is not None:
            sentence, total = result
            sentences.append(_then(sentence) if len(sentences) > 1 else sentence)
    sentences.append(f"How many {item} does {name} have now?")
    return WordProblem(" ".join(sentences), str(total))


def _held_out(problem: WordProblem) -> bool:
    """One story in ten, by a hash of its text, belongs to the held-out set; training never uses it."""
    return hashlib.sha256(problem.story.encode()).digest()[0] % 10 == 0


def held_out(count: int = HELD_OUT_SIZE) -> list[WordProblem]:
    """The fixed evaluation problems (the same on every machine)."""
    rng, found, seen = random.Random(HELD_OUT_SEED), [], set()
    while len(found) < count:
        problem = random_problem(rng)
        if _held_out(problem) and problem.story not in seen:
            seen.add(problem.story)
            found.append(problem)
    return found


def training_problems(seed: int) -> Iterator[WordProblem]:
    """An endless stream of training problems, none of them in the held-out set."""
    rng = random.Random(seed)
    while True:
        problem = random_problem(rng)
        if not _held_out(problem):
            yield problem
