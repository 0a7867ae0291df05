"""Vector search at scale: every index kind against a NumPy brute-force scan, in one run.

    .venv/bin/python -m bench.search_bench [--sizes 200000,1000000] [--dim 1152] [--rounds 3]

Data: bench/search_data.py (clustered like image embeddings; its top-64 variance share and intrinsic
dimension are measured and printed), plus the isotropic Gaussian worst case at the largest size. Four
disjoint query sets, none indexed: image and text-like (away from the clusters, across a modality gap)
tuning queries choose each kind's nprobe / efSearch (and re-ranked candidates) as build_index does
(storage.vectors.build.tune: the cheapest reaching recall@10 0.95), held-out image and text queries score
them (mean recall@10 with a 95% bootstrap interval); text is also scored at the image effort (one
effort for both, as builds did before), and IVF kinds try the query-aware alternative: inverted lists
chosen by the text query shifted across the modality gap, scanned with the query itself.
Latency: single queries, `--rounds` rounds with the kinds interleaved, p50/p90 over all. The
compressed indexes (IVF-RaBitQ, IVF-PQ) re-rank their 100 candidates from the vectors in an SQLite
file on disk, as the product does (Store.search), and their bytes per vector in memory are measured
from their serialised size. `automatic` marks the kind build-index picks for that size with the
default memory budget. Results: bench/results/search.json.
"""

from __future__ import annotations

import argparse
import gc
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_result
from bench.search_data import Mixture, describe, gaussian
from storage.exact_scan import rerank
from storage.sql.repository import Repository
from storage.vectors.build import (
    RECALL_TARGET,
    bootstrap_interval,
    efforts_up_to,
    recall_per_query,
    tune,
    vouched_recall,
)
from storage.vectors.effort import Efforts, QueryKind
from storage.vectors.index import VectorIndex, faiss
from storage.vectors.plan import IVF_KINDS, IndexPlan, bytes_per_vector, plan_index

QUERIES, SINGLE, K = 500, 100, 10
KindSearch = Callable[[np.ndarray, QueryKind], np.ndarray]  # one query row and its kind -> its top-K ids


def numpy_top(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    out = []
    for start in range(0, len(queries), 64):
        scores = queries[start:start + 64] @ vectors.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        out.append(np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1))
    return np.vstack(out) + 1  # ids are row + 1


def latencies(searches: dict[str, KindSearch], queries: np.ndarray, rounds: int, kind: QueryKind
              ) -> dict[str, tuple[float, float]]:
    """p50, p90 ms per kind over `rounds` rounds of SINGLE queries, the kinds interleaved in each round."""
    times: dict[str, list[float]] = {name: [] for name in searches}
    for round_ in range(rounds):
        order = list(searches) if round_ % 2 == 0 else list(reversed(searches))
        for name in order:
            for q in queries[:SINGLE]:
                started = time.perf_counter()
                searches[name](q[None, :], kind)
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: (float(np.percentile(t, 50)), float(np.percentile(t, 90))) for name, t in times.items()}


def sqlite_vectors(folder: Path, vectors: np.ndarray) -> Repository:
    """The vectors in an index database's embeddings table (the schema of storage.sql.models), on disk."""
    from storage.opening import open_index

    open_index(folder, create=True).close()
    with sqlite3.connect(folder / "medsearch.sqlite") as con:
        for start in range(0, len(vectors), 20_000):
            con.executemany("INSERT INTO embeddings (image_id, fingerprint_key, vector) VALUES (?, 'bench', ?)",
                            ((start + i + 1, v.tobytes()) for i, v in enumerate(vectors[start:start + 20_000])))
    return Repository.open(f"sqlite:///{folder / 'medsearch.sqlite'}")


def measure(name: str, index: VectorIndex, n: int, sets: dict[str, tuple[np.ndarray, np.ndarray]], limit: int,
            gap: np.ndarray) -> dict[str, Any]:
    """Tune the index for each query kind as build_index does (storage.vectors.build.tune: image queries
    on image tuning queries, text on text tuning queries), score each on its held-out queries, and the
    text queries also at the image effort (what one effort for both gave) and, for IVF kinds, with
    their inverted lists chosen by the query shifted across the modality gap (`shifted_search`)."""
    started = time.perf_counter()
    image = tune(index, sets["tuning"], sets["held_out"], limit)
    text = tune(index, sets["text_tuning"], sets["text"], limit)
    index.efforts = Efforts(image.effort, text.effort)
    fetch = index.candidates(K, "image")
    at_image = recall_per_query(index.search(sets["text"][0], fetch, kind="image")[1], sets["text"][1])
    row: dict[str, Any] = {"vectors": n, "kind": name, "search_effort": image.effort.probes,
                           "rerank": image.effort.rerank, "text_search_effort": text.effort.probes,
                           "text_rerank": text.effort.rerank, "recall_at_10": image.recall,
                           "recall_95ci": image.interval,
                           "text_recall_at_10": text.recall, "text_recall_95ci": text.interval,
                           "text_recall_at_image_effort": float(at_image.mean())}
    if index.kind in IVF_KINDS:  # the query-aware alternative: lists chosen across the modality gap
        shifted = tune_shifted(index, sets, limit, gap, text.effort.rerank)
        row |= {"shifted_text_search_effort": shifted[0], "shifted_text_recall_at_10": shifted[1],
                "shifted_text_recall_95ci": shifted[2]}
    row["tune_s"] = time.perf_counter() - started
    return row


def shifted_search(index: VectorIndex, queries: np.ndarray, k: int, probes: int, gap: np.ndarray) -> np.ndarray:
    """IVF search whose inverted lists are the nearest to the query minus the modality gap (the mean
    text embedding minus the mean image embedding), scanned with the query itself: the scores are the
    query's own, only the choice of lists moves."""
    ivf = faiss.extract_index_ivf(index.raw)
    _, lists = ivf.quantizer.search(np.ascontiguousarray(queries - gap[None, :], dtype=np.float32), probes)
    centroids = faiss.rev_swig_ptr(faiss.downcast_index(ivf.quantizer).get_xb(), ivf.nlist * ivf.d).reshape(
        ivf.nlist, ivf.d)
    distances = np.einsum("qd,qpd->qp", queries, centroids[lists]).astype(np.float32)  # the query's own
    before, ivf.nprobe = ivf.nprobe, probes  # FAISS's search_preassigned reads nprobe from the index
    try:
        return ivf.search_preassigned(np.ascontiguousarray(queries, dtype=np.float32), k, lists, distances)[1]
    finally:
        ivf.nprobe = before


def tune_shifted(index: VectorIndex, sets: dict[str, tuple[np.ndarray, np.ndarray]], limit: int, gap: np.ndarray,
                 rerank: int) -> tuple[int, float, tuple[float, float]]:
    """The smallest nprobe whose shifted search reaches RECALL_TARGET on the text tuning queries, and its
    held-out recall with a 95% interval."""
    fetch = max(rerank, 4 * K) if index.lossy else K
    chosen = limit
    for probes in efforts_up_to(max(1, limit)):
        found = shifted_search(index, sets["text_tuning"][0], fetch, probes, gap)
        if vouched_recall(recall_per_query(found, sets["text_tuning"][1])) >= RECALL_TARGET:
            chosen = probes
            break
    held = recall_per_query(shifted_search(index, sets["text"][0], fetch, chosen, gap), sets["text"][1])
    return chosen, float(held.mean()), bootstrap_interval(held)


def run_size(n: int, dim: int, rounds: int, kinds: list[str], data: str, work: Path) -> list[dict[str, Any]]:
    mixture = Mixture.make(dim, seed=7)
    vectors = mixture.draw(n, seed=n) if data == "clustered" else gaussian(n, dim, seed=n)
    queries = {"tuning": mixture.draw(QUERIES, 1), "held_out": mixture.draw(QUERIES, 2),
               "text": mixture.text_queries(QUERIES, 3), "text_tuning": mixture.text_queries(QUERIES, 4)} \
        if data == "clustered" else {name: gaussian(QUERIES, dim, seed) for seed, name in enumerate(
            ("tuning", "held_out", "text", "text_tuning"), start=1)}
    # the modality gap as a build can estimate it: the mean text tuning query minus the mean stored vector
    gap = queries["text_tuning"].mean(axis=0) - vectors[:: max(1, n // 100_000)].mean(axis=0)
    shape = describe(vectors)
    print(f"{n} {data} vectors: {shape}", flush=True)
    sets = {name: (q, numpy_top(vectors, q)) for name, q in queries.items()}
    ids = np.arange(1, n + 1, dtype=np.int64)
    numpy_search: KindSearch = lambda q, kind: numpy_top(vectors, q)  # noqa: E731
    rows: list[dict[str, Any]] = []
    repository: Repository | None = None  # the vectors on disk, written once for the compressed kinds
    plan = plan_index(n, dim, "ivfpq")
    automatic = plan_index(n, dim).kind
    for kind in kinds:  # one index in memory at a time; each timed interleaved with NumPy in the same rounds
        started = time.perf_counter()
        if kind == "flat":
            index = VectorIndex.create(dim)
            index.add(ids, vectors)
            found = [{"vectors": n, "kind": "flat", "recall_at_10": 1.0, "text_recall_at_10": 1.0},
                     {"vectors": n, "kind": "flat (FAISS scan)", "recall_at_10": 1.0, "text_recall_at_10": 1.0}]
            searches: dict[str, KindSearch] = {"flat": lambda q, kind, index=index: index.search(q, K)[1],
                                               "flat (FAISS scan)": lambda q, kind, raw=index.raw: raw.search(q, K)[1]}
            bpv = bytes_per_vector("flat", dim)
        else:
            train = vectors[np.random.default_rng(0).choice(n, min(n, plan.nlist * 39), replace=False)]
            index = VectorIndex.build(IndexPlan(kind, plan.nlist, plan.pq_m), dim, train,
                                      hnsw_m=16 if n > 300_000 else 32)
            del train
            index.add(ids, vectors)
            found = [measure(kind, index, n, sets, plan.nlist if kind != "hnsw" else 1024, gap)]
            bpv = len(faiss.serialize_index(index.raw)) / n
            if index.lossy:
                repository = repository or sqlite_vectors(work / f"vectors-{n}", vectors)
                name = f"ivfpq{plan.pq_m}" if kind == "ivfpq" else kind
                found[0]["kind"] = f"{name} + re-rank from SQLite"

                def search(q: np.ndarray, kind: QueryKind, index: VectorIndex = index,
                           repository: Repository = repository) -> Any:
                    return rerank(repository, dim, q, index.search(q, index.candidates(K, kind), kind=kind)[1], K)
            else:
                search = lambda q, kind, index=index: index.search(q, K, kind=kind)[1]  # noqa: E731
            searches = {found[0]["kind"]: search}
        build = time.perf_counter() - started - found[0].get("tune_s", 0.0)
        every = {"numpy brute force": numpy_search, **searches}
        timed = latencies(every, queries["held_out"], rounds, "image")
        timed_text = latencies(every, queries["text"], rounds, "text")
        found[0]["automatic"] = kind == automatic
        for row in found:
            p50, p90 = timed[row["kind"]]
            row.update({"build_s": build, "bytes_per_vector": bpv, "p50_ms": p50, "p90_ms": p90,
                        "p50_ms_image": p50, "p50_ms_text": timed_text[row["kind"]][0],
                        "p90_ms_text": timed_text[row["kind"]][1],
                        "numpy_p50_ms_same_rounds": timed["numpy brute force"][0],
                        "speedup_vs_numpy": timed["numpy brute force"][0] / p50,
                        "text_speedup_vs_numpy": timed_text["numpy brute force"][0] / timed_text[row["kind"]][0],
                        "data": data, **shape})
            rows.append(row)
            label = row["kind"] + (" (automatic)" if row.get("automatic") else "")
            shifted = (f"  shifted lists: text {row['shifted_text_recall_at_10']:.3f} at nprobe "
                       f"{row['shifted_text_search_effort']}" if "shifted_text_recall_at_10" in row else "")
            print(f"{label:34} image p50 {p50:7.2f} ms x{row['speedup_vs_numpy']:6.1f} recall {row['recall_at_10']:.3f}"
                  f" (effort {row.get('search_effort', 0)}) | text p50 {row['p50_ms_text']:7.2f} ms recall "
                  f"{row['text_recall_at_10']:.3f} (effort {row.get('text_search_effort', 0)}, re-rank "
                  f"{row.get('text_rerank', 0)}; at the image effort "
                  f"{row.get('text_recall_at_image_effort', 1.0):.3f}){shifted} | {bpv:.0f} B/vector, build "
                  f"{build:.0f} s", flush=True)
        del index, searches, every  # every search closes over its index: all of them, or the index stays
        gc.collect()
    if repository is not None:
        repository.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200000,1000000")
    parser.add_argument("--dim", type=int, default=1152)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", default="flat,ivf,ivfsq8,ivfrabitq,ivfpq,hnsw",
                        help="flat also times FAISS's own scan; hnsw (slow to build) and ivfpq (its 100 candidates "
                        "hold too few of the top 10: the tuner climbs to every list) are skipped above 300k vectors")
    parser.add_argument("--no-gaussian", action="store_true", help="skip the isotropic worst case")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="medsearch-searchbench-") as work:
        for n in sizes:
            kinds = [k for k in args.kinds.split(",") if not (k in ("hnsw", "ivfpq") and n > 300_000)]
            rows += run_size(n, args.dim, args.rounds, kinds, "clustered", Path(work))
        if not args.no_gaussian:
            rows += run_size(max(sizes), args.dim, args.rounds, ["ivf"], "gaussian", Path(work))
    path = write_result("search", {"dim": args.dim, "rows": rows, "note": "p50 of single queries; recall@10 of "
                                   "held-out queries at the effort tuned on other queries (95% bootstrap CI)"})
    print(f"written {path}")


if __name__ == "__main__":
    main()
