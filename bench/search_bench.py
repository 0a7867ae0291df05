"""Vector search at scale: every index kind against a NumPy brute-force scan, in one run.

    .venv/bin/python -m bench.search_bench [--sizes 200000,1000000] [--dim 1152] [--rounds 3]

Data: bench/search_data.py (clustered like image embeddings; its top-64 variance share and intrinsic
dimension are measured and printed), plus the isotropic Gaussian worst case at the largest size. Three
disjoint query sets, none indexed: tuning queries choose nprobe / efSearch (storage.index_build.tune:
the smallest effort reaching recall@10 0.95), held-out image queries score it (mean recall@10 with a
95% bootstrap interval), and text-like queries (away from the clusters) are reported separately.
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
from storage.index_build import bootstrap_interval, recall_per_query, tune
from storage.repository import Repository
from storage.vector_index import IndexPlan, VectorIndex, bytes_per_vector, faiss, plan_index

QUERIES, SINGLE, K = 500, 100, 10
Search = Callable[[np.ndarray], np.ndarray]  # one query row -> its top-K ids


def numpy_top(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    out = []
    for start in range(0, len(queries), 64):
        scores = queries[start:start + 64] @ vectors.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        out.append(np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1))
    return np.vstack(out) + 1  # ids are row + 1


def latencies(searches: dict[str, Search], queries: np.ndarray, rounds: int) -> dict[str, tuple[float, float]]:
    """p50, p90 ms per kind over `rounds` rounds of SINGLE queries, the kinds interleaved in each round."""
    times: dict[str, list[float]] = {name: [] for name in searches}
    for round_ in range(rounds):
        order = list(searches) if round_ % 2 == 0 else list(reversed(searches))
        for name in order:
            for q in queries[:SINGLE]:
                started = time.perf_counter()
                searches[name](q[None, :])
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: (float(np.percentile(t, 50)), float(np.percentile(t, 90))) for name, t in times.items()}


def sqlite_vectors(folder: Path, vectors: np.ndarray) -> Repository:
    """The vectors in an index database's embeddings table (the schema of storage.models), on disk."""
    from storage.opening import open_index

    open_index(folder, create=True).close()
    with sqlite3.connect(folder / "medsearch.sqlite") as con:
        for start in range(0, len(vectors), 20_000):
            con.executemany("INSERT INTO embeddings (image_id, fingerprint_key, vector) VALUES (?, 'bench', ?)",
                            ((start + i + 1, v.tobytes()) for i, v in enumerate(vectors[start:start + 20_000])))
    return Repository.open(f"sqlite:///{folder / 'medsearch.sqlite'}")


def measure(name: str, index: VectorIndex, n: int, sets: dict[str, tuple[np.ndarray, np.ndarray]], limit: int
            ) -> dict[str, Any]:
    started = time.perf_counter()
    tuning = tune(index, sets["tuning"], sets["held_out"], limit) if limit else None
    fetch = index.candidates(K)
    text = recall_per_query(index.search(sets["text"][0], fetch)[1], sets["text"][1])
    row: dict[str, Any] = {"vectors": n, "kind": name, "search_effort": index.search_effort(),
                           "recall_at_10": tuning.recall if tuning else 1.0,
                           "recall_95ci": tuning.interval if tuning else (1.0, 1.0),
                           "text_recall_at_10": float(text.mean()), "text_recall_95ci": bootstrap_interval(text),
                           "tune_s": time.perf_counter() - started}
    return row


def run_size(n: int, dim: int, rounds: int, kinds: list[str], data: str, work: Path) -> list[dict[str, Any]]:
    mixture = Mixture.make(dim, seed=7)
    vectors = mixture.draw(n, seed=n) if data == "clustered" else gaussian(n, dim, seed=n)
    queries = {"tuning": mixture.draw(QUERIES, 1), "held_out": mixture.draw(QUERIES, 2),
               "text": mixture.text_queries(QUERIES, 3)} if data == "clustered" else {
        name: gaussian(QUERIES, dim, seed) for seed, name in enumerate(("tuning", "held_out", "text"), start=1)}
    shape = describe(vectors)
    print(f"{n} {data} vectors: {shape}", flush=True)
    sets = {name: (q, numpy_top(vectors, q)) for name, q in queries.items()}
    ids = np.arange(1, n + 1, dtype=np.int64)
    numpy_search: Search = lambda q: numpy_top(vectors, q)  # noqa: E731
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
            searches: dict[str, Search] = {"flat": lambda q, index=index: index.search(q, K)[1],
                                           "flat (FAISS scan)": lambda q, raw=index.raw: raw.search(q, K)[1]}
            bpv = bytes_per_vector("flat", dim)
        else:
            train = vectors[np.random.default_rng(0).choice(n, min(n, plan.nlist * 39), replace=False)]
            index = VectorIndex.build(IndexPlan(kind, plan.nlist, plan.pq_m), dim, train,
                                      hnsw_m=16 if n > 300_000 else 32)
            del train
            index.add(ids, vectors)
            found = [measure(kind, index, n, sets, plan.nlist if kind != "hnsw" else 1024)]
            bpv = len(faiss.serialize_index(index.raw)) / n
            if index.lossy:
                repository = repository or sqlite_vectors(work / f"vectors-{n}", vectors)
                name = f"ivfpq{plan.pq_m}" if kind == "ivfpq" else kind
                found[0]["kind"] = f"{name} + re-rank of {index.candidates(K)} from SQLite"

                def search(q: np.ndarray, index: VectorIndex = index, repository: Repository = repository) -> Any:
                    return rerank(repository, dim, q, index.search(q, index.candidates(K))[1], K)
            else:
                search = lambda q, index=index: index.search(q, K)[1]  # noqa: E731
            searches = {found[0]["kind"]: search}
        build = time.perf_counter() - started - found[0].get("tune_s", 0.0)
        timed = latencies({"numpy brute force": numpy_search, **searches}, queries["held_out"], rounds)
        found[0]["automatic"] = kind == automatic
        for row in found:
            p50, p90 = timed[row["kind"]]
            row.update({"build_s": build, "bytes_per_vector": bpv, "p50_ms": p50, "p90_ms": p90,
                        "numpy_p50_ms_same_rounds": timed["numpy brute force"][0],
                        "speedup_vs_numpy": timed["numpy brute force"][0] / p50, "data": data, **shape})
            rows.append(row)
            label = row["kind"] + (" (automatic)" if row.get("automatic") else "")
            print(f"{label:44} p50 {p50:8.2f} ms  x{row['speedup_vs_numpy']:6.1f} NumPy  recall@10 "
                  f"{row['recall_at_10']:.3f}  text {row['text_recall_at_10']:.3f}  {bpv:.0f} B/vector  "
                  f"build {build:.0f} s", flush=True)
        del index, searches
        gc.collect()
    if repository is not None:
        repository.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200000,1000000")
    parser.add_argument("--dim", type=int, default=1152)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", default="flat,ivf,ivfrabitq,ivfpq,hnsw",
                        help="flat also times FAISS's own scan; hnsw (slow to build) and ivfpq (its 100 candidates "
                        "hold too few of the top 10: the tuner climbs to every list) are skipped above 300k vectors")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="medsearch-searchbench-") as work:
        for n in sizes:
            kinds = [k for k in args.kinds.split(",") if not (k in ("hnsw", "ivfpq") and n > 300_000)]
            rows += run_size(n, args.dim, args.rounds, kinds, "clustered", Path(work))
        rows += run_size(max(sizes), args.dim, args.rounds, ["ivf"], "gaussian", Path(work))
    path = write_result("search", {"dim": args.dim, "rows": rows, "note": "p50 of single queries; recall@10 of "
                                   "held-out queries at the effort tuned on other queries (95% bootstrap CI)"})
    print(f"written {path}")


if __name__ == "__main__":
    main()
