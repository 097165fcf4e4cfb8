"""Extracting the final answer of a response and grading it with math-verify, under a hard time limit.

math-verify's own timeouts use ``signal.alarm``: they work only in a main thread and
cannot interrupt C code (a huge integer power, say). Grades therefore run in worker
processes, one item at a time each; a worker that has not answered within the
timeout is killed and replaced, and its item counts as wrong.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
MP_CONTEXT = "spawn"  # never fork a process that holds model threads
READY = "ready"
STARTUP_SECONDS = 300  # a worker's imports, on a loaded machine; its grades' time limit starts after


@dataclass(frozen=True)
class Grade:
    """The verdict on one response: its extracted answer, whether it equals the gold one, and a voting key."""

    extracted: str | None  # the last \\boxed{} content; None: no answer (graded wrong)
    correct: bool
    key: str | None  # math-verify's canonical form of the answer, to group equal answers for majority voting
    error: str | None = None  # why grading did not finish (the answer then counts as wrong)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, nested braces included."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i]
    return None


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (thousands separators dropped), if any."""
    found = NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def extract_answer(response: str, lenient: bool = False) -> str | None:
    """The last non-empty \\boxed{} content; with ``lenient``, else the last number in the response."""
    boxed = last_boxed(response)
    if boxed is not None and boxed.strip():
        return boxed
    return last_number(response) if lenient else None


def grade_response(gold: str, response: str, lenient: bool = False, timeout: int | None = None) -> Grade:
    """Grade ``response`` by its extracted answer against ``gold``, with math-verify (``timeout`` seconds per
    parse and comparison, main thread only; none by default: :class:`Grader` limits a worker's time instead)."""
    from math_verify import parse, verify

    extracted = extract_answer(response, lenient)
    if extracted is None:
        return Grade(None, False, None)
    gold_box = gold if last_boxed(gold) is not None else f"\\boxed{{{gold}}}"
    target = parse(f"\\boxed{{{extracted}}}", parsing_timeout=timeout)
    correct = bool(target) and verify(parse(gold_box, parsing_timeout=timeout), target, timeout_seconds=timeout)
    return Grade(extracted, correct, str(target[0]) if target else extracted.strip())


def failed(response: str, error: str, lenient: bool = False) -> Grade:
    """The grade of a response whose grading did not finish: wrong."""
    extracted = extract_answer(response, lenient)
    return Grade(extracted, False, extracted.strip() if extracted else None, error)


def _serve(conn: Connection) -> None:
    """Worker loop: grade (gold, response) pairs until told to stop."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" notice: we time out here
    import math_verify  # noqa: F401  (imported before saying ready: start-up never counts against a grade's time)

    conn.send(READY)
    while (item := conn.recv()) is not None:
        conn.send(grade_response(*item))


class _Worker:
    def __init__(self) -> None:
        context = multiprocessing.get_context(MP_CONTEXT)
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True, name="opdctl-grader")
        self.process.start()
        child.close()
        if not self.conn.poll(STARTUP_SECONDS) or self.conn.recv() != READY:
            self.stop(kill=True)
            raise RuntimeError(f"a grading process did not start within {STARTUP_SECONDS} s")

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                self.process.kill()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class Grader:
    """Grades responses in ``workers`` processes; one grade may take at most ``timeout`` seconds."""

    def __init__(self, workers: int = 2, timeout: float = 10.0) -> None:
        self.size, self.timeout = max(1, workers), timeout
        self.workers: list[_Worker] = []

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def grade(self, items: list[tuple[str, str]], lenient: bool = False) -> list[Grade]:
        """Grades of (gold, response) pairs, in order (``lenient``: see :func:`extract_answer`)."""
        if not self.workers:
            self.workers = [_Worker() for _ in range(max(1, min(self.size, len(items))))]
        results: list[Grade] = [Grade(None, False, None)] * len(items)
        pending, idle = deque(range(len(items))), list(range(len(self.workers)))
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (item, deadline)
        while pending or busy:
            while idle and pending:
                slot, index = idle.pop(), pending.popleft()
                self.workers[slot].conn.send((*items[index], lenient))
                busy[slot] = (index, time.monotonic() + self.timeout)
            soonest = min(deadline for _, deadline in busy.values())
            ready = wait([self.workers[s].conn for s in busy], timeout=max(0.0, soonest - time.monotonic()))
            for slot, (index, deadline) in list(busy.items()):
                if self.workers[slot].conn in ready:
                    results[index] = self._receive(slot, items[index][1], lenient)
                elif time.monotonic() >= deadline:
                    self._restart(slot)
                    results[index] = failed(items[index][1], f"timed out after {self.timeout:g} s", lenient)
                else:
                    continue
                del busy[slot]
                idle.append(slot)
        return results

    def _receive(self, slot: int, response: str, lenient: bool) -> Grade:
        try:
            return self.workers[slot].conn.recv()
        except (EOFError, OSError):  # the worker died (out of memory, say)
            self._restart(slot)
            return failed(response, "the grading process died", lenient)

    def _restart(self, slot: int) -> None:
        self.workers[slot].stop(kill=True)
        self.workers[slot] = _Worker()

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []
