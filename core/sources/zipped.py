"""A .zip file as a source: members sorted by path, each read with its declared size and compression
ratio checked before a byte is inflated."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path

from core.errors import ArchiveError
from core.sources.base import (
    MAX_MEMBER_BYTES,
    Entry,
    ReadItem,
    SourceKind,
    SourceOptions,
    fetch_by_path,
    read_each,
    too_large,
)

BOMB_RATIO, BOMB_FLOOR = 200, 64 * 1024**2  # a member inflating 200-fold to more than 64 MiB is refused


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

    def fetch(self, entry: Entry) -> ReadItem:
        return fetch_by_path(self.read, entry)

    random_access = True

    def local_path(self, path: str) -> str | None:
        return None

    def iter_read(self, wanted: Callable[[Entry], bool] | None = None) -> Iterator[ReadItem]:
        return read_each(self.entries(), self.read, wanted)


def _is_zip(location: str) -> bool:
    path = Path(location).expanduser()
    return path.is_file() and zipfile.is_zipfile(path)


def _open(location: str, options: SourceOptions) -> ZipArchive:
    return ZipArchive(Path(location).expanduser().resolve(), options.max_member_bytes)


KIND = SourceKind("zip", _is_zip, _open, priority=60)
