"""Stage 1: list a source and compare it with what the database holds, before anything is read or any
model loaded: what is new or changed needs reading, what is unchanged (path, size and time) does not."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from core.sources import Entry, Source
from indexer.pipeline.manifest import MANIFEST_NAME
from storage.records import FileState
from storage.sql.repository import Repository


def unchanged(state: FileState | None, entry: Entry) -> bool:
    return state is not None and state.size == entry.size and state.mtime == entry.mtime and (
        entry.mtime is not None)


@dataclass
class Listing:
    """A source's entries and what the database knew of each path when they were listed."""

    entries: list[Entry]
    known: dict[str, FileState]

    @property
    def pending(self) -> int:
        """Entries that need reading: new, changed, or failed for a passing reason (the manifest is read
        with them, not on its own)."""
        return sum(1 for entry in self.entries
                   if entry.path != MANIFEST_NAME and not unchanged(self.known.get(entry.path), entry))


def list_source(source: Source, repository: Repository) -> Listing:
    """List `source` against what the database knows, so that a run sees whether anything is new before
    it loads a model, and engines read only what is pending."""
    known = repository.archive_state(source.key)
    return Listing(source.entries(_KnownEntries(known)), known)


class _KnownEntries(Mapping[str, Entry]):
    """What the database knows of each path, as entries (made on access: no copy of a huge state)."""

    def __init__(self, known: dict[str, FileState]) -> None:
        self._known = known

    def __getitem__(self, path: str) -> Entry:
        state = self._known[path]
        return Entry(path, state.size or 0, state.mtime)

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)


