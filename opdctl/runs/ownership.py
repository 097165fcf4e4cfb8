"""Who owns a directory (one live process, by lock) and what kind a path is: a run, an evaluation or neither."""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

from opdctl.errors import RunError

LOCK_FILE = ".opdctl.lock"
RUN_MARKERS = ("metrics.jsonl", "checkpoints", "traces", LOCK_FILE)  # with config.yaml: a run directory
EVAL_MARKERS = ("settings.json", "responses.jsonl")  # an evaluation's output directory


class DirLock:
    """An OS lock (``flock``) on ``DIR/.opdctl.lock``: one live process owns the directory.

    The kernel releases it when the process ends, however it ends, so a killed run can
    be resumed at once. The file names its holder (PID and command) for the refusal.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        """Take the lock, or raise a one-line error naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = self._in_use(fd)
            os.close(fd)
            raise error from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} ({_command()})\n".encode(), 0)
        except OSError:  # a full disk: the lock holds, only its label is missing
            pass
        return self

    def refuse_if_held(self) -> None:
        """Raise the in-use error if another process holds the lock; writes nothing."""
        if self.held or not self.path.is_file():
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._in_use(fd) from None
        finally:
            os.close(fd)

    def _in_use(self, fd: int) -> RunError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        pid = holder.split(maxsplit=1)[0]
        return RunError(
            f"{self.directory} is in use by process {holder}: wait for it to end (or stop it: kill {pid}), then retry"
        )

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _command() -> str:
    """This process's command line, short (``opdctl train --resume runs/x``)."""
    argv = [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]
    if argv[0] in ("__main__.py", "-m"):
        argv[0] = "opdctl"
    text = " ".join(argv)
    return text if len(text) <= 120 else text[:117] + "..."


KIND_NAMES = {"run": "a run directory (written by opdctl train)", "evaluation": "an evaluation's output (opdctl eval)"}


def directory_kind(path: Path) -> str | None:
    """'run' for a training run's directory, 'evaluation' for an evaluation's output, else None."""
    path = Path(path)
    if (path / "config.yaml").is_file() and any((path / marker).exists() for marker in RUN_MARKERS):
        return "run"
    if any((path / marker).is_file() for marker in EVAL_MARKERS):
        return "evaluation"
    return None


def make_output(path: Path, flag: str, exist_ok: bool = True) -> None:
    """Create an output directory; failing, one line naming it, the reason and ``flag``, the setting to change
    (FileExistsError, with ``exist_ok`` false, is raised as it is)."""
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        if not exist_ok:
            raise
    except OSError as exc:
        raise RunError(f"cannot create {path}: {exc.strerror}: choose another {flag}") from exc


def check_output(path: Path, kind: str, flag: str) -> None:
    """Refuse an output location that cannot hold a new ``kind`` ('run' or 'evaluation') before anything loads.

    Refused: a file, a place inside a run or an evaluation, a directory of the other kind,
    and a place this user cannot create or write. ``flag`` names the setting to change.
    """
    path = Path(path).expanduser()
    for parent in path.absolute().parents:
        found = directory_kind(parent)
        if found:
            raise RunError(f"{path} is inside the {found} directory {parent}: choose a place outside it with {flag}")
    if path.exists() and not path.is_dir():
        raise RunError(f"{path} is a file, not a directory: choose another {flag}")
    found = directory_kind(path) if path.is_dir() else None
    if found and found != kind:
        raise RunError(f"{path} is {KIND_NAMES[found]}, not a place for a new {kind}: choose another {flag}")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise RunError(f"cannot create {path}: {existing} is a file: choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"cannot write to {existing} (permission denied or read-only): choose another {flag}")
