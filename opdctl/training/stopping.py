"""Stopping a run on request: SIGINT or SIGTERM ends it after the current step, with a checkpoint.

A scheduler sends SIGTERM some time before it kills a job, and Ctrl-C sends SIGINT: the
first one lets the step in progress finish so that the run stops at a checkpoint; a second
one stops at once (the run directory stays resumable from its last checkpoint).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from opdctl.errors import RunError
from opdctl.progress import reporter

if TYPE_CHECKING:
    from opdctl.distributed import World

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(RunError):
    """The run stopped on a signal; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum

    @classmethod
    def at_once(cls, message: str) -> Stopped:
        """Stopped by a second signal (or Ctrl-C outside the handler), in the middle of a step."""
        return cls(message, signal.SIGINT)


class StopRequest:
    """Whether a stop was asked for, and by which signal."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def name(self) -> str:
        """The signal's name, e.g. SIGTERM."""
        return signal.Signals(self.signum).name if self.signum is not None else "request"

    def agreed(self, world: World) -> bool:
        """Whether any process was asked to stop (collective: every process calls it, and all stop after the
        same step)."""
        asked = [signum for signum in world.collect(self.signum) if signum is not None]
        if asked and self.signum is None:
            self.signum = asked[0]
        return bool(asked)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second signal: stop now
        self.signum = signum
        reporter().message(
            f"{signal.Signals(signum).name}: stopping after this step with a checkpoint (send it again to stop at once)"
        )


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Catch SIGINT/SIGTERM while the block runs (main thread only; elsewhere nothing is caught)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {signum: signal.signal(signum, request._handle) for signum in SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM interrupts as Ctrl-C does (so a run that is still starting cleans up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
