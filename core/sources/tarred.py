"""A .tar / .tar.gz / .tgz / .tar.bz2 / .tar.xz file as a source: entries in stream order, read in one
sequential pass (a compressed tar is never re-read per member); a member larger than the limit is
refused from its header, unread."""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath

from core.errors import ArchiveError
from core.sources.base import MAX_MEMBER_BYTES, Entry, ReadItem, SourceKind, SourceOptions, fetch_by_path, too_large

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


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

    def fetch(self, entry: Entry) -> ReadItem:
        return fetch_by_path(self.read, entry)

    random_access = False

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


def _clean(name: str) -> str:
    return str(PurePosixPath(name.lstrip("/"))).removeprefix("./")


def _is_tar(location: str) -> bool:
    path = Path(location).expanduser()
    return path.is_file() and (path.name.lower().endswith(TAR_SUFFIXES) or tarfile.is_tarfile(path))


def _open(location: str, options: SourceOptions) -> TarArchive:
    return TarArchive(Path(location).expanduser().resolve(), options.max_member_bytes)


KIND = SourceKind("tar", _is_tar, _open, priority=70)
