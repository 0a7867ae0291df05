"""Which ids a vector index gained and lost, generation by generation, so that what is derived from every
indexed vector (a probe's scores: storage/probe_cache.py) follows a change at the cost of the change
instead of being recomputed over the whole index. Each VectorIndex object starts its own journal (a new
token); a reader's store that reloads an index saved whole continues the old one with the ids the
reload gained and lost (Store._continue_journal)."""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np

HELD_IDS = 2_000_000  # ids remembered at most; a reader further behind recomputes in full


@dataclass(frozen=True)
class Change:
    ids: np.ndarray  # int64
    added: bool  # False: removed


@dataclass(frozen=True)
class Mark:
    """Where a reader of the journal is: its index (token) and the last generation it applied."""

    token: str
    generation: int


class IdJournal:
    def __init__(self, held_ids: int = HELD_IDS) -> None:
        self.token = uuid.uuid4().hex
        self.generation = 0
        self._changes: deque[tuple[int, Change]] = deque()
        self._held, self._limit, self._floor = 0, held_ids, 0

    def note(self, ids: np.ndarray, added: bool) -> None:
        if not len(ids):
            return
        self.generation += 1
        self._changes.append((self.generation, Change(np.array(ids, dtype=np.int64), added)))
        self._held += len(ids)
        while self._held > self._limit and self._changes:
            generation, dropped = self._changes.popleft()
            self._held -= len(dropped.ids)
            self._floor = generation

    @property
    def mark(self) -> Mark:
        return Mark(self.token, self.generation)

    def since(self, mark: Mark | None) -> list[Change] | None:
        """The changes after `mark`, oldest first; None when they are not all known (another index, or
        older than what the journal holds): the reader starts again from the whole index."""
        if mark is None or mark.token != self.token or mark.generation < self._floor:
            return None
        return [change for generation, change in self._changes if generation > mark.generation]
