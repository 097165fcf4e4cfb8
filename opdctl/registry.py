"""Where opdctl finds its pluggable parts: backends, drift metrics and loss estimators, by name.

Backends come from Python entry points only (groups ``opdctl.teachers``,
``opdctl.students``, ``opdctl.rollout_engines``); opdctl never imports one by name.
A third-party package adds one in its own pyproject.toml::

    [project.entry-points."opdctl.teachers"]
    mybackend = "my_package:MyTeacher"

The object an entry point names is a class with a ``Config`` attribute (a subclass
of :class:`opdctl.config.BackendConfig`) and a constructor taking that config.

Drift metrics and loss estimators are functions in a :class:`Registry`: the built-in
ones register with a decorator in their module (:mod:`opdctl.drift`,
:mod:`opdctl.losses`); third-party ones through the entry-point groups
``opdctl.drift_metrics`` and ``opdctl.loss_estimators``, each naming a function with
the registry's signature, registered under the entry point's name.

This module imports no other part of opdctl but its errors, so the config schema can
validate names against it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from opdctl.errors import BackendError

BACKEND_GROUPS = {"teacher": "opdctl.teachers", "student": "opdctl.students", "rollout": "opdctl.rollout_engines"}
BACKEND_KEYS = {"teacher": "teacher.backend", "student": "student.backend", "rollout": "student.rollout"}
F = TypeVar("F", bound=Callable)


def installed(kind: str) -> dict[str, EntryPoint]:
    """The installed backends of ``kind`` ('teacher', 'student' or 'rollout'), by name."""
    return {ep.name: ep for ep in entry_points(group=BACKEND_GROUPS[kind])}


def backend_class(kind: str, name: str, setting: str | None = None) -> type:
    """Load the class registered for backend ``name``; unknown names list what is installed and name the
    ``setting`` that chose it (by default the config key, e.g. teacher.backend)."""
    available = installed(kind)
    if name not in available:
        names = ", ".join(sorted(available)) or "none"
        raise BackendError(
            f"unknown {kind} backend {name!r}: installed {kind} backends are {names} "
            f"(set {setting or BACKEND_KEYS[kind]} to one of them, or install the plugin that provides {name!r})"
        )
    return _load(available[name], f"{kind} backend {name!r}")


def _load(entry: EntryPoint, what: str) -> object:
    try:
        return entry.load()
    except Exception as exc:  # a broken plugin must not take the whole CLI down with a traceback
        raise BackendError(f"{what} failed to load ({entry.value}): {exc}") from exc


class Registry(Generic[F]):
    """Named functions of one signature: the built-ins of ``module``, then the entry points of ``group``."""

    def __init__(self, what: str, key: str, module: str, group: str) -> None:
        self.what, self.key, self.module, self.group = what, key, module, group
        self._functions: dict[str, F] = {}
        self._providers: dict[str, str] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: add the function under ``name`` (its docstring's first line describes it)."""

        def add(function: F) -> F:
            self._functions[name] = function
            self._providers.setdefault(name, "opdctl")
            return function

        return add

    def get(self, name: str) -> F:
        """The function registered as ``name``; an unknown name lists the registered ones."""
        found = self.all()
        if name not in found:
            raise BackendError(
                f"unknown {self.what} {name!r}: set {self.key} to {self.allowed()}, "
                f"or install the plugin that registers {name!r} in {self.group!r}"
            )
        return found[name]

    def all(self) -> dict[str, F]:
        """Every registered function by name, built-ins first."""
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self.module)
            for entry in entry_points(group=self.group):
                if entry.name not in self._functions:
                    self._functions[entry.name] = _load(entry, f"{self.what} {entry.name!r}")
                    self._providers[entry.name] = entry.dist.name if entry.dist else entry.value
        return dict(self._functions)

    def allowed(self) -> str:
        """The registered names, quoted, as in "'a', 'b' or 'c'"."""
        names = [repr(name) for name in self.all()]
        return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, provider, first docstring line) of every registered function."""
        return [
            (name, self._providers[name], (function.__doc__ or "").strip().splitlines()[0] if function.__doc__ else "")
            for name, function in self.all().items()
        ]


DRIFT_METRICS: Registry = Registry("drift metric", "prune.metric", "opdctl.drift", "opdctl.drift_metrics")
LOSS_ESTIMATORS: Registry = Registry("loss estimator", "loss.estimator", "opdctl.losses", "opdctl.loss_estimators")
