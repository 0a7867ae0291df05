"""Archives: list and read the files of a folder, a .zip, or a .tar / .tar.gz / .tgz.

The indexer scans them; the API reads back the one file recorded for an image (previews).

Entries come in a stable order (sorted paths for folders and zips, stream order for tars, which are
read in one sequential pass). Directory symlinks are not followed, so symlink loops cannot trap a
run; file symlinks are read through, and a dangling one is reported as unreadable.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

from core.errors import ArchiveError

if TYPE_CHECKING:
    from core.dicomweb import DicomWebConfig

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
MAX_MEMBER_BYTES = 1024**3  # MEDSEARCH_MAX_FILE_BYTES
BOMB_RATIO, BOMB_FLOOR = 200, 64 * 1024**2  # a member inflating 200-fold to more than 64 MiB is refused


def too_large(size: int, limit: int) -> OSError:
    return OSError(f"{size} bytes exceed the limit of {limit} (setting MEDSEARCH_MAX_FILE_BYTES): not read")


ReadItem = tuple["Entry", bytes | OSError | None]  # an entry with its bytes, its read error, or None: not read


@dataclass(frozen=True)
class Entry:
    """One file of an archive: its posix path inside the archive, size and modification time."""

    path: str
    size: int
    mtime: float | None


class Archive(Protocol):
    key: str  # the archive's identity in the database: its resolved absolute path

    def entries(self, known: Mapping[str, Entry] | None = None) -> list[Entry]:
        """Every file, in a stable order. `known`: what the database recorded of each path, which a
        remote archive uses to skip listing what cannot have changed (local archives ignore it)."""
        ...

    def iter_read(self, wanted: Callable[[Entry], bool] | None = None) -> Iterator[ReadItem]:
        """Every entry with its bytes, or the OSError met reading it; None for entries not `wanted`
        (which are not read at all)."""
        ...

    def read(self, path: str) -> bytes: ...

    def local_path(self, path: str) -> str | None:
        """A path on disk a worker process can read the entry from, when there is one."""
        ...


class FolderArchive:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = str(root)

    def entries(self, known: Mapping[str, Entry] | None = None) -> list[Entry]:
        found: list[Entry] = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False, onerror=None):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                rel = full.relative_to(self.root).as_posix()
                try:
                    info = full.stat()
                except OSError:  # dangling symlink: listed, fails on read with a clear reason
                    found.append(Entry(rel, 0, None))
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append(Entry(rel, info.st_size, info.st_mtime))
        return found

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def local_path(self, path: str) -> str | None:
        return str(self.root / path)

    def iter_read(self, wanted: Callable[[Entry], bool] | None = None) -> Iterator[ReadItem]:
        return _read_each(self.entries(), self.read, wanted)


class ZipArchive:
    def __init__(self, path: Path, max_member_bytes: int = MAX_MEMBER_BYTES) -> None:
        self.path = path
        self.key = str(path)
        self.max_member_bytes = max_member_bytes
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ArchiveError(f"{path}: not a readable zip file ({exc})") from exc

    def entries(self, known: Mapping[str, Entry] | None = None) -> list[Entry]:
        return sorted(
            (Entry(info.filename, info.file_size, datetime(*info.date_time).timestamp())
             for info in self._zip.infolist() if not info.is_dir()),
            key=lambda e: e.path,
        )

    def read(self, path: str) -> bytes:
        """The member's bytes; its declared size and compression ratio are checked before a byte is
        inflated, and reading stops at the limit whatever the header declared."""
        try:
            info = self._zip.getinfo(path)
            limit = self.max_member_bytes
            if info.file_size > limit:
                raise too_large(info.file_size, limit)
            if info.file_size > BOMB_FLOOR and info.file_size > BOMB_RATIO * max(1, info.compress_size):
                raise OSError(f"inflates {info.file_size // max(1, info.compress_size)}-fold to {info.file_size} "
                              "bytes: a decompression bomb, not read")
            with self._zip.open(info) as member:
                data = member.read(limit + 1)
            if len(data) > limit:
                raise too_large(len(data), limit)
            return data
        except KeyError as exc:
            raise OSError(f"{path} not found in {self.path}") from exc
        except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, ValueError, EOFError) as exc:
            raise OSError(f"corrupt zip member: {exc}") from exc

    def local_path(self, path: str) -> str | None:
        return None

    def iter_read(self, wanted: Callable[[Entry], bool] | None = None) -> Iterator[ReadItem]:
        return _read_each(self.entries(), self.read, wanted)


class TarArchive:
    def __init__(self, path: Path, max_member_bytes: int = MAX_MEMBER_BYTES) -> None:
        self.path = path
        self.key = str(path)
        self.max_member_bytes = max_member_bytes
        try:
            with tarfile.open(path, "r:*") as tar:
                self._members = [m for m in tar.getmembers() if m.isfile()]
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ArchiveError(f"{path}: not a readable tar file ({exc})") from exc

    def entries(self, known: Mapping[str, Entry] | None = None) -> list[Entry]:
        return [Entry(_clean(m.name), m.size, float(m.mtime)) for m in self._members]

    def read(self, path: str) -> bytes:
        with tarfile.open(self.path, "r:*") as tar:
            for member in tar:
                if member.isfile() and _clean(member.name) == path:
                    if member.size > self.max_member_bytes:
                        raise too_large(member.size, self.max_member_bytes)
                    handle = tar.extractfile(member)
                    if handle is not None:
                        return handle.read()
        raise OSError(f"{path} not found in {self.path}")

    def local_path(self, path: str) -> str | None:
        return None

    def iter_read(self, wanted: Callable[[Entry], bool] | None = None) -> Iterator[ReadItem]:
        """One sequential pass: compressed tars are never re-read per member."""
        with tarfile.open(self.path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                entry = Entry(_clean(member.name), member.size, float(member.mtime))
                if wanted is not None and not wanted(entry):
                    yield entry, None
                    continue
                if member.size > self.max_member_bytes:
                    yield entry, too_large(member.size, self.max_member_bytes)
                    continue
                try:
                    handle = tar.extractfile(member)
                    yield entry, handle.read() if handle is not None else OSError("unreadable member")
                except (tarfile.TarError, OSError, EOFError) as exc:
                    yield entry, OSError(f"corrupt tar member: {exc}")
                    return


def _read_each(entries: list[Entry], read: Callable[[str], bytes],
               wanted: Callable[[Entry], bool] | None) -> Iterator[ReadItem]:
    """Random-access archives: each wanted entry with its bytes or its read error, others with None."""
    for entry in entries:
        if wanted is not None and not wanted(entry):
            yield entry, None
            continue
        try:
            yield entry, read(entry.path)
        except OSError as exc:
            yield entry, exc


def _clean(name: str) -> str:
    return str(PurePosixPath(name.lstrip("/"))).removeprefix("./")


def open_archive(path: str | Path, dicomweb: DicomWebConfig | None = None,
                 max_member_bytes: int = MAX_MEMBER_BYTES) -> Archive:
    """A folder, zip or tar archive at `path`, or a PACS at a dicomweb+http(s):// location (reached
    with `dicomweb`). Members larger than `max_member_bytes` are refused unread. Raises ArchiveError
    naming the path."""
    if str(path).lower().startswith("dicomweb+"):
        from core.dicomweb import DicomWebArchive

        return DicomWebArchive(str(path), dicomweb)
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise ArchiveError(f"{path}: no such file or folder")
    if resolved.is_dir():
        if not os.access(resolved, os.R_OK | os.X_OK):
            raise ArchiveError(f"{path}: folder is not readable")
        return FolderArchive(resolved)
    if zipfile.is_zipfile(resolved):
        return ZipArchive(resolved, max_member_bytes)
    if resolved.name.lower().endswith(TAR_SUFFIXES) or tarfile.is_tarfile(resolved):
        return TarArchive(resolved, max_member_bytes)
    raise ArchiveError(f"{path}: not a folder, .zip or .tar(.gz) archive")
