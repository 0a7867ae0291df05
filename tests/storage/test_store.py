"""Real SQLite files and real FAISS indexes: consistency, atomic saves, catch-up, fingerprint refusal."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from storage.errors import FingerprintMismatchError, StorageError
from storage.migrate import INDEX, head
from storage.opening import open_index
from storage.records import ImageRecord, Link, Metadata, NewImage, Selection, SourceRecord
from storage.vectors.index import VectorIndex

DIM = 8


def fingerprint(key: str = "k1", dim: int = DIM) -> dict[str, object]:
    return {"key": key, "name": f"model-{key}", "revision": None, "weights_sha256": None, "dim": dim,
            "preprocessing_version": "1", "random_weights": False}


def unit_vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def records(n: int, prefix: str = "img", vectors: np.ndarray | None = None) -> list[NewImage]:
    vectors = unit_vectors(n) if vectors is None else vectors
    return [NewImage(ImageRecord(f"{prefix}{i:060d}", "dicom", Metadata(patient_id=f"P{i}", modality="CT",
                                                                          labels=["x"], extra={"i": i})),
                     vectors[i], [SourceRecord("/a", f"{prefix}{i}.dcm", 0, f"f{prefix}{i}", 10, 1.0,
                                               patient_id=f"P{i}")]) for i in range(n)]


def test_add_search_matches_brute_force(tmp_path: Path):
    with open_index(tmp_path / "db", create=True) as (store, repository):
        store.bind_model(fingerprint())
        vectors = unit_vectors(50)
        ids = store.write(records(50, vectors=vectors))
        query = unit_vectors(1, seed=9)
        hits = store.search(query, 10)[0]
        brute = np.argsort(-(vectors @ query[0]))[:10]
        assert [image_id for image_id, _ in hits] == [ids[i] for i in brute]
        assert [s for _, s in hits] == pytest.approx(list((vectors @ query[0])[brute]), abs=1e-5)
        images = repository.get_images(ids[:2])
        assert images[ids[0]].metadata.patient_id == "P0" and images[ids[0]].metadata.extra == {"i": 0}


def test_wal_mode_and_schema_version(tmp_path: Path):
    open_index(tmp_path / "db", create=True).close()
    with sqlite3.connect(tmp_path / "db" / "medsearch.sqlite") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == head(INDEX)
        assert len(con.execute("SELECT value FROM meta WHERE key='database_id'").fetchone()[0]) == 32


def test_reopen_restores_index(tmp_path: Path):
    with open_index(tmp_path / "db", create=True) as (store, _):
        store.bind_model(fingerprint())
        store.write(records(5))
    with open_index(tmp_path / "db") as (again, repository):
        assert again.ntotal == 5 and repository.count_images() == 5


def test_lagging_faiss_is_caught_up_from_embeddings(tmp_path: Path):
    """Crash after the SQLite commit but before the FAISS save: reopening rebuilds what is missing."""
    store, repository = open_index(tmp_path / "db", create=True)
    store.bind_model(fingerprint())
    store.write(records(3, "a", vectors=unit_vectors(3, 1)))
    store.checkpoint()
    store.write(records(4, "b", vectors=unit_vectors(4, 2)))  # committed to SQLite, FAISS file not saved
    repository.close()  # "crash": no close(), no checkpoint; the dead process's lock goes with it
    store._lock_file.close()
    assert VectorIndex.load(tmp_path / "db" / "index.faiss")[0].ntotal == 3
    with open_index(tmp_path / "db") as (reopened, repository):
        assert reopened.ntotal == 7
        assert sorted(reopened._index.ids().tolist()) == sorted(repository.embedding_ids().tolist())
    assert VectorIndex.load(tmp_path / "db" / "index.faiss")[0].ntotal == 7  # saved after catch-up


def test_corrupt_faiss_file_is_rebuilt(tmp_path: Path):
    with open_index(tmp_path / "db", create=True) as (store, _):
        store.bind_model(fingerprint())
        store.write(records(6))
    (tmp_path / "db" / "index.faiss").write_bytes(b"garbage")
    with open_index(tmp_path / "db") as (reopened, _):
        assert reopened.ntotal == 6


def test_other_model_is_refused(tmp_path: Path):
    with open_index(tmp_path / "db", create=True) as (store, _):
        store.bind_model(fingerprint("k1"))
        with pytest.raises(FingerprintMismatchError, match="model-k1.*model-k2"):
            store.bind_model(fingerprint("k2", dim=16))


def test_replacing_a_source_swaps_rows_and_vectors(tmp_path: Path):
    with open_index(tmp_path / "db", create=True) as (store, repository):
        store.bind_model(fingerprint())
        old = store.write(records(2))
        source_ids = repository.select_source_ids(Selection(path_prefix="img0.dcm"))
        changed = records(1, "new", vectors=unit_vectors(1, 5))
        new = store.write(changed, remove_source_ids=source_ids)
        assert new[0] not in old  # ids are never reused
        assert store.ntotal == 2 and repository.count_images() == 2
        assert old[0] not in repository.get_images([old[0], new[0]])
        assert store.verify() == []


def test_duplicate_pixels_share_one_image(tmp_path: Path):
    with open_index(tmp_path / "db", create=True) as (store, repository):
        store.bind_model(fingerprint())
        [image_id] = store.write(records(1))
        store.write([], [Link(SourceRecord("/b", "copy.dcm", 0, "fcopy", 10, 1.0, patient_id="P0"), image_id)])
        image = repository.get_images([image_id])[image_id]
        assert [s.path for s in image.sources] == ["img0.dcm", "copy.dcm"]
        assert store.ntotal == 1
        # the image stays while one source remains, and goes with the last
        assert store.remove_sources(repository.select_source_ids(Selection(archive="/a"))) == []
        assert store.ntotal == 1
        assert store.remove_sources(repository.select_source_ids(Selection(archive="/b"))) == [image_id]
        assert store.ntotal == 0 and repository.count_images() == 0


def test_verify_finds_and_repairs(tmp_path: Path):
    with open_index(tmp_path / "db", create=True) as (store, _):
        store.bind_model(fingerprint())
        ids = store.write(records(4))
        assert store.verify() == []
        store._index.remove(np.asarray(ids[:1]))  # the index loses a vector
        store._index.add(np.asarray([999]), unit_vectors(1, 3))  # and gains one nobody knows
        problems = store.verify()
        assert any("missing from the FAISS index" in p for p in problems)
        assert any("no embedding" in p for p in problems)
        store.verify(repair=True)
        assert store.verify() == [] and store.ntotal == 4


def test_stale_temp_file_from_a_killed_save_is_removed(tmp_path: Path):
    with open_index(tmp_path / "db", create=True) as (store, _):
        store.bind_model(fingerprint())
        store.write(records(2))
    (tmp_path / "db" / ".index.faiss.abc.tmp").write_bytes(b"half")
    with open_index(tmp_path / "db") as (store, _):
        assert store.ntotal == 2
    assert not list((tmp_path / "db").glob("*.tmp"))


def test_atomic_save_leaves_no_temp_files(tmp_path: Path):
    index = VectorIndex.create(DIM)
    index.add(np.arange(3, dtype=np.int64), unit_vectors(3))
    index.save(tmp_path / "index.faiss", "owner")
    index.save(tmp_path / "index.faiss", "owner")
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]
    loaded, owner = VectorIndex.load(tmp_path / "index.faiss")
    assert loaded.ntotal == 3 and owner == "owner"


def test_missing_store_is_a_clear_error(tmp_path: Path):
    with pytest.raises(StorageError, match="medsearch-index run"):
        open_index(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "medsearch.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="unusable"):
        open_index(tmp_path / "bad")
