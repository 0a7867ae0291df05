"""The database folder on disk: index generations, the writer lock, and atomic file writes.

    DIR/medsearch.sqlite, DIR/index.faiss     the first generation (and DIR/access.sqlite: keys, audit)
    DIR/generations/N/...                     later generations (another model), built beside it
    DIR/CURRENT                               which generation the API serves (absent: DIR itself)
    DIR/PENDING                               a generation being built (a killed build resumes it)
    DIR/.writer.lock                          held by the one process that writes

Every file medsearch replaces is written by `write_atomically`: a temp file in the same folder, fsync,
os.replace, fsync of the folder. A reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

from storage.errors import DiskFullError, StorageError, WriterLockedError

CURRENT_NAME = "CURRENT"
PENDING_NAME = "PENDING"
LOCK_NAME = ".writer.lock"
GENERATIONS = "generations"


def write_atomically(path: Path, write: Callable[[BinaryIO], None] | bytes) -> None:
    """Replace `path` with what `write` writes (or the given bytes) in one atomic rename, fsynced.
    A full disk raises DiskFullError and leaves the old file as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(write, bytes | bytearray | memoryview):
                handle.write(write)
            else:
                write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"the disk holding {path.parent} is full (writing {path.name}): free space and run "
                                "the command again") from exc
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(folder: Path, name: str) -> None:
    """Temp files of `write_atomically(folder/name)` left by a crash (only the writer may do this)."""
    for stale in folder.glob(f".{name}.*.tmp"):
        stale.unlink(missing_ok=True)


def current_generation(root: Path) -> Path:
    """The folder of the generation in use: `root` itself unless CURRENT names another."""
    pointer = root / CURRENT_NAME
    if pointer.is_file():
        name = pointer.read_text().strip()
        if name:
            return root / name
    return root


def start_generation(root: Path) -> Path:
    """A folder for a new index generation (resuming one left unfinished by a killed run)."""
    pending = root / PENDING_NAME
    if pending.is_file() and pending.read_text().strip():
        return root / pending.read_text().strip()
    existing = [int(p.name) for p in (root / GENERATIONS).glob("*") if p.name.isdigit()]
    name = f"{GENERATIONS}/{max(existing, default=0) + 1}"
    (root / name).mkdir(parents=True, exist_ok=True)
    write_atomically(pending, name.encode())
    return root / name


def finish_generation(root: Path, folder: Path) -> None:
    """Make `folder` the generation in use, in one atomic rename."""
    write_atomically(root / CURRENT_NAME, folder.relative_to(root).as_posix().encode())
    (root / PENDING_NAME).unlink(missing_ok=True)


def writer_active(folder: Path) -> bool:
    """Whether a process holds the folder's writer lock now (without taking it for long)."""
    try:
        with (folder / LOCK_NAME).open("rb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return False


def take_writer_lock(folder: Path) -> IO[bytes]:
    """The exclusive lock of the one writer; WriterLockedError while another process holds it."""
    try:
        handle = (folder / LOCK_NAME).open("ab")
    except OSError as exc:
        raise StorageError(f"cannot open the lock file in {folder}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise WriterLockedError(f"another medsearch process is writing to {folder} (an indexing run?): wait for "
                                "it to finish; readers such as the API are not affected") from None
    return handle
