"""What every source of images is: entries listed in a stable order, each read as bytes (or from a local
path), and the options a source is opened with."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

MAX_MEMBER_BYTES = 1024**3  # MEDSEARCH_MAX_FILE_BYTES


@dataclass(frozen=True)
class Entry:
    """One file of a source: its posix path inside the source, size and modification time (for a PACS
    instance: 0.0 once fetched for good, None when it must be fetched again)."""

    path: str
    size: int
    mtime: float | None


ReadItem = tuple[Entry, "bytes | OSError | None"]  # an entry with its bytes, its read error, or None: not read


@dataclass(frozen=True)
class SourceOptions:
    """How to open a source: the member size limit, and for a PACS its connection and study query
    (core.sources.dicomweb_locations.DicomWebConfig and StudyQuery; typed loosely so that this module needs none)."""

    max_member_bytes: int = MAX_MEMBER_BYTES
    dicomweb: Any = None
    query: Any = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class Source(Protocol):
    key: str  # the source's identity in the database (a resolved path, or a dicomweb+ location)
    # any process that opens the source by its key can read any entry, in any order, at little cost (a
    # zip file): decoding workers read their entries themselves instead of being sent the bytes
    random_access: bool

    def entries(self, known: Mapping[str, Entry] | None = None) -> list[Entry]:
        """Every file, in a stable order. `known`: what the database recorded of each path, which a
        remote source uses to skip listing what cannot have changed (local ones ignore it)."""
        ...

    def iter_read(self, wanted: Callable[[Entry], bool] | None = None) -> Iterator[ReadItem]:
        """Every entry with its bytes, or the OSError met reading it; None for entries not `wanted`
        (which are not read at all)."""
        ...

    def read(self, path: str) -> bytes:
        """One entry's bytes; OSError (with the reason) when it cannot be had."""
        ...

    def fetch(self, entry: Entry) -> ReadItem:
        """One entry read on its own (a distributed task): the entry as it is to be recorded after
        reading (a PACS instance becomes settled) with its bytes, or the OSError met."""
        ...

    def local_path(self, path: str) -> str | None:
        """A path on disk a worker process can read the entry from, when there is one."""
        ...


@dataclass(frozen=True)
class SourceKind:
    """One kind of source, registered by its module (core.sources finds every module's KIND)."""

    name: str
    matches: Callable[[str], bool]  # whether a location (as given) is of this kind
    open: Callable[[str, SourceOptions], Source]
    priority: int = 50  # lower is asked first (a URL scheme before a file's content)


def too_large(size: int, limit: int) -> OSError:
    return OSError(f"{size} bytes exceed the limit of {limit} (setting MEDSEARCH_MAX_FILE_BYTES): not read")


def fetch_by_path(read: Callable[[str], bytes], entry: Entry) -> ReadItem:
    """`fetch` of a source whose entries do not change by being read."""
    try:
        return entry, read(entry.path)
    except OSError as exc:
        return entry, exc


def read_each(entries: list[Entry], read: Callable[[str], bytes],
              wanted: Callable[[Entry], bool] | None) -> Iterator[ReadItem]:
    """Random-access sources: each wanted entry with its bytes or its read error, others with None."""
    for entry in entries:
        if wanted is not None and not wanted(entry):
            yield entry, None
            continue
        try:
            yield entry, read(entry.path)
        except OSError as exc:
            yield entry, exc
