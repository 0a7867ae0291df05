"""Build a FAISS index from the stored embeddings (no re-encoding): choose its kind, train it, tune its
search effort against exact search on held-out queries."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from storage.errors import StorageError
from storage.repository import Repository
from storage.vector_index import IVF_KINDS, KINDS, IndexPlan, VectorIndex, bytes_per_vector, plan_index

logger = logging.getLogger(__name__)

RECALL_TARGET = 0.95


@dataclass(frozen=True)
class BuildReport:
    """What `build_index` did and what it measured."""

    kind: str
    why: str
    vectors: int
    seconds: float
    recall_at_10: float  # on held-out queries against exact search (1.0 for an exact index)
    search_effort: int  # nprobe or efSearch chosen
    bytes_per_vector: float
    recall_95ci: tuple[float, float] = (1.0, 1.0)  # bootstrap over the held-out queries


@dataclass(frozen=True)
class Tuning:
    """The search effort chosen and the evidence: the tuning queries chose it, the held-out ones score it."""

    effort: int
    recall: float  # held-out mean recall@10
    interval: tuple[float, float]  # its 95% bootstrap interval over the held-out queries
    tried: tuple[tuple[int, float], ...]  # (effort, tuning recall) in the order tried


def efforts_up_to(limit: int) -> list[int]:
    """Candidate nprobe / efSearch values, ascending, about 1.4x apart: 1, 2, 3, 4, 6, 8, 11, 16, ..."""
    values: list[int] = []
    value = 1.0
    while int(value) < limit:
        if not values or int(value) != values[-1]:
            values.append(int(value))
        value *= 1.41421356
    return [*values, limit]


def recall_per_query(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per query, the share of its exact top k (`truth`, -1 padded) that `found` holds."""
    return np.asarray([len(set(t[t >= 0].tolist()) & set(f[f >= 0].tolist())) / max(1, int((t >= 0).sum()))
                       for t, f in zip(truth, found, strict=True)])


def bootstrap_interval(values: np.ndarray, rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    if not len(values):
        return (1.0, 1.0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (rounds, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def tune(index: VectorIndex, tuning: tuple[np.ndarray, np.ndarray], held_out: tuple[np.ndarray, np.ndarray],
         limit: int, target: float = RECALL_TARGET, k: int = 10) -> Tuning:
    """The smallest nprobe / efSearch (of `efforts_up_to(limit)`) whose mean recall@k on the tuning
    queries reaches `target` (else `limit`), then its recall on the held-out queries with a 95% interval.
    Each pair is (queries, their exact top-k ids). A lossy index is measured as it is searched: its
    candidates re-ranked exactly, so an exact top-k id is found when it is among the candidates."""
    tried = []
    chosen = limit
    fetch = index.candidates(k)
    for effort in efforts_up_to(max(1, limit)):
        index.set_search_effort(effort)
        reached = float(recall_per_query(index.search(tuning[0], fetch)[1], tuning[1]).mean())
        tried.append((effort, reached))
        if reached >= target:
            chosen = effort
            break
    index.set_search_effort(chosen)
    held = recall_per_query(index.search(held_out[0], fetch)[1], held_out[1])
    return Tuning(chosen, float(held.mean()), bootstrap_interval(held), tuple(tried))


def held_out_queries(sample: np.ndarray, rng: np.random.Generator, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint query sets (tuning, held-out) of stored vectors with a little noise: what a query
    near the data looks like without knowing the data's distribution."""
    picked = sample[rng.choice(len(sample), size=min(n, len(sample)), replace=False)]
    queries = picked + rng.normal(scale=0.05, size=picked.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    half = max(1, len(queries) // 2)
    return queries[:half], queries[half:] if len(queries) > 1 else queries


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
        scores = queries @ vectors.T
        pool = np.broadcast_to(ids, scores.shape)
        if scores.shape[1] > k:  # the chunk's own k best first: sorting the whole chunk is the slow part
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores, pool = np.take_along_axis(scores, part, 1), np.take_along_axis(pool, part, 1)
        scores, pool = np.hstack([best_scores, scores]), np.hstack([best_ids, pool])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, order, 1), np.take_along_axis(pool, order, 1)
    return best_ids


def tune_against_exact(index: VectorIndex, repository: Repository, dim: int, seed: int = 0,
                       limit: int = 1024) -> Tuning:
    """`tune` with queries from the stored vectors and the truth from an exact scan of the database."""
    rng = np.random.default_rng(seed + 1)
    tuning, held = held_out_queries(sample_embeddings(repository, dim, 400, rng), rng)
    if not len(tuning):
        return Tuning(index.search_effort(), 1.0, (1.0, 1.0), ())
    return tune(index, (tuning, exact_top_k(repository, dim, tuning, 10)),
                (held, exact_top_k(repository, dim, held, 10)), limit)


def build_index(repository: Repository, dim: int, kind: str = "auto", memory_budget: int = 8 * 1024**3,
                seed: int = 0) -> tuple[VectorIndex, BuildReport]:
    """A new index of `kind` (auto or one of KINDS) holding every stored embedding: trained when
    it needs training, its nprobe/efSearch the smallest whose recall@10 against exact search reaches
    RECALL_TARGET on tuning queries, and its recall reported on other, held-out queries (`tune`). The
    exact answers come from a chunked scan of the stored embeddings, so the build holds the index, a
    training sample of at most 100,000 vectors and one chunk, never a second copy of the index."""
    if kind != "auto" and kind not in KINDS:
        raise StorageError(f"index kind {kind!r}: expected auto, {', '.join(KINDS)}")
    started = time.perf_counter()
    n = len(repository.embedding_ids())
    plan: IndexPlan = plan_index(n, dim, kind, memory_budget)
    rng = np.random.default_rng(seed)
    train = sample_embeddings(repository, dim, min(n, 100_000), rng)
    fresh = VectorIndex.build(plan, dim, train if len(train) else np.zeros((1, dim)))
    for ids, vectors in repository.iter_embeddings(dim):
        fresh.add(ids, vectors)
    tuning = Tuning(fresh.search_effort(), 1.0, (1.0, 1.0), ())
    if plan.kind != "flat" and n:
        tune_queries, held = held_out_queries(train, rng)
        del train  # the build's peak: the index, one chunk of the scan below, and the queries
        # the exact truth streamed from the database (no exact copy of the index held beside it)
        truth = exact_top_k(repository, dim, np.vstack([tune_queries, held]), 10)
        limit = plan.nlist if plan.kind in IVF_KINDS else 1024
        tuning = tune(fresh, (tune_queries, truth[:len(tune_queries)]), (held, truth[len(tune_queries):]), limit)
    report = BuildReport(plan.kind, plan.why, n, time.perf_counter() - started, tuning.recall, fresh.search_effort(),
                         bytes_per_vector(plan.kind, dim, plan.pq_m), tuning.interval)
    logger.info("built %s index of %d vectors in %.1f s, held-out recall@10 %.3f (95%% CI %.3f-%.3f), effort %d",
                plan.kind, n, report.seconds, tuning.recall, *tuning.interval, tuning.effort)
    return fresh, report
