"""Where opdctl finds its pluggable parts, by name: one :class:`Registry` per kind.

Every kind is an entry-point group; a third-party package adds a part in its own
pyproject.toml, e.g.::

    [project.entry-points."opdctl.teachers"]
    mybackend = "my_package:MyTeacher"

=================  ======================  ======================================================
registry           entry-point group       what the entry point names
=================  ======================  ======================================================
TEACHERS           opdctl.teachers         a class with a ``Config`` schema, built as ``cls(config)``
STUDENTS           opdctl.students         the same, for the trained model
ROLLOUT_ENGINES    opdctl.rollout_engines  a class generating an HF student's rollouts elsewhere
TRACKERS           opdctl.trackers         a :class:`opdctl.runs.trackers.base.Tracker` subclass
DRIFT_METRICS      opdctl.drift_metrics    a function ``(view, threshold) -> [B, T]``
LOSS_ESTIMATORS    opdctl.loss_estimators  a function ``(student, targets, config) -> loss``
REWARDS            opdctl.rewards          a function ``(response, answer) -> float``: a task reward
=================  ======================  ======================================================

opdctl's own backends and trackers are declared as entry points in its pyproject.toml;
its drift metrics, estimators and rewards register with a decorator in their module, which the
registry imports (by name) before it looks at entry points. A part that fails to load is
one error naming the entry point, never a traceback. This module imports no other part of
opdctl but its errors, so the config schema can validate names against it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from opdctl.errors import BackendError


class Registry:
    """Named parts of one kind: built-ins registered by ``module`` (if any), then the entry points of ``group``.

    Entry points load only when asked for by name (:meth:`get`), so a broken or heavy plugin costs nothing
    to a run that does not use it.
    """

    def __init__(self, what: str, key: str, group: str, module: str | None = None) -> None:
        self.what, self.key, self.group, self.module = what, key, group, module
        self._builtins: dict[str, Any] = {}
        self._loaded: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: add a built-in under ``name`` (a function's docstring's first line describes it)."""

        def add(part: Any) -> Any:
            self._builtins[name] = part
            return part

        return add

    def entry_points(self) -> dict[str, EntryPoint]:
        """The installed entry points of the group, by name (not loaded)."""
        return {entry.name: entry for entry in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every registered name: built-ins first, then installed entry points, without loading them."""
        if self.module:
            importlib.import_module(self.module)
        return list(dict.fromkeys([*self._builtins, *self.entry_points()]))

    def get(self, name: str, setting: str | None = None) -> Any:
        """The part registered as ``name``; an unknown name lists the registered ones and names ``setting``
        (by default the config key, e.g. teacher.backend) as the place to change."""
        if name in self._loaded:
            return self._loaded[name]
        names = self.names()
        if name not in names:
            raise BackendError(
                f"unknown {self.what} {name!r}: set {setting or self.key} to {self.allowed()}, "
                f"or install the plugin that provides {name!r} (entry-point group {self.group})"
            )
        if name in self._builtins:
            return self._builtins[name]
        entry = self.entry_points()[name]
        try:
            self._loaded[name] = entry.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down with a traceback
            raise BackendError(f"{self.what} {name!r} failed to load ({entry.value}): {exc}") from exc
        return self._loaded[name]

    def all(self) -> dict[str, Any]:
        """Every registered part by name, built-ins first (loads every entry point)."""
        return {name: self.get(name) for name in self.names()}

    def provider(self, name: str) -> str:
        """Who provides ``name``: opdctl for built-ins, else the distribution that declares the entry point."""
        entry = self.entry_points().get(name)
        if name in self._builtins or entry is None:
            return "opdctl"
        return entry.dist.name if entry.dist else entry.value

    def allowed(self) -> str:
        """The registered names, quoted, as in "'a', 'b' or 'c'"."""
        names = [repr(name) for name in self.names()] or ["(none installed)"]
        return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, provider, first docstring line) of every registered part."""
        return [
            (name, self.provider(name), (part.__doc__ or "").strip().splitlines()[0] if part.__doc__ else "")
            for name, part in self.all().items()
        ]


TEACHERS = Registry("teacher backend", "teacher.backend", "opdctl.teachers")
STUDENTS = Registry("student backend", "student.backend", "opdctl.students")
ROLLOUT_ENGINES = Registry("rollout engine", "student.rollout", "opdctl.rollout_engines")
TRACKERS = Registry("tracker", "output.report_to", "opdctl.trackers")
DRIFT_METRICS = Registry("drift metric", "prune.metric", "opdctl.drift_metrics", module="opdctl.algorithm.drift")
LOSS_ESTIMATORS = Registry(
    "loss estimator", "loss.estimator", "opdctl.loss_estimators", module="opdctl.algorithm.losses"
)
REWARDS = Registry("reward function", "reward.function", "opdctl.rewards", module="opdctl.data.rewards")
BACKENDS = {"teacher": TEACHERS, "student": STUDENTS, "rollout": ROLLOUT_ENGINES}
