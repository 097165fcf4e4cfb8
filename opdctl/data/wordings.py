"""The sentences of the word problems: people, things, and two disjoint sets of wordings.

A template's ``[present|past]`` picks the story's tense and ``{fields}`` name the scene
(``{She}``, ``{her}``, ``{their}``, ``{items}``, ...) and the numbers. Every operation has a
story wording and a worked-solution line: the line restates the sentence in the present
tense and computes its effect. :data:`TRAINING` wordings are what training sees;
:data:`OTHER` tells the same operations in words training never uses.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

PEOPLE = (("Maya", "she"), ("Leo", "he"), ("Ana", "she"), ("Sam", "he"), ("Priya", "she"), ("Omar", "he"),
          ("Lena", "she"), ("Tom", "he"), ("Zoe", "she"), ("Ben", "he"), ("Nora", "she"), ("Raj", "he"),
          ("Emma", "she"), ("Jack", "he"), ("Sofia", "she"), ("Liam", "he"), ("Aisha", "she"), ("Noah", "he"),
          ("Mia", "she"), ("Diego", "he"), ("Grace", "she"), ("Kenji", "he"), ("Olivia", "she"),
          ("Max", "he"))  # fmt: skip
PRONOUNS = {"she": ("her", "her"), "he": ("him", "his")}  # object, possessive
THINGS = (("marbles", "bag"), ("apples", "basket"), ("stickers", "pack"), ("pencils", "box"), ("cookies", "tray"),
          ("stamps", "album"), ("coins", "jar"), ("cards", "deck"), ("shells", "bucket"), ("books", "crate"),
          ("eggs", "carton"), ("crayons", "box"), ("buttons", "tin"), ("balloons", "bunch"), ("candies", "bag"),
          ("beads", "jar"), ("postcards", "envelope"), ("oranges", "crate"))  # fmt: skip
PLURALS = {"box": "boxes", "bunch": "bunches"}
CHOICE = re.compile(r"\[([^|\]]*)\|([^\]]*)\]")


@dataclass(frozen=True)
class Scene:
    """Who the story is about, what they count, and the tense it is told in."""

    name: str
    she: str
    friend: str
    items: str
    container: str
    past: bool

    def fill(self, template: str, *, present: bool = False, **numbers: int) -> str:
        """``template`` with the scene and ``numbers`` filled in, in the story's tense (or the present)."""
        her, their = PRONOUNS[self.she]
        fields = {"name": self.name, "she": self.she, "She": self.she.capitalize(), "her": her, "their": their,
                  "friend": self.friend, "Friend": self.friend[0].upper() + self.friend[1:], "items": self.items,
                  "container": self.container, "containers": PLURALS.get(self.container, self.container + "s"),
                  **numbers}  # fmt: skip
        text = template.format(**fields)
        return CHOICE.sub(lambda m: m.group(2) if self.past and not present else m.group(1), text)


@dataclass(frozen=True)
class Step:
    """One operation: its sentence in the story, its line in the worked solution, and the amount after it."""

    story: str
    solution: str
    total: int


# An operation's numbers from the amount before it (None: it cannot apply to that amount), and the amount after.
Numbers = Callable[[random.Random, int], dict[str, int] | None]


def _add(rng: random.Random, a: int) -> dict[str, int]:
    n = rng.randint(2, 15)
    return {"n": n, "b": a + n}


def _remove(rng: random.Random, a: int) -> dict[str, int] | None:
    if a < 3:
        return None
    n = rng.randint(2, min(a - 1, 15))
    return {"n": n, "b": a - n}


def _add_groups(rng: random.Random, a: int) -> dict[str, int]:
    g, e = rng.randint(2, 5), rng.randint(2, 8)
    return {"g": g, "e": e, "p": g * e, "b": a + g * e}


def _remove_groups(rng: random.Random, a: int) -> dict[str, int] | None:
    g, e = rng.randint(2, 4), rng.randint(2, 6)
    return {"g": g, "e": e, "p": g * e, "b": a - g * e} if g * e < a else None


def _share(rng: random.Random, a: int) -> dict[str, int] | None:
    ways = [k for k in (2, 3, 4, 5) if a % k == 0 and a // k >= 2]
    if not ways:
        return None
    k = rng.choice(ways)
    return {"k": k, "others": k - 1, "b": a // k}


def _half(rng: random.Random, a: int) -> dict[str, int] | None:
    return {"k": 2, "b": a // 2} if a % 2 == 0 and a >= 4 else None


def _times(m: int, most: int) -> Numbers:
    return lambda rng, a: {"m": m, "b": a * m} if a <= most else None


@dataclass(frozen=True)
class Operation:
    """An arithmetic effect on the amount: its numbers, how often it is drawn, and the computation line."""

    numbers: Numbers
    weight: int
    computed: str  # appended to the restated sentence in the worked solution


ADD = Operation(_add, 3, ", so {she} has {a} + {n} = {b} {items}.")
REMOVE = Operation(_remove, 3, ", so {she} has {a} - {n} = {b} {items}.")
ADD_GROUPS = Operation(_add_groups, 2, ": {g} * {e} = {p} {items}, so {she} has {a} + {p} = {b} {items}.")
REMOVE_GROUPS = Operation(_remove_groups, 1, ": {g} * {e} = {p} {items}, so {she} has {a} - {p} = {b} {items}.")
SHARE = Operation(_share, 1, ", so {she} keeps {a} / {k} = {b} {items}.")
HALF = Operation(_half, 1, ", so {she} keeps {a} / {k} = {b} {items}.")
DOUBLE = Operation(_times(2, 50), 1, ", so {she} has {a} * {m} = {b} {items}.")
TRIPLE = Operation(_times(3, 30), 1, ", so {she} has {a} * {m} = {b} {items}.")


@dataclass(frozen=True)
class Wording:
    """How stories are told: sentences for the start, each operation, the links between them, the question."""

    starts: tuple[str, ...]
    operations: dict[Operation, tuple[str, ...]]
    links: tuple[str, ...]
    questions: tuple[str, ...]

    def scene(self, rng: random.Random) -> Scene:
        (name, she), friend = rng.choice(PEOPLE), rng.choice(PEOPLE)[0]
        items, container = rng.choice(THINGS)
        return Scene(name, she, "a friend" if friend == name else friend, items, container, rng.random() < 0.3)

    def start(self, rng: random.Random, scene: Scene, total: int) -> str:
        return scene.fill(rng.choice(self.starts), n=total)

    def operation(self, rng: random.Random, scene: Scene, total: int) -> Step | None:
        """A random operation on ``total`` told in these words, or None when the one drawn cannot apply."""
        kinds = list(self.operations)
        kind = rng.choices(kinds, weights=[k.weight for k in kinds])[0]
        numbers = kind.numbers(rng, total)
        if numbers is None:
            return None
        template = rng.choice(self.operations[kind])
        story = scene.fill(template, **numbers)
        restated = scene.fill(template, **numbers, present=True).removesuffix(".")
        return Step(story, restated + scene.fill(kind.computed, a=total, **numbers), numbers["b"])

    def connect(self, rng: random.Random, sentence: str) -> str:
        """``sentence`` after a linking phrase ("Then she ...")."""
        link = rng.choice(self.links)
        if not link:
            return sentence
        first, rest = sentence.split(" ", 1)
        return f"{link}{first.lower() if first in ('She', 'He', 'Her', 'His') else first} {rest}"

    def question(self, rng: random.Random, scene: Scene) -> str:
        return scene.fill(rng.choice(self.questions))


TRAINING = Wording(
    starts=(
        "{name} [has|had] {n} {items}.",
        "{name} [starts|started] with {n} {items}.",
        "There [are|were] {n} {items} in {name}'s {container}.",
        "{name} [owns|owned] {n} {items}.",
    ),
    operations={
        ADD: (
            "{She} [finds|found] {n} more {items}.",
            "{She} [buys|bought] {n} more {items}.",
            "{Friend} [gives|gave] {her} {n} {items}.",
            "{She} [gets|got] {n} {items} from {friend}.",
            "{She} [wins|won] {n} {items} at a fair.",
            "{She} [collects|collected] {n} more {items}.",
        ),
        REMOVE: (
            "{She} [gives|gave] {n} {items} to {friend}.",
            "{She} [loses|lost] {n} {items}.",
            "{She} [sells|sold] {n} {items}.",
            "{She} [gives|gave] away {n} {items}.",
            "{Friend} [takes|took] {n} of {their} {items}.",
        ),
        ADD_GROUPS: (
            "{She} [buys|bought] {g} {containers} with {e} {items} in each {container}.",
            "{She} [gets|got] {g} {containers} of {e} {items} each.",
            "{Friend} [gives|gave] {her} {g} {containers}, and each {container} [holds|held] {e} {items}.",
        ),
        REMOVE_GROUPS: (
            "{She} [fills|filled] {g} {containers} with {e} {items} each and [gives|gave] them away.",
            "{She} [sells|sold] {g} {containers} of {e} {items} each.",
        ),
        SHARE: (
            "{She} [shares|shared] all of {their} {items} equally among {k} people, {her}self included.",
            "{She} [splits|split] {their} {items} into {k} equal groups and [keeps|kept] one group.",
        ),
        HALF: ("{She} [gives|gave] half of {their} {items} to {friend}.",),
        DOUBLE: ("{Friend} [gives|gave] {her} as many {items} as {she} already [has|had].",),
        TRIPLE: ("{She} [triples|tripled] the number of {items} {she} [has|had].",),
    },
    links=("", "Then ", "After that, ", "Later, ", "Next, "),
    questions=(
        "How many {items} [does|did] {name} have [now|in the end]?",
        "How many {items} [does|did] {name} have left?",
        "How many {items} [does|did] {name} end up with?",
    ),
)

OTHER = Wording(
    starts=(
        "At first, {name} [keeps|kept] {n} {items} at home.",
        "{name}'s {container} [holds|held] {n} {items}.",
    ),
    operations={
        ADD: (
            "{She} [picks|picked] up another {n} {items}.",
            "{Friend} [hands|handed] {her} {n} extra {items}.",
            "{n} more {items} [are|were] added to {their} collection.",
        ),
        REMOVE: (
            "{She} [donates|donated] {n} {items} to a school.",
            "{n} of {their} {items} [go|went] missing.",
            "{She} [trades|traded] {n} {items} away.",
        ),
        ADD_GROUPS: ("{She} [receives|received] {g} {containers} holding {e} {items} apiece.",),
        REMOVE_GROUPS: ("{She} [packs|packed] {e} {items} into each of {g} {containers} and [mails|mailed] them.",),
        SHARE: ("{She} [divides|divided] {their} {items} evenly into {k} piles and [keeps|kept] just one pile.",),
        HALF: ("{Friend} [asks|asked] for half of {their} {items} and [gets|got] them.",),
        DOUBLE: ("The number of {items} {she} [owns|owned] [doubles|doubled].",),
        TRIPLE: ("{Friend} [gives|gave] {her} twice as many {items} as {she} already [has|had].",),
    },
    links=("Afterwards, ", "The next day, ", "Soon after, "),
    questions=(
        "What is the final number of {items} {name} [has|had]?",
        "How many {items} [are|were] left with {name} at the end?",
    ),
)
