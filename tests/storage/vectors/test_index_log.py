"""Checkpoints append what was added to the index's log (storage.vectors.delta), not the whole index; loading,
readers, torn logs and removals. Real SQLite files and FAISS indexes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from storage.opening import open_index
from storage.records import Selection
from storage.vectors.delta import delta_path
from storage.vectors.index import VectorIndex
from tests.storage.test_store import DIM, fingerprint, records, unit_vectors


def two_checkpoints(store, later: int) -> None:
    """10 vectors saved whole, then `later` more appended to the log."""
    store.bind_model(fingerprint())
    store.write(records(10, "a", vectors=unit_vectors(10, 1)))
    store.checkpoint()
    store.write(records(later, "b", vectors=unit_vectors(later, 2)))
    store.checkpoint()


def test_a_checkpoint_appends_what_was_added_and_leaves_the_saved_index_alone(tmp_path: Path, caplog):
    db = tmp_path / "db"
    with open_index(db, create=True) as (store, _):
        store.bind_model(fingerprint())
        store.write(records(100, "a", vectors=unit_vectors(100, 1)))
        store.checkpoint()  # the first checkpoint saves the index whole
        base = store.index_path.read_bytes()
        log_before = delta_path(store.index_path).stat().st_size
        store.write(records(7, "b", vectors=unit_vectors(7, 2)))
        store.checkpoint()
        assert store.index_path.read_bytes() == base  # not re-serialised
        grown = delta_path(store.index_path).stat().st_size - log_before
        assert 7 * (DIM * 4 + 8) <= grown <= 7 * (DIM * 4 + 8) + 64  # the 7 vectors, their ids, one frame
    with caplog.at_level(logging.WARNING), open_index(db) as (again, repository):
        assert again.ntotal == 107
        assert sorted(again._index.ids().tolist()) == sorted(repository.embedding_ids().tolist())
    assert "caught up" not in caplog.text  # replayed from the log, not from the database
    assert VectorIndex.load(db / "index.faiss")[0].ntotal == 100


def test_a_reader_applies_only_what_the_log_gained(tmp_path: Path):
    db = tmp_path / "db"
    store, repository = open_index(db, create=True)
    try:
        store.bind_model(fingerprint())
        store.write(records(20, "a", vectors=unit_vectors(20, 1)))
        store.checkpoint()
        with open_index(db, read_only=True) as (reader, _):
            assert reader.ntotal == 20 and reader.refresh() is False
            vectors = unit_vectors(5, 3)
            ids = store.write(records(5, "b", vectors=vectors))
            store.checkpoint()
            assert reader.refresh() is True and reader.ntotal == 25
            assert reader.search(vectors[:1], 1)[0][0][0] == ids[0]
            assert reader.refresh() is False
    finally:
        store.close()
        repository.close()


def test_a_torn_log_record_is_caught_up_from_the_database(tmp_path: Path):
    db = tmp_path / "db"
    with open_index(db, create=True) as (store, _):
        two_checkpoints(store, 4)
    log = delta_path(db / "index.faiss")
    log.write_bytes(log.read_bytes()[:-20])  # a crash in the middle of the last append
    with open_index(db) as (again, repository):
        assert again.ntotal == 14
        assert sorted(again._index.ids().tolist()) == sorted(repository.embedding_ids().tolist())


def test_a_log_of_another_base_is_ignored(tmp_path: Path):
    db = tmp_path / "db"
    with open_index(db, create=True) as (store, _):
        two_checkpoints(store, 3)
    stale = delta_path(db / "index.faiss").read_bytes()
    with open_index(db) as (store, _):
        store.build_index("flat")  # a new base: the log starts again
    delta_path(db / "index.faiss").write_bytes(stale)  # as if the old log's replacement was lost
    with open_index(db) as (again, _repository):
        assert again.ntotal == 13 and len(np.unique(again._index.ids())) == 13


def test_removing_a_patient_saves_the_index_whole(tmp_path: Path):
    """No file may keep a removed patient's vectors: the base is rewritten, the log started again."""
    db = tmp_path / "db"
    with open_index(db, create=True) as (store, _):
        two_checkpoints(store, 3)
        store.remove(Selection(patient_id="P1"))
        log_size = delta_path(store.index_path).stat().st_size
    assert VectorIndex.load(db / "index.faiss")[0].ntotal == 11  # P1 of "a" and of "b" gone
    with open_index(db) as (again, _):
        assert again.ntotal == 11
        assert delta_path(again.index_path).stat().st_size == log_size  # nothing logged after the save


def test_a_removal_is_appended_to_the_log_and_readers_apply_it_before_the_files_are_compacted(tmp_path: Path):
    db = tmp_path / "db"
    with open_index(db, create=True) as (store, _):
        two_checkpoints(store, 3)
        base = store.index_path.read_bytes()
        with open_index(db, read_only=True) as (reader, _):
            assert reader.ntotal == 13
            store.remove(Selection(patient_id="P1"), compact=False)
            assert store.index_path.read_bytes() == base  # costs what it removes: the base is not rewritten
            assert reader.refresh() is True and reader.ntotal == 11
            store.compact()
            assert VectorIndex.load(db / "index.faiss")[0].ntotal == 11
            reader.refresh()
            assert reader.ntotal == 11 and reader.verify() == []


def test_a_reader_that_caught_up_from_the_database_does_not_add_logged_vectors_twice(tmp_path: Path):
    db = tmp_path / "db"
    store, repository = open_index(db, create=True)
    try:
        store.bind_model(fingerprint())
        store.write(records(10, "a", vectors=unit_vectors(10, 1)))
        store.checkpoint()
        store.write(records(3, "b", vectors=unit_vectors(3, 2)))  # committed, not yet logged
        with open_index(db, read_only=True) as (reader, _):
            assert reader.ntotal == 13  # caught up from the database at open
            store.write(records(2, "c", vectors=unit_vectors(2, 3)))
            store.checkpoint()  # logs the 3 the reader has and the 2 it has not
            assert reader.refresh() is True
            assert reader.ntotal == 15 and len(np.unique(reader._index.ids())) == 15
    finally:
        store.close()
        repository.close()
