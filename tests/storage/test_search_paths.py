"""The search paths behind the figures of bench/search_bench.py, checked without timing: the exact BLAS
path returns what FAISS's own exact search returns; the tuner picks the smallest search effort that
meets the target (the answer found by trying every effort); a compressed index's candidates come back
in exactly their exact-cosine order; filtered top-k equals brute force for every index kind, and a few
allowed vectors scored from the index equal FAISS's filtered search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage.opening import open_index
from storage.vectors.build import efforts_up_to, recall_per_query, tune, vouched_recall
from storage.vectors.effort import Effort
from storage.vectors.filtered import direct_search, nearest_allowed
from storage.vectors.index import VectorIndex, faiss
from storage.vectors.plan import KINDS, LOSSY_KINDS, IndexPlan
from tests.storage.test_store import fingerprint, records

DIM = 16


def clustered(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    x = (centres[rng.integers(0, 40, n)] + 0.35 * rng.normal(size=(n, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_exact_blas_path_returns_what_faiss_returns():
    vectors = clustered(3000, 1)
    ids = np.arange(3000, dtype=np.int64) * 7 + 3
    index = VectorIndex.create(DIM)
    index.add(ids, vectors)
    reference = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    reference.add_with_ids(vectors, ids)
    for queries, k in ((clustered(1, 9), 10), (clustered(130, 10), 25), (clustered(3, 11), 5000)):
        scores, found = index.search(queries, k)
        want_scores, want_ids = reference.search(queries, min(k, 3000))
        assert found.shape == want_ids.shape
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
        for row, (f, w) in enumerate(zip(found, want_ids, strict=True)):  # equal up to exact ties
            assert set(f.tolist()) == set(w.tolist()) or np.allclose(scores[row][-1], scores[row][-2]), row
    index.remove(ids[:1000])  # the cached id list follows changes
    index.add(np.array([99_999]), clustered(1, 12))
    _, found = index.search(clustered(1, 12), 1)
    assert found[0, 0] == 99_999 and not set(index.search(clustered(50, 13), 50)[1].ravel()) & set(ids[:1000])


def test_the_tuner_picks_the_smallest_effort_meeting_the_target():
    vectors = clustered(6000, 2)
    ids = np.arange(6000, dtype=np.int64)
    index = VectorIndex.build(IndexPlan("ivf", 64), DIM, vectors)
    index.add(ids, vectors)
    exact = VectorIndex.create(DIM)
    exact.add(ids, vectors)
    tuning, held = clustered(150, 20), clustered(150, 21)
    truth = (exact.search(tuning, 10)[1], exact.search(held, 10)[1])
    per_query = {effort: recall_per_query(index.search(tuning, 10, effort=Effort(effort))[1], truth[0])
                 for effort in range(1, 65)}  # the known answer: every effort tried
    curve = {effort: vouched_recall(recall) for effort, recall in per_query.items()}
    assert all(curve[e] <= per_query[e].mean() for e in curve)  # the interval's low end: below the mean
    for target in (0.8, 0.9, 0.95, 0.99):
        chosen = tune(index, (tuning, truth[0]), (held, truth[1]), 64, target=target)
        probes = chosen.effort.probes
        assert curve[probes] >= target and (probes == 1 or curve[probes - 1] < target), (target, curve)
        assert probes <= min(e for e in efforts_up_to(64) if curve[e] >= target)  # no coarser than the ladder
        assert chosen.interval[0] <= chosen.recall <= chosen.interval[1]
    assert tune(index, (tuning, truth[0]), (held, truth[1]), 64, target=1.01).effort.probes == 64  # unreachable


def test_one_query_split_over_lists_answers_as_in_a_batch():
    vectors = clustered(5000, 4)
    ids = np.arange(5000, dtype=np.int64) + 1
    index = VectorIndex.build(IndexPlan("ivf", 64), DIM, vectors)
    index.add(ids, vectors)
    index.set_search_effort(16)
    queries = clustered(40, 22)
    batch_scores, batch_ids = index.search(queries, 10)  # FAISS's split over queries
    for row, query in enumerate(queries):  # one query: its lists split over the threads
        scores, found = index.search(query[None, :], 10)
        np.testing.assert_allclose(scores[0], batch_scores[row], atol=1e-5)
        assert set(found[0].tolist()) == set(batch_ids[row].tolist()) or np.isclose(scores[0][-1], scores[0][-2])
    assert faiss.extract_index_ivf(index.raw).parallel_mode == 1


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, list[int]]:
    vectors = clustered(4000, 3)
    db = tmp_path_factory.mktemp("paths") / "db"
    with open_index(db, create=True) as (store, _):
        store.bind_model(fingerprint(dim=DIM))
        ids = store.write(records(4000, vectors=vectors)) or []
    return db, vectors, ids


@pytest.mark.parametrize("kind", LOSSY_KINDS)
def test_a_compressed_index_ranks_its_candidates_by_exact_cosine(stored, kind: str):
    db, vectors, ids = stored
    by_id = dict(zip(ids, vectors, strict=True))
    queries = clustered(20, 30)
    with open_index(db) as (store, _):
        report = store.build_index(kind)
        assert report.kind == kind and report.recall_at_10 >= 0.9
        index = store._index  # the raw candidates, to check the re-ranking against
        assert index is not None and index.lossy
        _, candidates = index.search(queries, index.candidates(10))
        for query, row, hits in zip(queries, candidates, store.search(queries, 10), strict=True):
            pool = [int(i) for i in row if i >= 0]
            exact = sorted(pool, key=lambda i: -float(by_id[i] @ query))[:10]
            assert [i for i, _ in hits] == exact
            assert [s for _, s in hits] == pytest.approx([float(by_id[i] @ query) for i in exact], abs=1e-5)
        floor = float(np.sort(vectors @ queries[0])[-30])
        found = store.ids_scoring(queries[0], floor)
        assert all(float(by_id[int(i)] @ queries[0]) >= floor for i in found)  # exact scores, not PQ's


@pytest.mark.parametrize("kind", KINDS)
def test_filtered_top_k_equals_brute_force_for_every_kind(stored, kind: str):
    db, vectors, ids = stored
    allowed = np.asarray(ids[::7], dtype=np.int64)
    rows = {i: n for n, i in enumerate(ids)}
    queries = clustered(5, 40)
    with open_index(db) as (store, _):
        store.build_index(kind)
        for query, hits in zip(queries, store.search(queries, 10, allowed), strict=True):
            brute = sorted(allowed.tolist(), key=lambda i: -float(vectors[rows[i]] @ query))[:10]
            assert [i for i, _ in hits] == brute, kind


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_few_allowed_vectors_scored_from_the_index_equal_faiss_filtered_search(kind: str):
    """direct_search (allowed vectors reconstructed by id) gives what FAISS's ID-selector search over every
    vector gives (without its padding); it declines an id the index lacks, and the kinds whose vectors are
    compressed."""
    vectors = clustered(4000, 5)
    ids = np.arange(4000, dtype=np.int64) * 3 + 1
    index = VectorIndex.create(DIM) if kind == "flat" else VectorIndex.build(IndexPlan("ivf", 32), DIM, vectors)
    index.add(ids, vectors)
    every = index.every_list()
    queries = clustered(4, 41)
    for allowed in (ids[::9], ids[5:12], ids[::2][:300]):
        direct = direct_search(index, queries, 10, allowed)
        assert direct is not None
        want_scores, want_ids = index.search(queries, 10, allowed, effort=every)
        width = min(10, len(allowed))  # FAISS pads the rest with id -1
        assert direct[1].shape == (4, width) and (want_ids[:, width:] == -1).all()
        np.testing.assert_allclose(direct[0], want_scores[:, :width], atol=1e-5)
        assert direct[1].tolist() == want_ids[:, :width].tolist()
    assert direct_search(index, queries, 10, np.array([ids[0], 2], dtype=np.int64)) is None  # 2 is no id
    lossy = VectorIndex.build(IndexPlan("ivfpq", 16, pq_m=4), DIM, vectors)
    lossy.add(ids, vectors)
    assert direct_search(lossy, queries, 10, ids[::9]) is None


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_large_allowed_share_found_among_the_nearest_equals_the_selector_search(kind: str):
    """nearest_allowed (the nearest vectors checked against the allowed ids, in doubling rounds) gives
    what FAISS's search with an ID selector gives at the same effort; it declines a small share, an
    IVF-Flat filter small enough to search exactly, and compressed kinds."""
    vectors = clustered(5000, 6)
    ids = np.arange(5000, dtype=np.int64) * 2 + 5
    index = VectorIndex.create(DIM) if kind == "flat" else VectorIndex.build(IndexPlan("ivf", 32), DIM, vectors)
    index.add(ids, vectors)
    queries = clustered(6, 42)
    far = ids[np.argsort(vectors @ queries[0])[:1300]]  # the farthest from the first query: several rounds
    for allowed in (ids[::3], ids[:4000], ids[::2], far):
        found = nearest_allowed(index, queries, 10, allowed, "image", exact_limit=0)
        assert found is not None
        want_scores, want_ids = index.search(queries, 10, allowed)
        assert found[1].tolist() == want_ids.tolist()
        np.testing.assert_allclose(found[0][found[1] >= 0], want_scores[want_ids >= 0], atol=1e-5)
    assert nearest_allowed(index, queries, 10, ids[::20], "image", exact_limit=0) is None  # 5%: scored instead
    if kind == "ivf":
        assert nearest_allowed(index, queries, 10, ids[::3], "image", exact_limit=10_000) is None
    lossy = VectorIndex.build(IndexPlan("ivfpq", 16, pq_m=4), DIM, vectors)
    lossy.add(ids, vectors)
    assert nearest_allowed(lossy, queries, 10, ids[::3], "image", exact_limit=0) is None
