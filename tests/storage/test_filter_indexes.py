"""Filters read indexes (migration 0008): every filter answers what its definition says, computed here
row by row in Python, on SQLite and PostgreSQL, also after rewritten metadata and removals; a selective
filter's SQLite plan searches an index instead of scanning `images`; `verify` finds a label index that
differs from the labels and `--repair` mends it."""

from __future__ import annotations

import datetime as dt
import itertools
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.dialects import sqlite

from storage.opening import open_index
from storage.records import ImageFilter, ImageRecord, Link, Metadata, NewImage, Selection, SourceRecord, StoredImage
from storage.sql.filters import filter_query
from tests.postgres import needs_postgres
from tests.storage.test_store import fingerprint, unit_vectors

MODALITIES = ["CT", "ct", "MR", "CR", None]
LABELS = [[], ["Effusion"], ["effusion", "nodule"], ["NODULE"], ["fracture", "Effusion"], ["Zoë"]]
PARTS = ["CHEST", "chest", "KNEE", None]


def image(i: int) -> NewImage:
    metadata = Metadata(patient_id=f"P{i % 7}", modality=MODALITIES[i % 5], body_part=PARTS[i % 4],
                        labels=list(LABELS[i % 6]), study_date=dt.date(2010, 1, 1) + dt.timedelta(days=37 * i)
                        if i % 9 else None)
    return NewImage(ImageRecord(f"{i:064x}", "dicom", metadata), unit_vectors(1, seed=i)[0],
                    [SourceRecord("/a", f"{i}.dcm", 0, f"f{i}", 10, 1.0, patient_id=metadata.patient_id)])


def matches(where: ImageFilter, found: StoredImage) -> bool:
    """The filter's definition, row by row: case does not count for codes and labels; all labels asked."""
    m = found.metadata
    return ((not where.modality or (m.modality or "").upper() in {v.upper() for v in where.modality})
            and (not where.body_part or (m.body_part or "").upper() in {v.upper() for v in where.body_part})
            and (where.study_date_from is None or (m.study_date is not None and m.study_date >= where.study_date_from))
            and (where.study_date_to is None or (m.study_date is not None and m.study_date <= where.study_date_to))
            and all(label.lower() in {held.lower() for held in m.labels} for label in where.labels))


FILTERS = [ImageFilter(modality=modality, labels=labels, study_date_from=start, study_date_to=end, body_part=part)
           for modality, labels, (start, end), part in itertools.product(
               [(), ("ct",), ("MR", "CR")], [(), ("EFFUSION",), ("effusion", "Nodule"), ("zoë",), ("none",)],
               [(None, None), (dt.date(2012, 1, 1), None), (dt.date(2011, 6, 1), dt.date(2013, 2, 1))],
               [(), ("Chest",)])]


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=needs_postgres)])
def test_every_filter_answers_its_definition_and_follows_rewrites_and_removals(tmp_path: Path, database: str,
                                                                               request: pytest.FixtureRequest):
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    with open_index(tmp_path / "db", create=True, database_url=url) as (store, repository):
        store.bind_model(fingerprint())
        ids = store.write([image(i) for i in range(120)])

        def check() -> None:
            images = repository.get_images(repository.image_ids().tolist())
            for where in FILTERS:
                want = sorted(i for i, found in images.items() if matches(where, found))
                assert repository.filter_image_ids(where).tolist() == want, where
                assert repository.count_matching(where, ()) == len(want), where

        check()
        # a file read again whose header changed: its image now carries the new file's labels
        old = repository.get_images([ids[1]])[ids[1]]
        changed = ImageRecord(old.pixel_sha256, "dicom", Metadata(patient_id=old.metadata.patient_id,
                                                                  modality="MR", labels=["Fracture"]))
        source = SourceRecord("/a", "1-again.dcm", 0, "g1", 10, 2.0, patient_id=old.metadata.patient_id)
        store.write([], [Link(source, ids[1], changed)], remove_source_ids=[old.sources[0].id])
        assert repository.get_images([ids[1]])[ids[1]].metadata.labels == ["Fracture"]
        assert ids[1] in repository.filter_image_ids(ImageFilter(labels=("fracture",))).tolist()
        assert ids[1] not in repository.filter_image_ids(ImageFilter(labels=("effusion",))).tolist()
        check()
        store.remove(Selection(patient_id="P3"), "test")
        check()
        assert store.verify() == []  # among them: no label row left by the removed patient's images


def explain(database: Path, where: ImageFilter) -> str:
    compiled = filter_query(where).compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
    with sqlite3.connect(database) as connection:
        return " | ".join(row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {compiled}"))


@pytest.mark.parametrize("where", [ImageFilter(labels=("nodule",)), ImageFilter(modality=("us",)),
                                   ImageFilter(body_part=("knee",)),
                                   ImageFilter(study_date_from=dt.date(2015, 3, 1), study_date_to=dt.date(2015, 3, 31)),
                                   ImageFilter(modality=("MR",), study_date_from=dt.date(2019, 1, 1),
                                               labels=("fracture",))],
                         ids=["label", "modality", "body part", "date range", "combined"])
def test_a_selective_filter_searches_an_index_instead_of_scanning_the_images(tmp_path: Path, where: ImageFilter):
    with open_index(tmp_path / "db", create=True) as (store, _):
        store.bind_model(fingerprint())
        store.write([image(i) for i in range(30)])
    plan = explain(tmp_path / "db" / "medsearch.sqlite", where)
    assert "SCAN images" not in plan and "USING" in plan, plan


def test_verify_finds_a_label_index_unlike_the_labels_and_repair_mends_it(tmp_path: Path):
    with open_index(tmp_path / "db", create=True) as (store, repository):
        store.bind_model(fingerprint())
        ids = store.write([image(i) for i in range(12)])
    with sqlite3.connect(tmp_path / "db" / "medsearch.sqlite") as connection:
        connection.execute("DELETE FROM image_labels WHERE image_id = ?", (ids[1],))
        connection.execute("INSERT INTO image_labels VALUES (?, 'stray')", (ids[3],))
    with open_index(tmp_path / "db") as (store, repository):
        problems = store.verify()
        assert problems == [f"2 images whose label index (image_labels) differs from their labels, e.g. id {ids[1]}"]
        assert repository.filter_image_ids(ImageFilter(labels=("stray",))).tolist() == [ids[3]]
        assert store.verify(repair=True) == problems
        assert store.verify() == []
        assert repository.filter_image_ids(ImageFilter(labels=("stray",))).size == 0
        assert ids[1] in repository.filter_image_ids(ImageFilter(labels=("effusion",))).tolist()
        assert np.array_equal(repository.filter_image_ids(ImageFilter(labels=("effusion",))),
                              np.array([i for i, n in zip(ids, range(12), strict=True) if n % 6 in (1, 2, 4)]))
