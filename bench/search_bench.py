"""Vector search at scale: every index kind against a NumPy brute-force scan, in one run.

    .venv/bin/python bench/search_bench.py [--sizes 100000,1000000] [--dim 1152]

Seeded synthetic embeddings shaped like real ones (clustered, L2-normalised, MedSigLIP's 1152
dimensions). Per size and kind: build time, memory per vector, single-query latency p50/p99,
batched queries per second, recall@10 against exact search on held-out queries (search effort tuned
to reach 0.95 as `build-index` does). Then a memory and latency estimate for 10M and 100M vectors from
the measured figures. Results: bench/results/search.json.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from bench.common import write_result
from storage.vector_index import IndexPlan, VectorIndex, bytes_per_vector, recall_at_k

QUERIES, SINGLE, BATCH, K = 200, 100, 256, 10


def embeddings(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, n // 1000), dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        size = min(100_000, n - start)
        chunk = centres[rng.integers(0, len(centres), size)] + rng.standard_normal((size, dim), dtype=np.float32)
        out[start:start + size] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def latency(search, queries: np.ndarray) -> tuple[float, float, float]:
    times = []
    for q in queries[:SINGLE]:
        started = time.perf_counter()
        search(q[None, :])
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    search(queries[:BATCH])
    qps = BATCH / (time.perf_counter() - started)
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 99) * 1000), qps


def numpy_scan(vectors: np.ndarray):
    def search(queries: np.ndarray) -> np.ndarray:
        scores = queries @ vectors.T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
    return search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=1152)
    args = parser.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        vectors = embeddings(n, args.dim, seed=n)
        ids = np.arange(1, n + 1, dtype=np.int64)
        rng = np.random.default_rng(1)
        queries = vectors[rng.choice(n, QUERIES, replace=False)] + 0.05 * rng.standard_normal(
            (QUERIES, args.dim), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        p50, p99, qps = latency(numpy_scan(vectors), queries)
        rows.append({"vectors": n, "kind": "numpy brute force", "build_s": 0.0, "bytes_per_vector": args.dim * 4,
                     "p50_ms": p50, "p99_ms": p99, "batch_qps": qps, "recall_at_10": 1.0})
        print(rows[-1], flush=True)
        exact = VectorIndex.create(args.dim)
        started = time.perf_counter()
        exact.add(ids, vectors)
        build = time.perf_counter() - started
        p50, p99, qps = latency(lambda q, index=exact: index.search(q, K), queries)
        rows.append({"vectors": n, "kind": "flat", "build_s": build, "p50_ms": p50, "p99_ms": p99,
                     "bytes_per_vector": bytes_per_vector("flat", args.dim), "batch_qps": qps, "recall_at_10": 1.0})
        print(rows[-1], flush=True)
        nlist = 1024 if n >= 500_000 else 256
        plans = [IndexPlan("ivf", nlist), IndexPlan("ivfpq", nlist, 64), IndexPlan("hnsw")]
        for plan in plans:
            started = time.perf_counter()
            train = vectors[rng.choice(n, min(n, nlist * 39), replace=False)]
            index = VectorIndex.build(plan, args.dim, train, hnsw_m=16 if n >= 500_000 else 32)
            index.add(ids, vectors)
            build = time.perf_counter() - started
            recall = recall_at_k(index, exact, queries, K)
            limit = nlist if plan.kind != "hnsw" else 1024
            while recall < 0.95 and index.search_effort() < limit:
                index.set_search_effort(min(limit, index.search_effort() * 2))
                recall = recall_at_k(index, exact, queries, K)
            p50, p99, qps = latency(lambda q, index=index: index.search(q, K), queries)
            rows.append({"vectors": n, "kind": plan.kind, "build_s": build,
                         "bytes_per_vector": bytes_per_vector(plan.kind, args.dim, 64),
                         "p50_ms": p50, "p99_ms": p99, "batch_qps": qps, "recall_at_10": recall,
                         "search_effort": index.search_effort()})
            print(rows[-1], flush=True)
            del index
            gc.collect()
        del exact, vectors
        gc.collect()
    largest = max(r["vectors"] for r in rows)
    estimates = []
    for target in (10_000_000, 100_000_000):
        for row in (r for r in rows if r["vectors"] == largest):
            scale = target / largest
            linear = row["kind"] in ("flat", "numpy brute force")  # exact scans grow with n; others ~sublinearly
            estimates.append({"vectors": target, "kind": row["kind"],
                              "memory_gb": round(row["bytes_per_vector"] * target / 1e9, 1),
                              "p50_ms_estimate": round(row["p50_ms"] * (scale if linear else np.sqrt(scale)), 1)})
    path = write_result("search", {"dim": args.dim, "rows": rows, "estimates": estimates,
                                   "note": "estimates: exact scans scale linearly with n, IVF/HNSW ~sqrt(n) "
                                           "at a fixed recall (a paper estimate, not a measurement)"})
    print(f"written {path}")


if __name__ == "__main__":
    main()
