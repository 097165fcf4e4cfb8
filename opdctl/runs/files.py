"""Files that appear whole or not at all, lines appended durably, a full disk told from other errors."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opdctl.errors import ConfigError

WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO, errno.EACCES, errno.EPERM}
UMASK = os.umask(0o022)  # read (the only way) and put back at once
os.umask(UMASK)
PLAIN_MODE = 0o666 & ~UMASK  # what a plain open() gives a new file (0644 under the usual umask)
TEMPORARY = ".opdctl-tmp"  # the suffix of a file being written (renamed into place when whole)
STAGING = ".partial"  # the suffix of a directory being written


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


def output_file(path: Path, option: str) -> Path:
    """``path`` if a file can be written there, else a one-line error naming ``option`` (checked before work)."""
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory: give a file name")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{option} {path}: {parent} is a file, not a directory")
    return path


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    with replaced_atomically(path) as tmp, open(tmp, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A new temporary file beside ``path`` that replaces ``path`` if the block finishes, else is removed.

    It gets the permissions a plain ``open`` would give (0644 under the usual umask), not the owner-only
    0600 of a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY)
    os.fchmod(fd, PLAIN_MODE)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _name_file(exc, path)
        raise


def remove_leftovers(root: Path) -> None:
    """Remove what writes cut short by a kill left under ``root``: temporary files and staging directories (only
    their writer's process, which holds the directory's lock, may call this)."""
    for path in sorted(root.rglob(f".*{TEMPORARY}")):
        path.unlink(missing_ok=True)
    for path in sorted(root.rglob(f".*{STAGING}")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def _name_file(exc: BaseException, path: Path) -> None:
    """Let a failed write's error name the file it was writing (a full disk's ENOSPC does not)."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(path)


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """A staging directory that becomes ``path`` only if the block finishes; its files get the permissions a
    plain ``open`` gives (some writers, e.g. of model.safetensors, leave them owner-only)."""
    staging = path.with_name(f".{path.name}{STAGING}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        for file in staging.rglob("*"):
            if file.is_file():
                file.chmod(PLAIN_MODE)
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
