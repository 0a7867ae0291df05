"""Exact scoring of a set of stored vectors read from the database (filtered search over an
approximate index: the allowed vectors are few enough to score them all). Where the index itself holds
the vectors, storage/vectors/filtered.py scores them from it instead."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from storage.sql.repository import Repository

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


def rerank(repository: Repository, dim: int, queries: np.ndarray, candidates: np.ndarray, k: int
           ) -> list[list[tuple[int, float]]]:
    """For each query, its candidates (ids, -1 padded) re-scored by exact cosine against their stored
    vectors, the k best first: a lossy index finds candidates, the full vectors on disk rank them."""
    wanted = np.unique(candidates[candidates >= 0])
    ids, vectors = repository.get_embeddings(wanted.tolist(), dim) if len(wanted) else (wanted, np.empty((0, dim)))
    rows = {int(i): n for n, i in enumerate(ids)}
    result = []
    for query, row in zip(np.asarray(queries, dtype=np.float32), candidates, strict=True):
        present = [rows[int(i)] for i in row if i >= 0 and int(i) in rows]
        scores = vectors[present] @ query if present else np.empty(0, dtype=np.float32)
        order = np.argsort(-scores, kind="stable")[:k]
        result.append([(int(ids[present[i]]), float(scores[i])) for i in order])
    return result
