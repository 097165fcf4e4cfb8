"""How long-running library code reports progress without knowing who is watching.

The CLI installs a rich reporter on a terminal and a :class:`LineReporter` otherwise (a log
file, a batch scheduler, ``| tee``); library users get log messages by default.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TextIO

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


class LineReporter:
    """Plain lines for logs: each message, and a progress line every ``every`` items of a task (default: every
    5% of it, and its last item; $OPDCTL_PROGRESS_EVERY sets the count) with the time so far and to go."""

    def __init__(self, stream: TextIO | None = None, every: int | None = None) -> None:
        self.stream = stream or sys.stderr
        chosen = os.environ.get("OPDCTL_PROGRESS_EVERY", "")
        self.every = every if every is not None else (int(chosen) if chosen.isdigit() and int(chosen) > 0 else None)

    def message(self, text: str) -> None:
        print(f"· {text}", file=self.stream, flush=True)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        every = self.every or max(1, math.ceil(total / 20))
        started, done = time.monotonic(), 0

        def advance(n: int = 1, **fields: Any) -> None:
            nonlocal done
            before, done = done, done + n
            if done // every == before // every and done != total:
                return
            elapsed = time.monotonic() - started
            left = elapsed / done * (total - done) if done else 0.0
            info = "".join(f"  {key} {value}" for key, value in fields.items())
            line = f"{description} {done}/{total} ({done / max(total, 1):.0%}) {_clock(elapsed)}, eta {_clock(left)}"
            print(line + info, file=self.stream, flush=True)

        yield advance


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


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
