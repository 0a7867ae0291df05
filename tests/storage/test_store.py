"""Real SQLite files and real FAISS indexes: consistency, atomic saves, catch-up, fingerprint refusal."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from storage.errors import FingerprintMismatchError, StorageError
from storage.repository import ImageRecord
from storage.store import Store
from storage.vector_index import VectorIndex

DIM = 8


def fingerprint(key: str = "k1", dim: int = DIM) -> dict[str, object]:
    return {"key": key, "name": f"model-{key}", "revision": None, "weights_sha256": None, "dim": dim,
            "preprocessing_version": "1", "random_weights": False}


def unit_vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def records(n: int, prefix: str = "img") -> list[ImageRecord]:
    return [ImageRecord(archive="/a", path=f"{prefix}{i}.dcm", sha256=f"{prefix}{i:062d}", kind="dicom",
                        patient_id=f"P{i}", modality="CT", labels=["x"], extra={"i": i}) for i in range(n)]


def test_add_search_matches_brute_force(tmp_path: Path):
    with Store.open(tmp_path / "db", create=True) as store:
        store.bind_model(fingerprint())
        vectors = unit_vectors(50)
        ids = store.add(records(50), vectors)
        query = unit_vectors(1, seed=9)
        hits = store.search(query, 10)[0]
        brute = np.argsort(-(vectors @ query[0]))[:10]
        assert [image_id for image_id, _ in hits] == [ids[i] for i in brute]
        assert [s for _, s in hits] == pytest.approx(list((vectors @ query[0])[brute]), abs=1e-5)
        rows = store.repository.get_images(ids[:2])
        assert rows[ids[0]]["patient_id"] == "P0" and rows[ids[0]]["extra"] == {"i": 0}


def test_wal_mode_and_schema_version(tmp_path: Path):
    Store.open(tmp_path / "db", create=True).close()
    with sqlite3.connect(tmp_path / "db" / "medsearch.sqlite") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "1"


def test_reopen_restores_index(tmp_path: Path):
    with Store.open(tmp_path / "db", create=True) as store:
        store.bind_model(fingerprint())
        store.add(records(5), unit_vectors(5))
    with Store.open(tmp_path / "db") as again:
        assert again.ntotal == 5 and again.repository.count_images() == 5


def test_lagging_faiss_is_caught_up_from_embeddings(tmp_path: Path):
    """Crash after the SQLite commit but before the FAISS save: reopening rebuilds what is missing."""
    store = Store.open(tmp_path / "db", create=True)
    store.bind_model(fingerprint())
    store.add(records(3, "a"), unit_vectors(3, 1))
    store.checkpoint()
    store.add(records(4, "b"), unit_vectors(4, 2))  # committed to SQLite, FAISS file not saved
    store.engine.dispose()  # "crash": no close(), no checkpoint
    assert VectorIndex.load(tmp_path / "db" / "index.faiss").ntotal == 3
    with Store.open(tmp_path / "db") as reopened:
        assert reopened.ntotal == 7
        assert sorted(reopened._index.ids().tolist()) == sorted(reopened.repository.embedding_ids().tolist())
    assert VectorIndex.load(tmp_path / "db" / "index.faiss").ntotal == 7  # saved after catch-up


def test_corrupt_faiss_file_is_rebuilt(tmp_path: Path):
    with Store.open(tmp_path / "db", create=True) as store:
        store.bind_model(fingerprint())
        store.add(records(6), unit_vectors(6))
    (tmp_path / "db" / "index.faiss").write_bytes(b"garbage")
    with Store.open(tmp_path / "db") as reopened:
        assert reopened.ntotal == 6


def test_other_model_is_refused(tmp_path: Path):
    with Store.open(tmp_path / "db", create=True) as store:
        store.bind_model(fingerprint("k1"))
        with pytest.raises(FingerprintMismatchError, match="model-k1.*model-k2"):
            store.bind_model(fingerprint("k2", dim=16))


def test_replace_ids_swaps_rows_and_vectors(tmp_path: Path):
    with Store.open(tmp_path / "db", create=True) as store:
        store.bind_model(fingerprint())
        old = store.add(records(2), unit_vectors(2))
        new = store.add(records(1, "img")[:1], unit_vectors(1, 5), replace_ids=[old[0]])
        assert new[0] not in old  # ids are never reused
        assert store.ntotal == 2 and store.repository.count_images() == 2
        assert old[0] not in store.repository.get_images([old[0], new[0]])


def test_atomic_save_leaves_no_temp_files(tmp_path: Path):
    index = VectorIndex.create(DIM)
    index.add(np.arange(3, dtype=np.int64), unit_vectors(3))
    index.save(tmp_path / "index.faiss")
    index.save(tmp_path / "index.faiss")
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]
    assert VectorIndex.load(tmp_path / "index.faiss").ntotal == 3


def test_missing_store_is_a_clear_error(tmp_path: Path):
    with pytest.raises(StorageError, match="medsearch-index run"):
        Store.open(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "medsearch.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="unusable"):
        Store.open(tmp_path / "bad")
