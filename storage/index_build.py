"""Build a FAISS index from the stored embeddings (no re-encoding): choose its kind, train it, tune its
search effort against exact search on held-out queries."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from storage.errors import StorageError
from storage.repository import Repository
from storage.vector_index import KINDS, IndexPlan, VectorIndex, bytes_per_vector, plan_index, recall_at_k

logger = logging.getLogger(__name__)

RECALL_TARGET = 0.95


@dataclass(frozen=True)
class BuildReport:
    """What `build_index` did and what it measured."""

    kind: str
    why: str
    vectors: int
    seconds: float
    recall_at_10: float  # against exact search on held-out queries (1.0 for an exact index)
    search_effort: int  # nprobe or efSearch chosen
    bytes_per_vector: float


def sample_embeddings(repository: Repository, dim: int, size: int, rng: np.random.Generator) -> np.ndarray:
    ids = repository.embedding_ids()
    if len(ids) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    chosen = np.sort(rng.choice(ids, size=min(size, len(ids)), replace=False))
    chunks = [repository.get_embeddings(chosen[i:i + 10_000].tolist(), dim)[1] for i in range(0, len(chosen), 10_000)]
    return np.vstack(chunks)


def exact_top_k(repository: Repository, dim: int, queries: np.ndarray, k: int) -> np.ndarray:
    """The ids of the exact top k for each query, scanning the stored embeddings in chunks (memory stays
    at one chunk whatever the index's size)."""
    best_ids = np.full((len(queries), 0), -1, dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    for ids, vectors in repository.iter_embeddings(dim, batch=50_000):
        scores = np.hstack([best_scores, queries @ vectors.T])
        pool = np.hstack([best_ids, np.broadcast_to(ids, (len(queries), len(ids)))])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, order, 1), np.take_along_axis(pool, order, 1)
    return best_ids


def tune_against_exact(index: VectorIndex, repository: Repository, dim: int, seed: int = 0,
                       limit: int = 1024) -> float:
    """Raise the index's nprobe/efSearch until recall@10 on held-out queries (perturbed stored vectors)
    against an exact scan reaches RECALL_TARGET or `limit`. Returns the recall reached."""
    rng = np.random.default_rng(seed + 1)
    queries = sample_embeddings(repository, dim, 200, rng)
    if not len(queries):
        return 1.0
    queries = queries + rng.normal(scale=0.05, size=queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = exact_top_k(repository, dim, queries, 10)

    def recall() -> float:
        _, found = index.search(queries, 10)
        return float(np.mean([len(set(t) & set(f[f >= 0])) / max(1, len(t)) for t, f in zip(truth, found,
                                                                                           strict=True)]))

    reached = recall()
    while reached < RECALL_TARGET and index.search_effort() < limit:
        index.set_search_effort(min(limit, index.search_effort() * 2))
        reached = recall()
    return reached


def build_index(repository: Repository, dim: int, kind: str = "auto", memory_budget: int = 8 * 1024**3,
                seed: int = 0) -> tuple[VectorIndex, BuildReport]:
    """A new index of `kind` (auto, flat, ivf, ivfpq, hnsw) holding every stored embedding: trained when
    it needs training, its nprobe/efSearch raised until recall@10 against exact search on held-out
    queries reaches RECALL_TARGET (or the effort is exhausted)."""
    if kind != "auto" and kind not in KINDS:
        raise StorageError(f"index kind {kind!r}: expected auto, {', '.join(KINDS)}")
    started = time.perf_counter()
    n = len(repository.embedding_ids())
    plan: IndexPlan = plan_index(n, dim, kind, memory_budget)
    rng = np.random.default_rng(seed)
    train = sample_embeddings(repository, dim, min(n, 100_000), rng)
    fresh = VectorIndex.build(plan, dim, train if len(train) else np.zeros((1, dim)))
    exact = VectorIndex.create(dim) if plan.kind != "flat" else None
    for ids, vectors in repository.iter_embeddings(dim):
        fresh.add(ids, vectors)
        if exact is not None:
            exact.add(ids, vectors)
    recall = 1.0
    if exact is not None and n:
        queries = train[rng.choice(len(train), size=min(200, len(train)), replace=False)]
        queries = queries + rng.normal(scale=0.05, size=queries.shape).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        recall = recall_at_k(fresh, exact, queries, 10)
        limit = plan.nlist if plan.kind in ("ivf", "ivfpq") else 1024
        while recall < RECALL_TARGET and fresh.search_effort() < limit:
            fresh.set_search_effort(min(limit, fresh.search_effort() * 2))
            recall = recall_at_k(fresh, exact, queries, 10)
    report = BuildReport(plan.kind, plan.why, n, time.perf_counter() - started, recall, fresh.search_effort(),
                         bytes_per_vector(plan.kind, dim, plan.pq_m))
    logger.info("built %s index of %d vectors in %.1f s, recall@10 %.3f", plan.kind, n, report.seconds, recall)
    return fresh, report
