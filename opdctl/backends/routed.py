"""Several teachers as one (``teachers`` and ``data.teacher_field``): each row scored by the teacher its data row
names, the scores put back together row for row. The default teacher (the first) answers for rows without a route:
evaluation, held-out reverse KL."""

from __future__ import annotations

from typing import ClassVar

import torch
from transformers import PreTrainedTokenizerBase

from opdctl.backends.protocols import Teacher, TeacherStream
from opdctl.backends.types import Rollouts, Sampling, TeacherScores
from opdctl.config.schema import BackendConfig


class RoutedTeacher:
    """The :class:`Teacher` protocol over a named map of teachers; :meth:`for_rows` binds one step's routes."""

    Config: ClassVar[type[BackendConfig]] = BackendConfig

    def __init__(self, teachers: dict[str, Teacher], routes: list[str] | None = None) -> None:
        self.teachers, self.routes = teachers, routes
        self.default = next(iter(teachers))
        self.rescores_prefix = any(teacher.rescores_prefix for teacher in teachers.values())

    def for_rows(self, routes: list[str]) -> RoutedTeacher:
        """The same teachers, row ``i`` of the next batches going to ``routes[i]``."""
        unknown = sorted(set(routes) - set(self.teachers))
        if unknown:
            raise ValueError(f"no teacher named {unknown[0]!r}: the teachers are {', '.join(self.teachers)}")
        return RoutedTeacher(self.teachers, routes)

    def groups(self, count: int) -> dict[str, list[int]]:
        """Each teacher's rows among ``count`` (all to the default teacher without routes)."""
        routes = self.routes or [self.default] * count
        found: dict[str, list[int]] = {}
        for row, name in enumerate(routes[:count]):
            found.setdefault(name, []).append(row)
        return found

    def check(self, tokenizer: PreTrainedTokenizerBase, drift_k: int, loss_k: int) -> dict[str, str]:
        facts = {}
        for name, teacher in self.teachers.items():
            facts.update({f"{name}: {key}": value for key, value in teacher.check(tokenizer, drift_k, loss_k).items()})
        return facts

    def score(self, rollouts: Rollouts, query_ids: torch.Tensor, top_k: int) -> TeacherScores:
        parts = []
        for name, rows in self.groups(len(rollouts)).items():
            part = rollouts.select(rows)
            width = part.response_ids.shape[1]
            parts.append((rows, self.teachers[name].score(part, query_ids[rows, :width], top_k)))
        return TeacherScores.assemble(parts, len(rollouts), rollouts.response_ids.shape[1])

    def stream(self, prompts: list[list[int]]) -> TeacherStream:
        groups = self.groups(len(prompts))
        streams = {name: self.teachers[name].stream([prompts[row] for row in rows]) for name, rows in groups.items()}
        return RoutedStream(groups, streams)

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> Rollouts:
        """The default teacher's answers (evaluation)."""
        return self.teachers[self.default].generate(prompts, sampling)  # type: ignore[attr-defined]

    def context_length(self) -> int | None:
        length = getattr(self.teachers[self.default], "context_length", None)
        return length() if length else None

    def close(self) -> None:
        for teacher in self.teachers.values():
            teacher.close()


class RoutedStream:
    """One stream per teacher over its rows; each call's rows are split among them and the scores rejoined."""

    def __init__(self, groups: dict[str, list[int]], streams: dict[str, TeacherStream]) -> None:
        self.streams = streams
        self.owner = {row: (name, index) for name, rows in groups.items() for index, row in enumerate(rows)}

    def extend(
        self, rows: list[int], tokens: torch.Tensor, lengths: torch.Tensor, query_ids: torch.Tensor, top_k: int
    ) -> TeacherScores:
        by_teacher: dict[str, list[int]] = {}
        for position, row in enumerate(rows):
            by_teacher.setdefault(self.owner[row][0], []).append(position)
        parts = []
        for name, positions in by_teacher.items():
            own = [self.owner[rows[p]][1] for p in positions]
            scores = self.streams[name].extend(own, tokens[positions], lengths[positions], query_ids[positions], top_k)
            parts.append((positions, scores))
        return TeacherScores.assemble(parts, len(rows), tokens.shape[1])

    def close(self) -> None:
        for stream in self.streams.values():
            stream.close()
