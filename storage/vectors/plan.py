"""Which FAISS index to build: the index kinds, each kind's memory a vector, and the automatic choice for
an archive's size and memory budget (built by storage/vectors/index.py, trained and tuned by build.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

IndexKind = Literal["flat", "ivf", "ivfsq8", "ivfrabitq", "ivfpq", "hnsw"]
KINDS: tuple[IndexKind, ...] = ("flat", "ivf", "ivfsq8", "ivfrabitq", "ivfpq", "hnsw")
IVF_KINDS: tuple[IndexKind, ...] = ("ivf", "ivfsq8", "ivfrabitq", "ivfpq")  # nprobe, inverted lists, on disk
# how many candidates of each compressed kind may be re-ranked exactly (the tuner picks by measured cost):
# a byte a dimension ranks near exactly, one bit or a PQ code needs many more beyond the k
RERANK_OPTIONS: dict[IndexKind, tuple[int, ...]] = {"ivfsq8": (40, 100), "ivfrabitq": (100, 200, 400, 800, 1600),
                                                    "ivfpq": (100, 200, 400, 800, 1600)}
LOSSY_KINDS: tuple[IndexKind, ...] = tuple(RERANK_OPTIONS)  # compressed codes, re-ranked from the full vectors
FLAT_UP_TO = 200_000  # below this an exact scan answers in milliseconds
HNSW_M = 32
RABITQ_FACTORS = 12  # bytes of per-vector factors beside a RaBitQ code of one bit a dimension
DIRECT_MAP = 24  # bytes per vector of an IVF index's id -> list hashtable (reconstruct and remove by id)


@dataclass(frozen=True)
class IndexPlan:
    kind: IndexKind
    nlist: int = 0  # IVF lists
    pq_m: int = 0  # PQ sub-quantizers
    why: str = ""


def bytes_per_vector(kind: IndexKind, dim: int, pq_m: int = 0) -> float:
    """Approximate memory of one vector in each kind of index (ids included)."""
    return {"flat": dim * 4 + 8, "ivf": dim * 4 + 8 + DIRECT_MAP,
            "ivfsq8": dim + 8 + DIRECT_MAP, "hnsw": dim * 4 + HNSW_M * 2 * 4 + 8,
            "ivfrabitq": math.ceil(dim / 8) + RABITQ_FACTORS + 8 + DIRECT_MAP, "ivfpq": pq_m + 8 + DIRECT_MAP}[kind]


def plan_index(n: int, dim: int, kind: str = "auto", memory_budget: int = 8 * 1024**3) -> IndexPlan:
    """Which index to build for `n` vectors of `dim` within `memory_budget` bytes."""
    nlist = max(1, min(65536, int(4 * math.sqrt(max(n, 1)))))
    # PQ codes of 8 dimensions per byte (144 bytes for 1152-d): with the id and the direct map ~176
    # bytes a vector in memory, and re-ranked by exact cosine from the stored vectors (Store.search)
    pq_m = max(m for m in range(1, min(dim, 256) + 1) if dim % m == 0 and dim // m >= min(8, dim))
    if kind != "auto":
        if kind not in KINDS:
            raise ValueError(f"index kind {kind!r}: expected auto, {', '.join(KINDS)}")
        return IndexPlan(kind, nlist, pq_m, why="asked for")
    # Measured by bench/search_bench.py on 1M clustered 1152-d vectors (2 CPU cores, docs/performance.md):
    # IVF-Flat meets recall@10 0.95 for image and text queries within 5 ms; IVF-SQ8 (a quarter of its
    # memory) the same recall, its candidates re-ranked from the stored vectors (text 6.5 ms); IVF-RaBitQ
    # (one bit a dimension, ~190 bytes a vector) too, but text queries need 1,600 candidates re-ranked
    # (17 ms); IVF-PQ re-ranked needs far more probes for the same recall; HNSW builds many times slower.
    # So: exact, IVF-Flat, IVF-SQ8, then IVF-RaBitQ, the first that fits the memory budget.
    if n <= FLAT_UP_TO and n * bytes_per_vector("flat", dim) <= memory_budget:
        return IndexPlan("flat", why=f"{n} vectors: an exact scan is fast enough")
    if n * bytes_per_vector("ivf", dim) <= memory_budget:
        return IndexPlan("ivf", nlist, why=f"{n} vectors: IVF-Flat, recall tuned with nprobe")
    if n * bytes_per_vector("ivfsq8", dim) <= memory_budget:
        return IndexPlan("ivfsq8", nlist, why=f"{n} vectors: IVF-SQ8 (a byte a dimension) fits the memory budget "
                         "where IVF-Flat does not; its candidates are re-ranked from the stored vectors")
    return IndexPlan("ivfrabitq", nlist, why=f"{n} vectors: only IVF-RaBitQ (1 bit a dimension) fits the memory "
                     "budget; its candidates are re-ranked from the stored vectors (see the recall it reports)")
