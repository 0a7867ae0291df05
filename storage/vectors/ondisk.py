"""Building an IVF index too large for one process's memory: train once on a sample, fill copies of the
trained empty index with id ranges (in parallel, anywhere that can read the database), and merge the
filled shards on disk (FAISS contrib `merge_ondisk`) into inverted lists in a file of the database
folder that searches map into memory (storage.store adopts the result and saves its small index file
atomically, so the API switches to it whole).

Vectors removed later stay in the file, left out of every search (storage.vectors.index: FAISS's on-disk
lists cannot shrink safely); building again compacts. Search from an on-disk index reads the probed
lists from that file: once the file is in the page
cache it costs what the in-memory index costs; cold, each query reads nprobe lists from disk.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from pathlib import Path

import numpy as np

from storage.sql.repository import Repository
from storage.vectors.build import sample_embeddings
from storage.vectors.index import VectorIndex, faiss
from storage.vectors.plan import IVF_KINDS, IndexPlan, plan_index

logger = logging.getLogger(__name__)

IVFDATA_SUFFIX = ".ivfdata"


def train_empty(repository: Repository, dim: int, kind: str, memory_budget: int, seed: int = 0,
                sample: int = 100_000) -> tuple[VectorIndex, IndexPlan]:
    """An IVF index (IVF-Flat, -RaBitQ or -PQ) trained on a sample of the stored embeddings, holding nothing yet."""
    n = len(repository.embedding_ids())
    plan = plan_index(n, dim, kind, memory_budget)
    if plan.kind not in IVF_KINDS:
        plan = IndexPlan("ivf", plan.nlist or plan_index(n, dim, "ivf").nlist, why="on disk: IVF-Flat")
    train = sample_embeddings(repository, dim, min(n, sample), np.random.default_rng(seed))[0]
    return VectorIndex.build(plan, dim, train if len(train) else np.zeros((1, dim), dtype=np.float32)), plan


def id_ranges(ids: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """[low, high) id ranges holding about equal numbers of the given (sorted) ids."""
    if not len(ids):
        return []
    bounds = [int(ids[min(len(ids) - 1, round(i * len(ids) / parts))]) for i in range(parts)]
    edges = [*sorted(set(bounds)), int(ids[-1]) + 1]
    return list(itertools.pairwise(edges))


def fill_shard(repository: Repository, trained: bytes, dim: int, low: int, high: int, out: Path) -> int:
    """Add the embeddings with low <= id < high to a copy of the trained index and write it to `out`
    (a plain FAISS file, merged later). Returns how many vectors it holds."""
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    added = 0
    for ids, vectors in repository.iter_embeddings(dim, start_after=low - 1, stop_before=high):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
        added += len(ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out))
    return added


def merge_shards(trained: VectorIndex, shards: list[Path], folder: Path) -> tuple[VectorIndex, Path]:
    """The shards' inverted lists merged into a new file of `folder` (a fresh name, so that a reader still
    mapping the previous one is not disturbed); the trained index now searches them."""
    ivfdata = folder / f"index-{uuid.uuid4().hex[:12]}{IVFDATA_SUFFIX}"
    from faiss.contrib.ondisk import merge_ondisk

    index = trained.raw
    merge_ondisk(index, [str(path) for path in shards], str(ivfdata))
    faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.NoMap)  # removals are tombstones here
    return VectorIndex(index), ivfdata


def remove_unused_ivfdata(folder: Path, keep: Path) -> None:
    for path in folder.glob(f"index-*{IVFDATA_SUFFIX}"):
        if path != keep:
            path.unlink(missing_ok=True)  # a reader that still maps it keeps it until it lets go
