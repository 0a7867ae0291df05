"""An IVF index filled in shards and merged on disk answers exactly as the same index filled in memory,
survives being adopted and reopened, and still takes additions and removals."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage.opening import open_index
from storage.records import Selection
from storage.vectors.index import VectorIndex, faiss
from storage.vectors.ondisk import fill_shard, id_ranges, merge_shards, train_empty
from tests.storage.vectors.test_index_kinds import fill

DIM = 8


def test_merged_on_disk_equals_in_memory(tmp_path: Path):
    db, vectors, ids = fill(tmp_path / "db")
    with open_index(db) as (store, repository):
        trained, plan = train_empty(repository, DIM, "ivf", 8 * 1024**3)
        blob = trained.raw_bytes()
        in_memory = VectorIndex(faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8)))
        in_memory.add(np.asarray(ids, dtype=np.int64), vectors)
        ranges = id_ranges(repository.embedding_ids(), 4)
        assert len(ranges) == 4 and ranges[0][0] == min(ids) and ranges[-1][1] == max(ids) + 1
        shards = [tmp_path / f"shard-{n}.index" for n in range(len(ranges))]
        assert sum(fill_shard(repository, blob, DIM, low, high, path)
                   for (low, high), path in zip(ranges, shards, strict=True)) == len(ids)
        merged, ivfdata = merge_shards(trained, shards, db)
        for index in (merged, in_memory):
            index.set_search_effort(8)
        queries = vectors[::97] + 0.01
        disk_scores, disk_ids = merged.search(queries, 10)
        memory_scores, memory_ids = in_memory.search(queries, 10)
        assert np.array_equal(disk_ids, memory_ids) and np.allclose(disk_scores, memory_scores)
        store.adopt(merged, plan.kind)
    with open_index(db) as (store, repository):  # its small index file points at the lists on disk
        assert store.index_kind == "ivf" and store.ntotal == len(ids) and ivfdata.stat().st_size > 0
        assert store.verify() == []
        again = [[i for i, _ in hits] for hits in store.search(queries, 10)]
        assert again == disk_ids.tolist()
        removed = store.remove_sources(repository.select_source_ids(Selection(path_prefix="img1")))
        assert removed and store.ntotal == len(ids) - len(removed) and store.verify() == []
    with open_index(db, read_only=True) as (store, _):  # after a reload the removed ids are found again
        assert store.ntotal == len(ids) - len(removed) and store.verify() == []
        hits = {i for row in store.search(vectors[:200], 50) for i, _ in row}
        assert hits and not hits & set(removed)


def test_a_copied_and_a_moved_folder_open_their_own_lists(tmp_path: Path):
    """The lists' file is found beside the index file, not at the path it was merged at: a copy answers
    the same after the original folder is gone, and so does the original moved elsewhere."""
    import shutil

    db, vectors, _ = fill(tmp_path / "db")
    with open_index(db) as (store, repository):
        trained, plan = train_empty(repository, DIM, "ivf", 8 * 1024**3)
        shards = [tmp_path / f"shard-{n}.index" for n in range(2)]
        for (low, high), path in zip(id_ranges(repository.embedding_ids(), 2), shards, strict=True):
            fill_shard(repository, trained.raw_bytes(), DIM, low, high, path)
        merged, ivfdata = merge_shards(trained, shards, db)
        store.adopt(merged, plan.kind)
    queries = vectors[::53] + 0.01
    with open_index(db, read_only=True) as (store, _):
        expected = store.search(queries, 10)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(db, copy)
    moved = tmp_path / "moved"
    db.rename(moved)  # the original path exists no more
    for folder in (copy, moved):
        with open_index(folder, read_only=True) as (store, _):
            assert store.index_kind == "ivf" and store.verify() == []
            assert store.search(queries, 10) == expected
    shutil.rmtree(moved)  # the copy never depended on the original's lists
    with open_index(copy) as (store, repository):
        assert store.search(queries, 10) == expected
        removed = store.remove_sources(repository.select_source_ids(Selection(path_prefix="img1")))
        assert removed and store.verify() == []
    assert not (tmp_path / "db").exists() and ivfdata.name in {p.name for p in copy.rglob("*.ivfdata")}
