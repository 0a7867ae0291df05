"""A probe's scores kept from the index's id journal equal a full rescore of the embeddings table after
runs, removals (appended to the index log, then compacted: the index saved whole) and a rebuild, in a
reader (the API's read-only store) following a writer. Real SQLite files and FAISS indexes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from storage.opening import open_index
from storage.probe_cache import ProbeScores
from storage.records import Selection
from storage.sql.probes import Probe
from storage.vectors.id_journal import IdJournal
from tests.storage.test_store import DIM, fingerprint, records, unit_vectors


def make_probe() -> Probe:
    rng = np.random.default_rng(7)
    return Probe("p", "k1", "t", datetime(2026, 1, 1, tzinfo=UTC), ["a", "b"],
                 rng.normal(size=(2, DIM)).astype(np.float32) * 3, np.array([0.1, -0.4], dtype=np.float32))


def rescored(repository, probe: Probe, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Every stored vector scored from scratch."""
    ids = repository.embedding_ids()
    found, vectors = repository.get_embeddings(ids.tolist(), DIM)
    return found, probe.probabilities(vectors)[:, probe.label_index(label)].astype(np.float32)


def assert_equal(scores: ProbeScores, repository, probe: Probe) -> None:
    for label in probe.labels:
        ids, values = scores.scores(probe, label)
        want_ids, want = rescored(repository, probe, label)
        assert ids.tolist() == want_ids.tolist()
        np.testing.assert_allclose(values, want, rtol=1e-6, atol=1e-7)
        allowed = want_ids[::3]
        some_ids, some = scores.scores(probe, label, np.concatenate([allowed, [10**9]]))  # an id not indexed
        assert some_ids.tolist() == allowed.tolist()
        np.testing.assert_allclose(some, want[::3], rtol=1e-6, atol=1e-7)
        for threshold in (0.2, 0.5):  # what a probe filter allows, kept until the scores change
            positive_ids, positive = scores.positives(probe, label, threshold)
            assert positive_ids.tolist() == want_ids[want >= threshold].tolist()
            np.testing.assert_allclose(positive, want[want >= threshold], rtol=1e-6, atol=1e-7)


def test_incremental_probe_scores_equal_a_full_rescore_after_runs_and_removals(tmp_path: Path):
    db, probe = tmp_path / "db", make_probe()
    with open_index(db, create=True) as (store, repository):
        store.bind_model(fingerprint())
        store.write(records(40, "a", vectors=unit_vectors(40, 1)))
        store.checkpoint()
        with open_index(db, read_only=True) as (reader, reader_repository):
            scores = ProbeScores(reader, reader_repository)
            assert_equal(scores, reader_repository, probe)
            assert scores.full_scores == 1
            store.write(records(25, "b", vectors=unit_vectors(25, 2)))  # a later run
            store.remove(Selection(patient_id="P3"))  # a patient removed: a3 and b3
            source = repository.select_source_ids(Selection(path_prefix="a5.dcm"))
            store.remove_sources(source)
            store.checkpoint()
            reader.refresh()
            assert_equal(scores, reader_repository, probe)
            store.write(records(5, "c", vectors=unit_vectors(5, 3)))
            store.checkpoint()
            reader.refresh()
            assert_equal(scores, reader_repository, probe)
            assert scores.full_scores == 1  # every change above was applied, none rescored all
            store.write(records(4, "d", vectors=unit_vectors(4, 4)))
            store.build_index("flat")  # saved whole: the reader loads a new index and continues its journal
            assert reader.refresh() is True
            assert_equal(scores, reader_repository, probe)
            assert scores.full_scores == 1


def test_a_reader_too_far_behind_the_journal_starts_again():
    journal = IdJournal(held_ids=10)
    start = journal.mark
    journal.note(np.arange(6), added=True)
    middle = journal.mark
    journal.note(np.arange(6, 12), added=True)  # 12 held > 10: the first change is forgotten
    assert journal.since(start) is None
    assert [c.ids.tolist() for c in journal.since(middle)] == [list(range(6, 12))]
    assert journal.since(journal.mark) == []
    assert IdJournal().since(journal.mark) is None  # another index
