"""Probes' scores of every indexed image, kept in memory per (probe, index) and brought up to date from
the index's id journal (storage/vectors/id_journal.py): a probe filter costs what changed since the last request
(the added images scored, the removed ones dropped), not a matrix product over every stored vector. The
first request for a probe, or the first after the index was loaded or rebuilt whole, scores every
stored vector once (exact, from the embeddings table: every index kind, compressed ones included).

The scores equal a full rescore of the embeddings table (tests/storage/test_probe_cache.py checks it
after runs and removals), so a probe filter stays exact.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from storage.sql.probes import CHUNK, Probe
from storage.vectors.id_journal import Change, Mark

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Scores:
    mark: Mark | None
    ids: np.ndarray  # ascending
    probabilities: np.ndarray  # (len(ids), labels) float32


class ProbeScores:
    """Build once per store (the API's search service does) and pass it in. Thread-safe."""

    def __init__(self, store: Any, repository: Any, probes: int = 8) -> None:
        self._store, self._repository = store, repository  # storage.store.Store, storage.sql.repository.Repository
        self._entries: OrderedDict[tuple[Any, ...], _Scores] = OrderedDict()
        self._positives: OrderedDict[tuple[Any, ...], tuple[_Scores, np.ndarray, np.ndarray]] = OrderedDict()
        self._probes = probes  # probes kept at most (each: ids + a float per label per image)
        self._lock = threading.Lock()
        self.full_scores = 0  # how many times every stored vector was scored (once per probe and index)

    def scores(self, probe: Probe, label: str, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids ascending, probability of `label`) of every indexed image, or of those of `allowed`
        (ascending ids) that are indexed."""
        j = probe.label_index(label)
        entry = self._current(probe)
        if allowed is None:
            return entry.ids, entry.probabilities[:, j]
        allowed = np.asarray(allowed, dtype=np.int64)
        where = np.minimum(np.searchsorted(entry.ids, allowed), max(len(entry.ids) - 1, 0))
        found = entry.ids[where] == allowed if len(entry.ids) else np.zeros(len(allowed), dtype=bool)
        return allowed[found], entry.probabilities[where[found], j]

    def positives(self, probe: Probe, label: str, min_probability: float) -> tuple[np.ndarray, np.ndarray]:
        """(ids ascending, probability) of the indexed images whose probability of `label` is at least
        `min_probability`: what a probe filter allows, kept per (probe, label, threshold) while the scores
        stay the same, so that a repeated filter does not mask every image's score again (~11 ms at 1M)."""
        entry = self._current(probe)
        key = (probe.name, probe.fingerprint_key, probe.training_fingerprint, probe.created_at, label,
               float(min_probability))
        with self._lock:
            held = self._positives.get(key)
            if held is not None and held[0] is entry:
                self._positives.move_to_end(key)
                return held[1], held[2]
        column = entry.probabilities[:, probe.label_index(label)]
        keep = column >= min_probability
        ids, probabilities = entry.ids[keep], column[keep]
        with self._lock:
            self._positives[key] = (entry, ids, probabilities)
            self._positives.move_to_end(key)
            while len(self._positives) > 2 * self._probes:
                self._positives.popitem(last=False)
        return ids, probabilities

    def _current(self, probe: Probe) -> _Scores:
        key = (probe.name, probe.fingerprint_key, probe.training_fingerprint, probe.created_at)
        with self._lock:
            entry = self._entries.get(key)
            mark, changes = self._store.id_changes(entry.mark if entry is not None else None)
            if entry is None or changes is None:
                entry = self._full(probe, mark)
            elif changes:
                entry = self._apply(probe, entry, changes, mark)
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._probes:
                self._entries.popitem(last=False)
            return entry

    def _full(self, probe: Probe, mark: Mark | None) -> _Scores:
        started = time.perf_counter()
        ids, scores = [], []
        for chunk_ids, vectors in self._repository.iter_embeddings(probe.dim, batch=CHUNK):
            if len(chunk_ids):
                ids.append(chunk_ids)
                scores.append(probe.probabilities(vectors).astype(np.float32))
        self.full_scores += 1
        entry = _Scores(mark, np.concatenate(ids) if ids else np.empty(0, dtype=np.int64),
                        np.concatenate(scores) if scores else np.empty((0, len(probe.labels)), dtype=np.float32))
        logger.info("probe %s scored over %d images in %.1f s", probe.name, len(entry.ids),
                    time.perf_counter() - started)
        return entry

    def _apply(self, probe: Probe, entry: _Scores, changes: list[Change], mark: Mark | None) -> _Scores:
        """Each id's last change decides: added ones (re)scored from their stored vectors, removed ones dropped."""
        touched = np.concatenate([c.ids for c in changes])
        added = np.concatenate([np.full(len(c.ids), c.added) for c in changes])
        last = len(touched) - 1 - np.unique(touched[::-1], return_index=True)[1]  # each id's last change
        touched, added = touched[last], added[last]
        keep = np.ones(len(entry.ids), dtype=bool)
        if len(entry.ids):
            where = np.minimum(np.searchsorted(entry.ids, touched), len(entry.ids) - 1)
            keep[where[entry.ids[where] == touched]] = False
        ids, probabilities = entry.ids[keep], entry.probabilities[keep]
        new_ids, new_scores = [], []
        wanted = touched[added]
        for start in range(0, len(wanted), CHUNK):
            found, vectors = self._repository.get_embeddings(wanted[start:start + CHUNK].tolist(), probe.dim)
            if len(found):
                new_ids.append(found)
                new_scores.append(probe.probabilities(vectors).astype(np.float32))
        if new_ids:
            ids = np.concatenate([ids, *new_ids])
            probabilities = np.concatenate([probabilities, *new_scores])
            if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):  # new ids are usually the largest
                order = np.argsort(ids, kind="stable")
                ids, probabilities = ids[order], probabilities[order]
        return _Scores(mark, ids, probabilities)
