"""A folder on disk as a source. Entries come sorted by path; directory symlinks are not followed (no
loops), file symlinks are read through, and a dangling one is reported as unreadable."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from core.errors import ArchiveError
from core.sources.base import Entry, ReadItem, SourceKind, SourceOptions, fetch_by_path, read_each


class FolderArchive:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = str(root)

    def entries(self, known: Mapping[str, Entry] | None = None) -> list[Entry]:
        """Depth first as os.walk goes (a folder's files by name, then its subfolders by name), with one
        scandir and one stat per file: an unchanged archive of a million files lists in seconds."""
        found: list[Entry] = []
        pending: list[tuple[str, str]] = [(str(self.root), "")]
        while pending:
            folder, prefix = pending.pop()
            try:
                with os.scandir(folder) as listing:
                    items = list(listing)
            except OSError:  # unreadable subfolder: skipped, as os.walk does
                continue
            files: list[os.DirEntry[str]] = []
            folders: list[os.DirEntry[str]] = []
            for item in items:
                try:
                    inside = item.is_dir(follow_symlinks=False)  # a folder symlink is never followed
                except OSError:
                    inside = False
                (folders if inside else files).append(item)
            for item in sorted(files, key=_name):
                rel = prefix + item.name
                try:
                    info = item.stat()  # file symlinks are read through
                except OSError:  # dangling symlink: listed, fails on read with a clear reason
                    found.append(Entry(rel, 0, None))
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append(Entry(rel, info.st_size, info.st_mtime))
            pending.extend((item.path, f"{prefix}{item.name}/") for item in sorted(folders, key=_name, reverse=True))
        return found

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def fetch(self, entry: Entry) -> ReadItem:
        return fetch_by_path(self.read, entry)

    random_access = True

    def local_path(self, path: str) -> str | None:
        return str(self.root / path)

    def iter_read(self, wanted: Callable[[Entry], bool] | None = None) -> Iterator[ReadItem]:
        return read_each(self.entries(), self.read, wanted)


def _name(item: os.DirEntry[str]) -> str:
    return item.name


def _is_folder(location: str) -> bool:
    return Path(location).expanduser().is_dir()


def _open(location: str, options: SourceOptions) -> FolderArchive:
    resolved = Path(location).expanduser().resolve()
    if not os.access(resolved, os.R_OK | os.X_OK):
        raise ArchiveError(f"{location}: folder is not readable")
    return FolderArchive(resolved)


KIND = SourceKind("folder", _is_folder, _open, priority=90)
