"""Exact scoring of a set of stored vectors read from the database (filtered search over an
approximate index: the allowed vectors are few enough to score them all)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from storage.repository import Repository

CHUNK = 20_000


def exact_scores(repository: Repository, dim: int, queries: np.ndarray, allowed: np.ndarray
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, queries x ids cosines) over the stored vectors of `allowed`, CHUNK at a time."""
    for start in range(0, len(allowed), CHUNK):
        ids, vectors = repository.get_embeddings(allowed[start:start + CHUNK].tolist(), dim)
        yield ids, np.asarray(queries, dtype=np.float32) @ vectors.T


def top_k(chunks: Iterable[tuple[np.ndarray, np.ndarray]], rows: int, k: int) -> list[list[tuple[int, float]]]:
    """For each query row, the k best (id, score) pairs over all chunks, best first."""
    best: list[list[tuple[int, float]]] = [[] for _ in range(rows)]
    for ids, scores in chunks:
        for row, row_scores in enumerate(scores):
            top = np.argsort(-row_scores, kind="stable")[:k]
            merged = best[row] + [(int(ids[i]), float(row_scores[i])) for i in top]
            best[row] = sorted(merged, key=lambda pair: -pair[1])[:k]
    return best


def ids_at_least(chunks: Iterable[tuple[np.ndarray, np.ndarray]], min_score: float) -> np.ndarray:
    """The ids whose score (one query row) is at least `min_score`, ascending."""
    found = [ids[scores[0] >= min_score] for ids, scores in chunks]
    return np.sort(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
