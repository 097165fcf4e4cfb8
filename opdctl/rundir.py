"""The run directory: its layout, atomic writes, metrics, traces and checkpoints.

    RUN_DIR/
      config.yaml              the resolved config
      metrics.jsonl            one JSON object per step (and eval records)
      traces/tokens/step_NNNNNN.parquet     per traced token
      traces/rollouts/step_NNNNNN.parquet   per traced rollout
      checkpoints/step_NNNNNN/  HF model + tokenizer, optimizer.pt, trainer_state.json, manifest.json
      summary.json             written when the run ends
      .opdctl.lock             held (flock) by the one process that writes the run

Every file appears whole or not at all: it is written beside its final name
and renamed into place; checkpoints are complete directories renamed likewise,
and their manifest (every file and its size, written last) tells a complete
checkpoint from a damaged one. A line of metrics.jsonl that does not parse is
skipped by readers, never taken for data, and never costs the lines after it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from opdctl.checkpoint import OPTIMIZER_FILE, STATE_FILE
from opdctl.errors import RunError

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{6,})$")
TRACE_PATTERN = re.compile(r"^step_(\d{6,})\.parquet$")
LOCK_FILE = ".opdctl.lock"
MANIFEST_FILE = "manifest.json"
LEGACY_CHECKPOINT_FILES = (STATE_FILE, OPTIMIZER_FILE)  # checkpoints written before manifests
RUN_MARKERS = ("metrics.jsonl", "checkpoints", "traces", LOCK_FILE)  # with config.yaml: a run directory
EVAL_MARKERS = ("settings.json", "responses.jsonl")  # an evaluation's output directory
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO, errno.EACCES, errno.EPERM}


def disk_full(path: Path, margin: int = 1 << 20) -> bool:
    """Whether the file system holding ``path`` has less than ``margin`` bytes free."""
    try:
        return shutil.disk_usage(path).free < margin
    except OSError:
        return False


def write_failure(exc: OSError, fallback: Path, resume: str) -> str | None:
    """One line for a failed write (full disk, quota, read-only): the file, the cause, how to go on; else None."""
    if exc.errno not in WRITE_ERRORS:
        return None
    return f"cannot write {exc.filename or fallback}: {exc.strerror}; make room, then continue with {resume}"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _name_file(exc, path)
        raise


def _name_file(exc: BaseException, path: Path) -> None:
    """Let a failed write's error name the file it was writing (a full disk's ENOSPC does not)."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(path)


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """A staging directory that becomes ``path`` only if the block finishes."""
    staging = path.with_name(f".{path.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _name_file(exc, path)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staging, path)


def step_name(step: int) -> str:
    return f"step_{step:06d}"


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


def directory_kind(path: Path) -> str | None:
    """'run' for a training run's directory, 'evaluation' for an evaluation's output, else None."""
    path = Path(path)
    if (path / "config.yaml").is_file() and any((path / marker).exists() for marker in RUN_MARKERS):
        return "run"
    if any((path / marker).is_file() for marker in EVAL_MARKERS):
        return "evaluation"
    return None


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
        hint = "opdctl train --resume" if found == "run" else "opdctl eval --output"
        raise RunError(f"{path} is an {found} directory (written by {hint}), not an {kind}'s: choose another {flag}")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise RunError(f"cannot create {path}: {existing} is a file: choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"cannot write to {existing} (permission denied or read-only): choose another {flag}")


@dataclass
class MetricsScan:
    """What metrics.jsonl holds: its records, and the lines that are not records."""

    records: list[dict[str, Any]] = field(default_factory=list)
    damaged: list[tuple[int, str]] = field(default_factory=list)  # (1-based line number, text)
    torn: bool = False  # the last line was cut short (a crash while it was appended)

    def note(self, path: Path) -> str | None:
        """A one-line warning about damaged lines, or None."""
        if not self.damaged:
            return None
        lines = ", ".join(str(n) for n, _ in self.damaged[:5]) + (" ..." if len(self.damaged) > 5 else "")
        plural = "s" if len(self.damaged) > 1 else ""
        return f"warning: {path} line{plural} {lines}: not a JSON record, skipped"


def scan_jsonl(path: Path) -> MetricsScan:
    """Every JSON-object line of ``path``; a damaged line is skipped and listed, never the lines after it."""
    scan = MetricsScan()
    if not path.is_file():
        return scan
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    last = len(lines) - 1  # the text after the final newline: empty unless a crash cut the line short
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            scan.records.append(record)
        elif number - 1 == last:
            scan.torn = True
        else:
            scan.damaged.append((number, line))
    return scan


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and make it durable; a line cut short before it is ended first, so it cannot glue onto it."""
    try:
        with open(path, "a+b") as handle:
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
            handle.write(line.encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        _name_file(exc, path)
        raise


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at ``path`` is not complete (a file missing or cut short), or None if it is."""
    manifest = path / MANIFEST_FILE
    if not manifest.is_file():
        missing = [name for name in LEGACY_CHECKPOINT_FILES if not (path / name).is_file()]
        return f"{missing[0]} is missing" if missing else None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} is damaged"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, not the {size} written"
    return None


def write_manifest(directory: Path) -> None:
    """List every file of a checkpoint with its size (written last: its presence marks the checkpoint whole)."""
    files = {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}
    atomic_write(directory / MANIFEST_FILE, json.dumps({"files": files}, indent=1) + "\n")


class RunDir:
    """Read and write one run's files; the process that writes holds the directory's lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.traces_path = self.path / "traces"
        self.checkpoints_path = self.path / "checkpoints"
        self.summary_path = self.path / "summary.json"
        self.lock = DirLock(self.path)
        self._created = False
        self.on_metrics: list[Callable[[dict[str, Any]], None]] = []  # told of every record appended

    @staticmethod
    def refuse_existing(path: Path) -> None:
        DirLock(path).refuse_if_held()
        if (Path(path) / "config.yaml").exists():
            raise RunError(
                f"{path} already holds a run: continue it with --resume {path}, or set output.dir to a new directory"
            )

    @classmethod
    def claim(cls, path: Path, unique: bool = False) -> RunDir:
        """The directory of a new run, created (if need be) and locked before anything is written into it.

        With ``unique`` (a ``{timestamp}`` name) a taken name gets a suffix (-2, -3, ...) instead of a refusal,
        so two launches in the same second never share a directory.
        """
        path = Path(path)
        check_output(path, "run", "output.dir")
        if not unique:
            cls.refuse_existing(path)
        for attempt in range(1, 1000):
            candidate = path if attempt == 1 else path.with_name(f"{path.name}-{attempt}")
            created = not candidate.exists()
            try:
                candidate.mkdir(parents=True, exist_ok=not unique)
            except FileExistsError:
                continue
            except OSError as exc:
                raise RunError(f"cannot create {candidate}: {exc.strerror}: choose another output.dir") from exc
            break
        run = cls(candidate)
        run.lock.acquire()
        run._created = created
        if directory_kind(run.path) is not None or run.config_path.exists():
            run.lock.release()
            cls.refuse_existing(run.path)
        return run

    @classmethod
    def create(cls, path: Path, config_yaml: str) -> RunDir:
        """A new run directory holding ``config_yaml``, locked by this process until ``lock.release()``."""
        run = cls.claim(path)
        run.write_config(config_yaml)
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run directory; a directory that is not one gets a clear error."""
        run = cls(path)
        if not run.path.is_dir():
            raise RunError(f"run directory not found: {path}")
        if not run.config_path.is_file():
            kind = directory_kind(run.path)
            what = f"an {kind} directory" if kind else "not an opdctl run directory (it has no config.yaml)"
            raise RunError(f"{path} is {what}: --resume takes a directory written by opdctl train")
        return run

    def abandon(self) -> None:
        """Let go of a run that failed to start: unlock, and remove the directory if this process made it empty."""
        self.lock.release()
        if self._created and {p.name for p in self.path.iterdir()} <= {LOCK_FILE}:
            shutil.rmtree(self.path, ignore_errors=True)

    def write_config(self, config_yaml: str) -> None:
        atomic_write(self.config_path, config_yaml)

    # metrics ---------------------------------------------------------------

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line, make it durable, then pass the record on (to experiment trackers)."""
        append_line(self.metrics_path, json.dumps(record))
        for listener in self.on_metrics:
            listener(record)

    def scan_metrics(self) -> MetricsScan:
        return scan_jsonl(self.metrics_path)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every metrics record (damaged lines and a line cut short by a crash are skipped)."""
        return self.scan_metrics().records

    def rewind(self, step: int) -> list[str]:
        """Forget metrics and traces of steps after ``step`` (a resume continues from there).

        Damaged lines move to metrics.jsonl.damaged; every valid record up to ``step`` stays.
        Returns one-line notes on what was damaged and which steps have no record.
        """
        scan = self.scan_metrics()
        kept = [r for r in scan.records if _step_of(r) <= step]
        notes = []
        if scan.damaged:
            damaged_path = self.metrics_path.with_name(self.metrics_path.name + ".damaged")
            for _, line in scan.damaged:
                append_line(damaged_path, line)
            numbers = ", ".join(str(n) for n, _ in scan.damaged)
            notes.append(f"metrics.jsonl line(s) {numbers} damaged: moved to {damaged_path.name}")
        if len(kept) != len(scan.records) or scan.damaged or scan.torn:
            atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        logged = {_step_of(r) for r in kept if "eval" not in r}
        missing = [s for s in range(1, step + 1) if s not in logged]
        if missing:
            notes.append(f"no record of step {_ranges(missing)} in metrics.jsonl (trained, but its metrics are lost)")
        for table in ("tokens", "rollouts"):
            for path in self.trace_files(table):
                if trace_step(path) > step:
                    path.unlink()
        return notes

    # traces ----------------------------------------------------------------

    def write_traces(self, step: int, tokens: pa.Table, rollouts: pa.Table) -> None:
        """Rollout table first: a token file never exists without its rollout file."""
        for table, data in (("rollouts", rollouts), ("tokens", tokens)):
            path = self.traces_path / table / f"{step_name(step)}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            os.close(fd)
            try:
                pq.write_table(data, tmp, compression="zstd")
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def trace_files(self, table: str) -> list[Path]:
        directory = self.traces_path / table
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.iterdir() if TRACE_PATTERN.match(p.name))

    # checkpoints -----------------------------------------------------------

    def all_checkpoints(self) -> list[tuple[int, Path]]:
        """Every checkpoint directory, complete or not, oldest first."""
        if not self.checkpoints_path.is_dir():
            return []
        found = []
        for path in self.checkpoints_path.iterdir():
            match = CHECKPOINT_PATTERN.match(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
        return sorted(found)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first."""
        return [(step, path) for step, path in self.all_checkpoints() if checkpoint_problem(path) is None]

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self, step: int, write: Callable[[Path], None], keep: int | None) -> Path:
        """Write a checkpoint through ``write(staging_dir)``, then drop all but the newest ``keep``."""
        path = self.checkpoints_path / step_name(step)
        with atomic_directory(path) as staging:
            try:
                write(staging)
            except Exception as exc:  # torch and safetensors report a full disk as their own errors
                if isinstance(exc, OSError) or not disk_full(staging):
                    raise
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging)) from exc
            write_manifest(staging)
        if keep is not None:
            for _, old in self.checkpoints()[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.summary_path, json.dumps(summary, indent=2) + "\n")


def _step_of(record: dict[str, Any]) -> int:
    step = record.get("step", 0)
    return step if isinstance(step, int) else 0


def _ranges(values: list[int]) -> str:
    """'2, 5-7' for a sorted list of integers."""
    parts: list[str] = []
    for value in values:
        if parts and int(parts[-1].split("-")[-1]) == value - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{value}"
        else:
            parts.append(str(value))
    return ", ".join(parts)


def trace_step(path: Path) -> int:
    match = TRACE_PATTERN.match(path.name)
    if not match:
        raise ValueError(f"not a trace file: {path}")
    return int(match.group(1))
