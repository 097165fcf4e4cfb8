"""Files that appear whole or not at all, lines appended durably, a full disk told from other errors."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
