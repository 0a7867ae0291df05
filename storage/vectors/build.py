"""Build a FAISS index from the stored embeddings (no re-encoding): choose its kind, train it, tune its
search effort against exact search on held-out queries."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from storage.errors import StorageError
from storage.sql.repository import Repository
from storage.vectors.effort import Effort, Efforts
from storage.vectors.index import VectorIndex, faiss
from storage.vectors.plan import IVF_KINDS, KINDS, RERANK_OPTIONS, IndexPlan, bytes_per_vector, plan_index

logger = logging.getLogger(__name__)

RECALL_TARGET = 0.95


@dataclass(frozen=True)
class BuildReport:
    """What `build_index` did and what it measured: per query kind, the recall@10 on held-out queries
    against exact search (1.0 for an exact index) at the effort tuned on other queries of that kind."""

    kind: str
    why: str
    vectors: int
    seconds: float
    recall_at_10: float  # image queries
    search_effort: int  # nprobe or efSearch chosen for image queries
    bytes_per_vector: float
    recall_95ci: tuple[float, float] = (1.0, 1.0)  # bootstrap over the held-out queries
    text_recall_at_10: float | None = None  # None: no text queries were given (text uses the image effort)
    text_recall_95ci: tuple[float, float] = (1.0, 1.0)
    text_search_effort: int | None = None
    rerank: int = 0  # candidates re-ranked exactly (compressed kinds), image queries
    text_rerank: int = 0


@dataclass(frozen=True)
class Tuning:
    """The search effort chosen and the evidence: the tuning queries chose it, the held-out ones score it."""

    effort: Effort
    recall: float  # held-out mean recall@10
    interval: tuple[float, float]  # its 95% bootstrap interval over the held-out queries
    tried: tuple[tuple[int, int, float], ...]  # (probes, rerank, tuning recall vouched for) in the order tried


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


def vouched_recall(per_query: np.ndarray) -> float:
    """The recall that a set of tuning queries vouches for: the lower end of its mean's 95% bootstrap
    interval. Choosing the first effort whose tuning mean reaches the target picks one whose mean is
    high by chance on those queries (held-out queries then scored 0.941-0.942 where the tuning ones
    scored 0.95 at 1M, docs/performance.md); asking the interval's lower end to reach it leaves room
    for that noise. With the same resamples for every effort it rises with recall, as the mean does."""
    return bootstrap_interval(per_query)[0]


def tune(index: VectorIndex, tuning: tuple[np.ndarray, np.ndarray], held_out: tuple[np.ndarray, np.ndarray],
         limit: int, target: float = RECALL_TARGET, k: int = 10, rerank_cost: float = 0.0) -> Tuning:
    """The cheapest effort whose recall@k on the tuning queries reaches `target` with confidence (the
    lower end of its 95% interval: `vouched_recall`), then its recall on the held-out queries with a 95%
    interval. Each pair is (queries, their exact top-k ids). The probes (nprobe / efSearch): up
    `efforts_up_to(limit)` to the first that reaches the target (else `limit`), then halving the gap
    below it to one probe (recall rises with probes). For a compressed index, so for each re-rank depth
    of its kind's RERANK_OPTIONS, and of those the one whose measured search time plus `rerank_cost` (seconds per
    candidate re-ranked from the stored vectors) is least. A compressed index is measured as it is
    searched: an exact top-k id counts as found when it is among the candidates that are re-ranked."""
    tried: list[tuple[int, int, float]] = []
    reached: list[tuple[float, Effort]] = []  # (cost per query, effort)

    def measure(effort: Effort) -> tuple[float, float]:
        """(tuning recall, seconds per query)"""
        started = time.perf_counter()
        found = index.search(tuning[0], max(effort.rerank, 4 * k) if index.lossy else k, effort=effort)[1]
        seconds = (time.perf_counter() - started) / max(1, len(tuning[0]))
        recall = vouched_recall(recall_per_query(found, tuning[1]))
        tried.append((effort.probes, effort.rerank, recall))
        return recall, seconds

    ceiling = max(1, limit)
    options = RERANK_OPTIONS.get(index.kind, (0,))  # (0,): an index of full vectors re-ranks nothing
    for rerank in options:
        below, high, seconds = 0, 0, 0.0
        for probes in efforts_up_to(ceiling):
            recall, seconds = measure(Effort(probes, rerank))
            if recall >= target:
                high = probes
                break
            below = probes
        if not high:
            continue
        while high - below > 1:  # the smallest that reaches it, to one probe
            middle = (below + high) // 2
            recall, spent = measure(Effort(middle, rerank))
            if recall >= target:
                high, seconds = middle, spent
            else:
                below = middle
        fetch = max(rerank, 4 * k) if index.lossy else k
        reached.append((seconds + rerank_cost * fetch, Effort(high, rerank)))
        ceiling = high  # a deeper re-rank needs no more probes than this
    chosen = min(reached, key=lambda pair: pair[0])[1] if reached else Effort(max(1, limit), options[-1])
    fetch = max(chosen.rerank, 4 * k) if index.lossy else k
    held = recall_per_query(index.search(held_out[0], fetch, effort=chosen)[1], held_out[1])
    return Tuning(chosen, float(held.mean()), bootstrap_interval(held), tuple(tried))


def held_out_queries(sample: np.ndarray, rng: np.random.Generator, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint query sets (tuning, held-out) of stored vectors with a little noise: what a query
    near the data looks like without knowing the data's distribution."""
    picked = sample[rng.choice(len(sample), size=min(n, len(sample)), replace=False)]
    queries = picked + rng.normal(scale=0.05, size=picked.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return halves(queries)


def halves(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tuning, held-out): the first half and the rest (one query: itself twice)."""
    half = max(1, len(queries) // 2)
    return queries[:half], queries[half:] if len(queries) > 1 else queries


def sample_embeddings(repository: Repository, dim: int, size: int, rng: np.random.Generator,
                      queries: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`size` stored vectors (a training sample) and `queries` others, distinct from them where the index
    holds enough (an image query is a stored vector the index was not trained on)."""
    ids = repository.embedding_ids()
    if len(ids) == 0:
        return np.zeros((0, dim), dtype=np.float32), np.zeros((0, dim), dtype=np.float32)
    order = rng.permutation(ids)
    train = np.sort(order[:min(size, len(ids))])
    rest = order[len(train):len(train) + queries]
    held = np.sort(rest if len(rest) >= min(queries, 2) else order[:queries])
    return _vectors(repository, dim, train), _vectors(repository, dim, held)


def _vectors(repository: Repository, dim: int, ids: np.ndarray) -> np.ndarray:
    chunks = [repository.get_embeddings(ids[i:i + 10_000].tolist(), dim)[1] for i in range(0, len(ids), 10_000)]
    return np.vstack(chunks) if chunks else np.zeros((0, dim), dtype=np.float32)


def rerank_cost(repository: Repository, dim: int, n: int = 2000) -> float:
    """Seconds per candidate to read its stored vector and score it, as a compressed index's search does."""
    ids = repository.embedding_ids()[:n].tolist()
    started = time.perf_counter()
    repository.get_embeddings(ids, dim)
    return (time.perf_counter() - started) / max(1, len(ids))


def exact_top_k(repository: Repository, dim: int, queries: np.ndarray, k: int, block: int = 128) -> np.ndarray:
    """The ids of the exact top k for each query, scanning the stored embeddings in chunks, `block`
    queries at a time (memory stays at one chunk and one block's scores whatever the index's size)."""
    best_ids = np.full((len(queries), 0), -1, dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    for ids, vectors in repository.iter_embeddings(dim, batch=20_000):
        found_ids, found_scores = [], []
        for start in range(0, len(queries), block):
            scores = queries[start:start + block] @ vectors.T
            if scores.shape[1] > k:  # the chunk's own k best first: sorting the whole chunk is the slow part
                part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                found_ids.append(ids[part])
                found_scores.append(np.take_along_axis(scores, part, 1))
            else:
                found_ids.append(np.broadcast_to(ids, scores.shape))
                found_scores.append(scores)
        scores, pool = np.hstack([best_scores, np.vstack(found_scores)]), np.hstack([best_ids, np.vstack(found_ids)])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, order, 1), np.take_along_axis(pool, order, 1)
    return best_ids


def tune_against_exact(index: VectorIndex, repository: Repository, dim: int, seed: int = 0, limit: int = 1024,
                       text_queries: np.ndarray | None = None) -> tuple[Tuning, Tuning | None]:
    """`tune_kinds` with image queries from the stored vectors (the index was trained elsewhere)."""
    _, images = sample_embeddings(repository, dim, 0, np.random.default_rng(seed + 1), 400)
    return tune_kinds(index, repository, dim, images, text_queries, limit)


def tune_kinds(index: VectorIndex, repository: Repository, dim: int, images: np.ndarray,
               text_queries: np.ndarray | None, limit: int) -> tuple[Tuning, Tuning | None]:
    """An effort for image queries (`images`: stored vectors, noised) and, where given, one for text
    queries, each tuned on half its queries and scored on the other half, the truth streamed from the
    stored embeddings (no exact copy of the index held beside it); sets them on the index."""
    rng = np.random.default_rng(len(images))
    image_sets = held_out_queries(images, rng)
    text_sets = halves(text_queries[rng.permutation(len(text_queries))]) if text_queries is not None and len(
        text_queries) else None
    if not len(image_sets[0]):
        return Tuning(Effort(max(1, index.search_effort())), 1.0, (1.0, 1.0), ()), None
    sets = [*image_sets, *(text_sets or ())]
    truth = exact_top_k(repository, dim, np.vstack(sets), 10)
    bounds = np.cumsum([0, *(len(q) for q in sets)])
    pairs = [(q, truth[bounds[i]:bounds[i + 1]]) for i, q in enumerate(sets)]
    cost = rerank_cost(repository, dim) if index.lossy else 0.0
    image = tune(index, pairs[0], pairs[1], limit, rerank_cost=cost)
    text = tune(index, pairs[2], pairs[3], limit, rerank_cost=cost) if text_sets else None
    index.efforts = Efforts(image.effort, text.effort if text else None)
    index.set_search_effort(image.effort.probes)
    return image, text


def fill_index(index: VectorIndex, repository: Repository, dim: int) -> None:
    """Every stored embedding added to `index`. An in-memory IVF index's inverted lists are sized first
    (one pass assigns each vector its list, the second adds it there): lists grown by appending keep up
    to twice their size allocated, which made the build's memory ~2.5x the index's."""
    if index.kind not in IVF_KINDS:
        for ids, vectors in repository.iter_embeddings(dim):
            index.add(ids, vectors)
        return
    ivf = faiss.extract_index_ivf(index.raw)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    assigned = [ivf.quantizer.assign(np.ascontiguousarray(vectors, dtype=np.float32), 1).ravel()
                for _, vectors in repository.iter_embeddings(dim)]
    where = np.concatenate(assigned).astype(np.int64) if assigned else np.zeros(0, dtype=np.int64)
    for list_no, count in enumerate(np.bincount(where, minlength=ivf.nlist).tolist()):
        if count:
            lists.resize(list_no, count)  # allocates exactly `count` entries...
            lists.resize(list_no, 0)  # ...which stay allocated: the adds below fill them without growing
    start = 0
    for ids, vectors in repository.iter_embeddings(dim):
        chunk = np.ascontiguousarray(where[start:start + len(ids)])
        if len(chunk) != len(ids):
            raise StorageError("the stored embeddings changed while the index was built: build it again")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        ivf.add_core(len(ids), faiss.swig_ptr(vectors), faiss.swig_ptr(ids), faiss.swig_ptr(chunk))
        start += len(ids)
    if start != len(where):
        raise StorageError("the stored embeddings changed while the index was built: build it again")


def build_report(plan: IndexPlan, why: str, n: int, seconds: float, index: VectorIndex, image: Tuning,
                 text: Tuning | None) -> BuildReport:
    return BuildReport(plan.kind, why, n, seconds, image.recall, index.search_effort(),
                       bytes_per_vector(plan.kind, index.dim, plan.pq_m), image.interval,
                       text.recall if text else None, text.interval if text else (1.0, 1.0),
                       text.effort.probes if text else None, image.effort.rerank, text.effort.rerank if text else 0)


def build_index(repository: Repository, dim: int, kind: str = "auto", memory_budget: int = 8 * 1024**3,
                seed: int = 0, text_queries: np.ndarray | None = None) -> tuple[VectorIndex, BuildReport]:
    """A new index of `kind` (auto or one of KINDS) holding every stored embedding: trained when it
    needs training, and its search effort tuned per query kind (`tune_kinds`): for image queries (stored
    vectors it was not trained on) and, where `text_queries` are given (text embeddings of the index's
    model: indexer/tuning_queries.py), for text, each the cheapest whose recall@10 against exact search
    reaches RECALL_TARGET on half its queries (with confidence: `vouched_recall`), reported on the other
    half. The build holds the index, a training sample of at most 100,000 vectors and one chunk of the
    exact scan."""
    if kind != "auto" and kind not in KINDS:
        raise StorageError(f"index kind {kind!r}: expected auto, {', '.join(KINDS)}")
    started = time.perf_counter()
    n = len(repository.embedding_ids())
    plan: IndexPlan = plan_index(n, dim, kind, memory_budget)
    rng = np.random.default_rng(seed)
    train, images = sample_embeddings(repository, dim, min(n, 100_000), rng, 400 if plan.kind != "flat" else 0)
    fresh = VectorIndex.build(plan, dim, train if len(train) else np.zeros((1, dim)))
    del train  # the build's peak: the index, one chunk of the scan, and the queries
    fill_index(fresh, repository, dim)
    image = Tuning(Effort(max(1, fresh.search_effort())), 1.0, (1.0, 1.0), ())
    text = None
    if plan.kind != "flat" and n:
        image, text = tune_kinds(fresh, repository, dim, images, text_queries,
                                 plan.nlist if plan.kind in IVF_KINDS else 1024)
    report = build_report(plan, plan.why, n, time.perf_counter() - started, fresh, image, text)
    logger.info("built %s index of %d vectors in %.1f s, held-out recall@10 %.3f (95%% CI %.3f-%.3f), effort %d%s",
                plan.kind, n, report.seconds, image.recall, *image.interval, image.effort.probes,
                f"; text queries {text.recall:.3f} at effort {text.effort.probes}" if text else "")
    return fresh, report
