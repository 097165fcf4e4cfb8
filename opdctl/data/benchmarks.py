"""Benchmarks: named problem sets with reference answers, from the hub, a local file, or the demo task."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from opdctl.data.prompts import FILE_FORMATS, load_rows
from opdctl.errors import ConfigError, DataError, reason

SYNTHETIC = "synthetic"
WORDPROBLEMS = ("wordproblems", "wordproblems-long", "wordproblems-reworded")  # opdctl.data.wordproblems' sets
MATH_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
PROBLEM_FIELDS = ("problem", "question", "Problem", "Question", "prompt", "input")
ANSWER_FIELDS = ("answer", "Answer", "final_answer", "expected_answer", "gold", "ground_truth", "target", "solution")
ID_FIELDS = ("id", "unique_id", "problem_idx", "problem_id", "ID")


@dataclass(frozen=True)
class HubSource:
    """Where a named benchmark lives on the Hugging Face hub."""

    dataset: str
    split: str
    problem: str = "problem"
    answer: str = "answer"


HUB = {
    "aime24": HubSource("HuggingFaceH4/aime_2024", "train"),
    "aime25": HubSource("MathArena/aime_2025", "train"),
    "amc23": HubSource("math-ai/amc23", "test", problem="question"),
    "hmmt24": HubSource("MathArena/hmmt_feb_2024", "train"),
    "hmmt25": HubSource("MathArena/hmmt_feb_2025", "train"),
    "math500": HubSource("HuggingFaceH4/MATH-500", "test"),
}
GROUPS = {"aime": ("aime24", "aime25"), "paper": ("amc23", "aime24", "aime25", "hmmt24", "hmmt25")}
BUILTIN = (SYNTHETIC, *WORDPROBLEMS)  # generated here, no file or hub needed
NAMES = (*HUB, *GROUPS, *BUILTIN)


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str


@dataclass(frozen=True)
class Benchmark:
    name: str
    problems: list[Problem]
    prompt_template: str = "{problem}"
    source: str = ""
    lenient: bool = False  # grade the last number of a response that has no \boxed{} answer

    def prompt(self, problem: Problem) -> str:
        return self.prompt_template.format(problem=problem.problem)

    def digest(self) -> str:
        """A fingerprint of the problems and answers (a resumed evaluation must see the same ones)."""
        text = json.dumps([[p.id, p.problem, p.answer] for p in self.problems])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Fields:
    """Column names in a benchmark file; None: the first of the usual names that the file has."""

    problem: str | None = None
    answer: str | None = None
    id: str | None = None


def synthetic(limit: int | None = None) -> Benchmark:
    """The demo task's fixed held-out problems (never trained on)."""
    from opdctl.data.demo_task import held_out

    problems = [Problem(f"synthetic-{i}", p.prompt, p.answer) for i, p in enumerate(held_out())]
    return Benchmark(SYNTHETIC, problems[:limit], source="the demo task's held-out problems")


def wordproblems(limit: int | None = None, name: str = WORDPROBLEMS[0]) -> Benchmark:
    """One of opdctl's held-out English word problem sets (never trained on), graded leniently: small models
    often state the answer without \\boxed{}."""
    from opdctl.data.wordproblems import HELD_OUT_SIZE, held_out

    count = min(limit or HELD_OUT_SIZE, HELD_OUT_SIZE)
    problems = [Problem(f"{name}-{i}", p.story, p.answer) for i, p in enumerate(held_out(name, count))]
    source = f"opdctl's held-out {name} (the last number counts when there is no \\boxed{{}})"
    return Benchmark(name, problems, MATH_TEMPLATE, source, lenient=True)


def is_path(entry: str) -> bool:
    """Whether a benchmark entry names a file or directory rather than a benchmark."""
    return Path(entry).suffix.lower() in FILE_FORMATS or entry.startswith((".", "/", "~")) or Path(entry).exists()


def expand(names: list[str]) -> list[str]:
    """Benchmark names with groups (``aime``) replaced by their members; unknown names are an error."""
    members = []
    for name in names:
        if name not in NAMES and not is_path(name):
            raise DataError(
                f"unknown benchmark {name!r}: use one of {', '.join(NAMES)}, or a .jsonl/.json/.parquet file"
            )
        members.extend(GROUPS.get(name, (name,)))
    return members


def check_bench(names: list[str]) -> None:
    """Each of ``eval.bench`` a benchmark, a group or a data file; else a config error naming the key.

    Checked when a run starts, not in the schema: the names live here, above the config layer."""
    try:
        expand(names)
    except DataError as error:
        raise ConfigError(f"config error: eval.bench: {error}") from None


def load_benchmarks(
    names: list[str],
    data: list[Path] | None = None,
    fields: Fields = Fields(),
    template: str | None = None,
    limit: int | None = None,
) -> list[Benchmark]:
    """The benchmarks ``names`` ask for (names, groups or files), from ``data`` when given, else the hub.

    ``data`` holds one file per benchmark (per group member, or per name as given),
    or one directory with a ``<name>.jsonl``/``.json``/``.parquet`` per benchmark.
    """
    if template is not None:
        check_template(template)
    sources = _pair(names, [Path(d).expanduser() for d in data or []])
    seen = [name for name, _ in sources]
    repeated = sorted({name for name in seen if seen.count(name) > 1})
    if repeated:
        raise DataError(f"benchmark {repeated[0]!r} is asked for twice: name each benchmark once")
    return [_load(name, source, fields, template, limit) for name, source in sources]


def check_template(template: str) -> None:
    """A prompt template must be a format string with ``{problem}`` and nothing else to fill."""
    marker = "\x00problem\x00"
    try:
        filled = template.format(problem=marker)
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(
            f"prompt template {template!r} is not a format string with only {{problem}} ({exc!r}): "
            "write literal braces as {{ and }}"
        ) from exc
    if marker not in filled:
        raise DataError(f"prompt template {template!r} has no {{problem}}: put {{problem}} where the problem goes")


def _pair(names: list[str], data: list[Path]) -> list[tuple[str, Path | None]]:
    """(benchmark name, its file or None for the hub / built in) for each benchmark to evaluate, in order."""
    if not names:
        if not data:
            raise DataError("nothing to evaluate: give --bench NAME (e.g. --bench aime) or --data FILE")
        return [(path.stem, path) for path in data]
    units = expand(names)
    if len(data) == 1 and data[0].is_dir():
        return [_unit(u, None if _builtin(u) else _in_directory(data[0], u)) for u in units]
    if data and len(data) != len(_wanting(units)):
        units = list(names)  # one file for a whole group: that file is the benchmark
        if len(data) != len(_wanting(units)):
            raise DataError(
                f"--data gave {len(data)} file(s) for {len(_wanting(expand(names)))} benchmark(s) "
                f"({', '.join(_wanting(expand(names)))}): give one file per benchmark, in the same order, "
                "or a directory holding <name>.jsonl files"
            )
    files = iter(data)
    return [_unit(u, None if _builtin(u) or not data else next(files)) for u in units]


def _builtin(unit: str) -> bool:
    return unit in BUILTIN or is_path(unit)


def _wanting(units: list[str]) -> list[str]:
    """The units whose problems --data must give."""
    return [u for u in units if not _builtin(u)]


def _unit(unit: str, source: Path | None) -> tuple[str, Path | None]:
    return (Path(unit).stem, Path(unit).expanduser()) if is_path(unit) else (unit, source)


def _in_directory(directory: Path, name: str) -> Path:
    for suffix in FILE_FORMATS:
        if (directory / f"{name}{suffix}").is_file():
            return directory / f"{name}{suffix}"
    raise DataError(f"no {name}.jsonl, {name}.json or {name}.parquet in {directory}: add it, or pass files to --data")


def _load(name: str, source: Path | None, fields: Fields, template: str | None, limit: int | None) -> Benchmark:
    if name in BUILTIN and source is None:
        benchmark = synthetic(limit) if name == SYNTHETIC else wordproblems(limit, name)
        return replace(benchmark, prompt_template=template or benchmark.prompt_template)
    if source is None:
        hub = HUB[name]
        fields = Fields(fields.problem or hub.problem, fields.answer or hub.answer, fields.id)
    rows, where = _rows(name, source)
    problems = _problems(rows, where, name, fields)[:limit]
    return Benchmark(name, problems, template or MATH_TEMPLATE, where)


def _rows(name: str, source: Path | None) -> tuple[list[dict[str, Any]], str]:
    """The rows of a benchmark file, or of its hub dataset, and where they came from."""
    if source is not None:
        try:
            return load_rows(str(source)), str(source)
        except DataError as exc:
            if exc.__cause__ is None:  # missing, empty, unsupported: already says what to do
                raise
            raise DataError(
                f"{source} cannot be read ({_root_cause(exc)}): a benchmark file holds one row per problem "
                "with problem and answer fields"
            ) from exc
    hub = HUB[name]
    try:
        return load_rows(hub.dataset, hub.split), f"{hub.dataset} ({hub.split})"
    except DataError as exc:
        raise DataError(f"{exc}; without hub access, give the {name} file with --data") from exc


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost explicit cause (what the parser said)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return reason(exc, limit=200)


def _problems(rows: list[dict[str, Any]], where: str, name: str, fields: Fields) -> list[Problem]:
    """Problems from rows, with one-line errors for missing columns, empty values and repeated ids."""
    if not rows:
        raise DataError(f"{where} has no rows: a benchmark needs one row per problem with problem and answer fields")
    columns = list(rows[0])
    problem = _column(fields.problem, PROBLEM_FIELDS, columns, where, "problem")
    answer = _column(fields.answer, ANSWER_FIELDS, columns, where, "answer")
    if fields.id is not None and fields.id not in columns:
        raise DataError(f"{where} has no id column {fields.id!r} (columns: {', '.join(columns)}): fix --id-field")
    problems = []
    for index, row in enumerate(rows):
        text, gold = row.get(problem), row.get(answer)
        if not isinstance(text, str) or not text.strip() or gold is None or not str(gold).strip():
            raise DataError(
                f"{where} row {index + 1}: needs a non-empty {problem!r} (the problem text) and {answer!r} "
                "(the reference answer)"
            )
        problems.append(Problem(f"{name}-{index}", text, _answer_text(gold)))
    return _with_ids(problems, rows, fields.id, columns, where)


def _with_ids(
    problems: list[Problem], rows: list[dict[str, Any]], chosen: str | None, columns: list[str], where: str
) -> list[Problem]:
    """Ids from ``chosen``, else from the first usual id column whose values are unique, else row numbers."""
    candidates = [chosen] if chosen else [c for c in ID_FIELDS if c in columns]
    for column in candidates:
        ids = [str(row[column]) for row in rows]
        if len(set(ids)) == len(ids):
            return [Problem(i, p.problem, p.answer) for i, p in zip(ids, problems, strict=True)]
        if chosen:
            raise DataError(f"{where}: column {chosen!r} repeats ids: name a unique column with --id-field")
    return problems


def _column(chosen: str | None, usual: tuple[str, ...], columns: list[str], where: str, what: str) -> str:
    if chosen is not None:
        if chosen not in columns:
            raise DataError(
                f"{where} has no {what} column {chosen!r} (columns: {', '.join(columns)}): fix --{what}-field"
            )
        return chosen
    found = next((c for c in usual if c in columns), None)
    if found is None:
        raise DataError(
            f"{where} has no {what} column: expected one of {', '.join(usual)} (columns: {', '.join(columns)}); "
            f"name it with --{what}-field"
        )
    return found


def _answer_text(value: Any) -> str:
    """A reference answer as text: numbers as written (27.0 becomes 27), a list as its items joined by commas."""
    if isinstance(value, list):
        return ", ".join(_answer_text(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()
