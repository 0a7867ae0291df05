"""Stage 4: write encoded images to the store: rows and vectors durably, FAISS checkpointed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from indexer.load import Prepared
from storage.repository import ImageRecord
from storage.store import Store


def to_record(archive: str, item: Prepared) -> ImageRecord:
    meta = asdict(item.image.metadata)
    return ImageRecord(archive=archive, path=item.entry.path, sha256=item.sha256, kind=item.image.kind,
                       size=item.entry.size, mtime=item.entry.mtime, **meta)


class Writer:
    """Adds batches to the store and saves the FAISS index every `checkpoint_seconds` and at the end."""

    def __init__(self, store: Store, archive: str, run_id: int, checkpoint_seconds: float = 30.0) -> None:
        self._store = store
        self._archive = archive
        self._run_id = run_id
        self._checkpoint_seconds = checkpoint_seconds
        self._last_checkpoint = time.monotonic()

    def write(self, batch: Sequence[Prepared], vectors: np.ndarray, replace_ids: Sequence[int] = ()) -> list[int]:
        records = [to_record(self._archive, item) for item in batch]
        ids = self._store.add(records, vectors, run_id=self._run_id, replace_ids=replace_ids)
        if time.monotonic() - self._last_checkpoint >= self._checkpoint_seconds:
            self.flush()
        return ids

    def flush(self) -> None:
        self._store.checkpoint()
        self._last_checkpoint = time.monotonic()
