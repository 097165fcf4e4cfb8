"""How long-running library code reports progress without knowing who is watching.

The CLI installs a rich reporter; library users get log messages by default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

log = logging.getLogger("opdctl")


class Reporter(Protocol):
    def message(self, text: str) -> None:
        """A one-line status message."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        """A progress bar; the yielded callable advances it (``advance(n=1, **fields)``)."""


class LogReporter:
    """Messages to the ``opdctl`` logger; progress bars are silent."""

    def message(self, text: str) -> None:
        log.info(text)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        log.info("%s (%d)", description, total)
        yield lambda n=1, **fields: None


_DEFAULT = LogReporter()
_current: ContextVar[Reporter] = ContextVar("opdctl_reporter", default=_DEFAULT)


def reporter() -> Reporter:
    return _current.get()


@contextmanager
def reporting_to(new: Reporter) -> Iterator[Reporter]:
    token = _current.set(new)
    try:
        yield new
    finally:
        _current.reset(token)
