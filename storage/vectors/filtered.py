"""Filtered search over an index that holds the vectors as they are (Flat, in-memory IVF-Flat), by the
share of the index the filter allows, instead of FAISS's ID selector, which passes over every stored
vector and is built from the allowed ids on every request:

- a few (at most 1/8 of the index, DIRECT_LIMIT at most): their vectors reconstructed by id and scored,
  so that a selective filter costs what it allows (400 allowed of 200k: 0.6 ms, against 35);
- a large share (at least 1/8): the nearest vectors checked against the allowed ids, in rounds that
  fetch as many more as the share calls for (a probe filter's ~25% positives: 250k ids at 1M).

Each gives what the selector gives over the same vectors: the exact top k among the allowed ones, or
for IVF-Flat at the tuned effort the same inverted lists probed, filtered."""

from __future__ import annotations

import numpy as np

from storage.vectors.effort import QueryKind
from storage.vectors.index import VectorIndex

SHARE = 8  # a filter allowing at most 1/SHARE of the index is scored by id; one allowing more, checked
CHUNK = 20_000  # vectors reconstructed at a time
DIRECT_LIMIT = 200_000  # vectors scored by id at most


def direct_search(index: VectorIndex, queries: np.ndarray, k: int, allowed: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """(scores, ids) as VectorIndex.search gives them (best first, without its -1 padding): the exact top
    k among `allowed`, their vectors reconstructed from the index CHUNK at a time; None where that does
    not apply (a lossy or on-disk index, too many allowed) or an allowed id is not in the index (not yet
    or no longer)."""
    if not _holds_vectors(index) or len(allowed) > min(DIRECT_LIMIT, max(CHUNK, index.ntotal // SHARE)):
        return None
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    wanted = _ascending(allowed)
    k = min(k, len(wanted))
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(wanted), CHUNK):
        ids = wanted[start:start + CHUNK]
        try:
            vectors = index.raw.reconstruct_batch(ids)
        except RuntimeError:  # FAISS: a key that is not in the index
            return None
        scores = np.concatenate([best_scores, queries @ vectors.T], axis=1)
        found = np.concatenate([best_ids, np.broadcast_to(ids, (len(queries), len(ids)))], axis=1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, top, axis=1), np.take_along_axis(found, top, axis=1)
    return best_scores, best_ids


def nearest_allowed(index: VectorIndex, queries: np.ndarray, k: int, allowed: np.ndarray, kind: QueryKind,
                    exact_limit: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scores, ids), (n, k), best first, -1 padded: the k nearest allowed vectors of each query, found
    among the nearest ones, fetched in rounds that double until each query has k allowed or the index
    has no more to give. None where a selector is the way: a lossy, graph or on-disk index, a small
    share, or an IVF-Flat filter small enough (`exact_limit`) to be searched exactly over every list."""
    if not _holds_vectors(index) or index.ntotal == 0:
        return None
    share = len(allowed) / index.ntotal
    if share < 1 / SHARE or (index.kind == "ivf" and len(allowed) <= exact_limit):
        return None
    wanted = _ascending(allowed)
    fetch = int(k / share * 1.5) + 10
    while True:
        scores, ids = index.search(queries, fetch, kind=kind)
        at = np.minimum(np.searchsorted(wanted, ids), len(wanted) - 1)
        keep = (wanted[at] == ids) & (ids >= 0)  # a few fetched ids looked up, not the allowed ones sorted
        enough = keep.sum(axis=1) >= k
        if enough.all() or fetch >= index.ntotal or (ids < 0).any(axis=1)[~enough].all():
            break
        fetch = min(fetch * 2, index.ntotal)
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for row in range(len(queries)):
        found = np.flatnonzero(keep[row])[:k]
        out_scores[row, :len(found)], out_ids[row, :len(found)] = scores[row, found], ids[row, found]
    return out_scores, out_ids


def _holds_vectors(index: VectorIndex) -> bool:
    return index.kind in ("flat", "ivf") and not index.on_disk


def _ascending(allowed: np.ndarray) -> np.ndarray:
    """The allowed ids, distinct and ascending: as filters and probes give them (checked, not sorted again)."""
    ids = np.asarray(allowed, dtype=np.int64)
    return ids if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()) else np.unique(ids)
