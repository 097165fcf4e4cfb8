"""Training prompts: the demo task, a local file, or a hub dataset, tokenized once."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from opdctl.config.schema import DataConfig
from opdctl.errors import DataError, reason
from opdctl.progress import reporter

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
OTHER_FILE_SUFFIXES = {".csv", ".tsv", ".txt", ".yaml", ".yml", ".xlsx", ".xls", ".arrow", ".gz", ".zip", ".md"}
BUILTIN_TASKS = ("demo", "wordproblems", "wordproblems-long")  # generated here: see builtin_problems
BUILTIN_TRAINING_PROMPTS = 20_000


@dataclass
class PromptSet:
    """Tokenized prompts with their source text and reference answers (when known)."""

    ids: list[list[int]]
    texts: list[str]
    answers: list[str | None]
    solutions: list[str] | None = None  # worked solutions, when the source has them (built-in word problems)
    teacher_ids: list[list[int]] | None = None  # the teacher's own prompts (data.teacher_prompt_template)
    teacher_names: list[str] | None = None  # which of several teachers scores each prompt (data.teacher_field)

    def __len__(self) -> int:
        return len(self.ids)


def chat_prompt(
    tokenizer: PreTrainedTokenizerBase, content: str | list[dict[str, str]], use_template: bool
) -> list[int]:
    """Token ids of a user prompt, through the chat template when the tokenizer has one."""
    return chat_prompts(tokenizer, [content], use_template)[0]


def chat_prompts(
    tokenizer: PreTrainedTokenizerBase, contents: list[str | list[dict[str, str]]], use_template: bool
) -> list[list[int]]:
    """:func:`chat_prompt` of each content, tokenized in one batch (twice as fast over the demo's 20,000)."""
    if not contents:
        return []
    conversations = [[{"role": "user", "content": c}] if isinstance(c, str) else c for c in contents]
    if use_template and tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=False)
        return [list(row) for row in ids]
    texts = ["\n".join(m["content"] for m in messages) for messages in conversations]
    return [list(row) for row in tokenizer(texts)["input_ids"]]


def load_rows(source: str, split: str = "train", name: str | None = None) -> list[dict[str, Any]]:
    """Rows of a local .jsonl/.json/.parquet file or a hub dataset, loaded with `datasets`."""
    import datasets

    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    looks_local = (
        suffix in FILE_FORMATS or suffix in OTHER_FILE_SUFFIXES or source.startswith((".", "/", "~")) or path.exists()
    )
    try:
        if looks_local:
            _check_file(path)
            dataset = datasets.load_dataset(FILE_FORMATS[suffix], data_files=str(path), split="train")
        else:
            dataset = datasets.load_dataset(source, name, split=split)
    except DataError:
        raise
    except Exception as exc:
        if looks_local and suffix == ".jsonl":
            _find_bad_line(path)
        raise DataError(f"cannot load dataset {source!r}: {reason(exc)}") from exc
    return list(dataset)


def _check_file(path: Path) -> None:
    """A local data file exists, has a supported format and holds something."""
    if path.is_dir():
        raise DataError(f"{path} is a directory: give a .jsonl, .json or .parquet file")
    if not path.is_file():
        raise DataError(f"data file not found: {path} (give an existing .jsonl, .json or .parquet file)")
    if path.suffix.lower() not in FILE_FORMATS:
        raise DataError(f"unsupported data file {path}: use .jsonl, .json or .parquet")
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty: it needs one row per prompt")
    if path.suffix.lower() != ".parquet" and not path.read_bytes().strip():
        raise DataError(f"data file {path} holds only blank lines: it needs one row per prompt")


def _find_bad_line(path: Path) -> None:
    """Raise a DataError naming the first line of a .jsonl file that is not a JSON object, if there is one."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"{path} line {number} is not UTF-8 text: save the file as UTF-8") from None
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {number} is not JSON ({exc.msg}): fix or remove that line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {number} is not a JSON object: each line must be one row {{...}}")


def builtin_problems(source: str, seed: int) -> Iterator[Any]:
    """The endless training stream of a built-in task (problems with ``prompt`` and ``answer``; word problems
    also have a worked ``solution``)."""
    if source == "demo":
        from opdctl.data.demo_task import training_problems

        return training_problems(seed)
    from opdctl.data.wordproblems import training_problems

    return training_problems(seed, source)


def load_prompts(config: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PromptSet:
    """The training prompts named by the ``data`` section (and the teacher's, with a privileged context)."""
    if config.source in BUILTIN_TASKS:
        problems = list(islice(builtin_problems(config.source, seed), config.limit or BUILTIN_TRAINING_PROMPTS))
        texts, answers = [p.prompt for p in problems], [p.answer for p in problems]
        solutions = [p.solution for p in problems] if config.source != "demo" else None
        prompts = PromptSet(chat_prompts(tokenizer, texts, config.chat_template), texts, answers, solutions)
        rows = [_problem_row(p) for p in problems]
    else:
        prompts, rows = _file_prompts(config, tokenizer)
    if config.teacher_prompt_template is not None:
        prompts.teacher_ids = teacher_prompts(config, tokenizer, rows)
    if config.teacher_field is not None:
        prompts.teacher_names = _teacher_names(config, rows)
    return prompts


def _teacher_names(config: DataConfig, rows: list[dict[str, Any]]) -> list[str]:
    """Each row's teacher, from its ``data.teacher_field`` column."""
    field, names = config.teacher_field, []
    for index, row in enumerate(rows):
        value = row.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            columns = ", ".join(row)
            raise DataError(
                f"{config.source} row {index + 1} has no {field!r} to pick its teacher (columns: {columns}): "
                "fill it, or set data.teacher_field to the column that names each row's teacher"
            )
        names.append(str(value))
    return names


def _problem_row(problem: Any) -> dict[str, str]:
    """A built-in problem's fields for a teacher template: prompt, answer and its worked solution."""
    solution = problem.solution() if callable(problem.solution) else problem.solution
    return {"prompt": problem.prompt, "answer": problem.answer, "solution": solution}


def teacher_prompts(
    config: DataConfig, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]]
) -> list[list[int]]:
    """The teacher's prompt of each row: ``data.teacher_prompt_template`` over the row, through the chat template.

    Only the prompts differ: the teacher scores the student's very response tokens after them, so the
    response's positions are the same for both models whatever characters the template holds."""
    template = config.teacher_prompt_template or ""
    texts = []
    for index, row in enumerate(rows):
        try:
            texts.append(template.format_map(row))
        except (KeyError, IndexError, ValueError) as exc:
            fields = ", ".join(row)
            raise DataError(
                f"data.teacher_prompt_template {template!r} fails on row {index + 1}: {exc!r} (fields: {fields})"
            ) from exc
    return chat_prompts(tokenizer, texts, config.chat_template)


def _file_prompts(config: DataConfig, tokenizer: PreTrainedTokenizerBase) -> tuple[PromptSet, list[dict[str, Any]]]:
    """The prompts of a data file or hub dataset, and the rows they came from."""
    rows = load_rows(config.source, config.split, config.name)[: config.limit]
    if not rows:
        raise DataError(
            f"dataset {config.source!r} (split {config.split!r}) has no rows: check data.source and data.split"
        )
    if config.prompt_field not in rows[0]:
        raise DataError(
            f"dataset {config.source!r} has no column {config.prompt_field!r} "
            f"(columns: {', '.join(rows[0])}): set data.prompt_field"
        )
    usable, skipped = [], []
    for index, row in enumerate(rows):
        problem = _prompt_problem(row.get(config.prompt_field), config.prompt_field)
        if problem:
            if not config.skip_bad_rows:
                raise DataError(
                    f"{config.source} row {index + 1}: {problem}: fix the row, or set data.skip_bad_rows=true to skip "
                    "such rows"
                )
            skipped.append(index)
            continue
        usable.append((index, row, _prompt_content(row, config, index)))
    prompts, too_long, kept = PromptSet([], [], []), 0, []
    all_ids = chat_prompts(tokenizer, [content for _, _, content in usable], config.chat_template)
    for (index, row, content), ids in zip(usable, all_ids, strict=True):
        if len(ids) > config.max_prompt_tokens:
            if config.skip_long_prompts:
                too_long += 1
                continue
            raise DataError(
                f"{config.source} row {index + 1}: prompt has {len(ids)} tokens, more than data.max_prompt_tokens="
                f"{config.max_prompt_tokens} (raise it, set data.skip_long_prompts=true, or remove long prompts)"
            )
        prompts.ids.append(ids)
        kept.append({**row, "prompt": row[config.prompt_field]})
        prompts.texts.append(content if isinstance(content, str) else content[-1]["content"])
        answer = row.get(config.answer_field) if config.answer_field else None
        prompts.answers.append(None if answer is None else str(answer))
    if skipped:
        reporter().message(
            f"skipped {len(skipped)} of {len(rows)} rows of {config.source} without a usable "
            f"{config.prompt_field!r} (first: row {skipped[0] + 1}; data.skip_bad_rows)"
        )
    if too_long:
        reporter().message(
            f"skipped {too_long} of {len(rows)} prompts of {config.source} longer than data.max_prompt_tokens="
            f"{config.max_prompt_tokens}"
        )
    if not prompts.ids and not skipped:
        raise DataError(
            f"every prompt of {config.source} is longer than data.max_prompt_tokens={config.max_prompt_tokens}: "
            "raise it"
        )
    if not prompts.ids:
        raise DataError(f"dataset {config.source!r} has no row with a usable {config.prompt_field!r}: fix the data")
    return prompts, kept


def _prompt_problem(value: Any, field: str) -> str | None:
    """What is wrong with a row's prompt value (missing, empty, not text or chat messages), or None."""
    if value is None:
        return f"{field!r} is missing or null"
    if isinstance(value, str):
        return f"{field!r} is empty" if not value.strip() else None
    if isinstance(value, list):
        messages = value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
        return None if messages else f"{field!r} is a list but not chat messages ({{'role', 'content'}} each)"
    return f"{field!r} is a {type(value).__name__}, not text or a list of chat messages"


def _prompt_content(row: dict[str, Any], config: DataConfig, index: int) -> str | list[dict[str, str]]:
    value = row[config.prompt_field]
    if isinstance(value, list):  # already chat messages
        return value
    try:
        return config.prompt_template.format_map({**row, "prompt": value})
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(f"data.prompt_template {config.prompt_template!r} fails on row {index + 1}: {exc!r}") from exc


class PromptSampler:
    """Which prompts each step uses: a seeded permutation per epoch, a pure function of the step.

    Being stateless makes resumed runs draw exactly the prompts an uninterrupted run would.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self._epoch, self._order = -1, list(range(size))

    def indices(self, step: int, count: int) -> list[int]:
        picked = []
        for slot in range(step * count, (step + 1) * count):
            epoch, position = divmod(slot, self.size)
            if epoch != self._epoch:
                self._order = list(range(self.size))
                random.Random(self.seed * 1_000_003 + epoch).shuffle(self._order)
                self._epoch = epoch
            picked.append(self._order[position])
        return picked
