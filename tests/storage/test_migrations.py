"""Schema migrations: an index and an access database written by medsearch before Alembic (the committed
fixture tests/storage/fixtures/schema1, made by commit f415163) open, migrate in place and answer the
same queries with the same metadata, on SQLite and on PostgreSQL; a newer database is refused; the ORM
models and the migrations describe the same schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from core.reports import report_analyzer
from storage.access import AccessBase, AccessStore
from storage.errors import SchemaVersionError
from storage.migrate import ACCESS, INDEX, MIGRATIONS, head
from storage.opening import open_index
from storage.records import ImageFilter, case_key
from storage.reports.documents import FTS_TABLE
from storage.reports.records import ReportMatch
from storage.sql.db import make_engine, sqlite_url
from storage.sql.models import Base
from tests.postgres import needs_postgres

FIXTURE = Path(__file__).parent / "fixtures" / "schema1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
MIXED = {"1": "dicom/a3.dcm", "3": "images/b1.png"}  # old image -> its source from another study / patient


def copy_fixture(folder: Path) -> Path:
    folder.mkdir()
    for name in ("medsearch.sqlite", "index.faiss", "access.sqlite"):
        shutil.copy2(FIXTURE / name, folder / name)
    return folder


def check_migrated(folder: Path, database_url: str | None = None) -> None:
    with open_index(folder, database_url=database_url, reports=report_analyzer()) as (store, repository):
        assert store.verify() == []
        # the report index was backfilled from the stored reports and descriptions
        found = repository.report_matches(ReportMatch(words=("synthet", "nois")))
        assert [image.metadata.report_text for image in repository.get_images(found).values()] == [
            "Synthetic noise."]
        assert len(repository.report_matches(ReportMatch(words=("chest",)))) == sum(
            1 for old in EXPECTED["images"].values() if "CHEST" in (old["study_description"] or ""))
        images = repository.get_images(repository.image_ids().tolist())
        assert len(images) == len(EXPECTED["images"]) + len(MIXED)
        labels = {label for image in images.values() for label in image.metadata.labels}
        assert labels  # the label index (migration 0008) was filled from the stored labels
        for label in labels:
            assert repository.filter_image_ids(ImageFilter(labels=(label.upper(),))).tolist() == sorted(
                i for i, image in images.items() if label in image.metadata.labels)
        by_path = {source.path: image for image in images.values() for source in image.sources}
        for key, old in EXPECTED["images"].items():
            image = images[int(key)]
            assert image.pixel_sha256 == old["pixel_sha256"] and image.kind == old["kind"]
            for name in ("patient_id", "study_uid", "modality", "study_date", "study_description", "labels",
                         "report_text", "extra", "rows", "window", "accession_number"):
                value = getattr(image.metadata, name)
                assert (value.isoformat() if hasattr(value, "isoformat") else value) == old[name], (key, name)
            kept = [s["path"] for s in old["sources"] if s["path"] != MIXED.get(key)]
            assert [s.path for s in image.sources] == kept
        for key, path in MIXED.items():  # split off: their own case, the old vector, no foreign metadata
            split, old = by_path[path], EXPECTED["images"][key]
            source = split.sources[0]
            assert split.id not in map(int, EXPECTED["images"]) and split.pixel_sha256 == old["pixel_sha256"]
            assert (split.metadata.patient_id, split.metadata.study_uid) == (source.patient_id, source.study_uid)
            assert (source.patient_id, source.study_uid) != (old["patient_id"], old["study_uid"])
            assert split.metadata.study_date is None and split.metadata.report_text is None
            assert split.metadata.rows == old["rows"]
            assert source.file_sha256 == ""  # read again (without encoding) by the next run over the archive
            _, vectors = repository.get_embeddings([split.id, int(key)], len(EXPECTED["queries"][0]["vector"]))
            assert np.array_equal(vectors[0], vectors[1])
        old_ids = {int(key) for key in EXPECTED["images"]}
        for query in EXPECTED["queries"]:
            vector = np.asarray([query["vector"]], dtype=np.float32)
            hits = [(i, s) for i, s in store.search(vector, query["k"] + len(MIXED))[0] if i in old_ids]
            assert [i for i, _ in hits[:query["k"]]] == [i for i, _ in query["hits"]]
            assert [s for _, s in hits[:query["k"]]] == pytest.approx([s for _, s in query["hits"]], abs=1e-5)
        for image in images.values():  # every image now holds one case
            assert image.pixel_sha256 and all(
                case_key(s.patient_id, s.study_uid) == case_key(image.metadata.patient_id, image.metadata.study_uid)
                for s in image.sources)


def check_access(store: AccessStore) -> None:
    info = store.authenticate(EXPECTED["key"])
    assert info is not None and info.role == "clinician"
    records = list(store.audit())
    assert records[0]["result_ids"] == [1, 2] and records[0]["client"] is None


def test_schema1_index_migrates_in_place_on_sqlite(tmp_path: Path):
    folder = copy_fixture(tmp_path / "db")
    check_migrated(folder)
    engine = make_engine(sqlite_url(folder / "medsearch.sqlite"))
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == head(INDEX)
    engine.dispose()
    check_migrated(folder)  # opening again changes nothing
    access = AccessStore.open(folder)
    check_access(access)
    access.close()


def copy_rows(source_url: str, target_url: str, tables: list[str]) -> None:
    """The fixture's rows into a database at schema revision 1 (same tables, another server)."""
    source, target = make_engine(source_url), make_engine(target_url)
    meta = sa.MetaData()
    with source.connect() as reading, target.begin() as writing:
        for name in tables:
            table = sa.Table(name, meta, autoload_with=reading)
            rows = [dict(row._mapping) for row in reading.execute(sa.select(table))]
            writing.execute(sa.delete(table))
            if rows:
                writing.execute(table.insert(), rows)
            if "id" in table.c and isinstance(table.c.id.type, sa.Integer) and rows:
                writing.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                                        f"(SELECT max(id) FROM {name}))"))
    source.dispose()
    target.dispose()


def upgrade_to(url: str, revision: str, chain: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS / chain))
    engine = make_engine(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    engine.dispose()


@needs_postgres
def test_schema1_index_migrates_in_place_on_postgres(postgres_url: str, tmp_path: Path):
    upgrade_to(postgres_url, INDEX.baseline, "index")
    copy_rows(sqlite_url(FIXTURE / "medsearch.sqlite"), postgres_url,
              ["meta", "index_manifest", "runs", "images", "run_errors", "sources", "embeddings"])
    folder = tmp_path / "db"
    folder.mkdir()
    check_migrated(folder, postgres_url)
    engine = sa.create_engine(postgres_url)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == head(INDEX)
    engine.dispose()
    upgrade_to(postgres_url, ACCESS.baseline, "access")
    copy_rows(sqlite_url(FIXTURE / "access.sqlite"), postgres_url, ["api_keys", "audit", "access_meta"])
    access = AccessStore(postgres_url)
    check_access(access)
    access.close()


def test_a_newer_database_is_refused_and_left_alone(tmp_path: Path):
    folder = copy_fixture(tmp_path / "db")
    open_index(folder).close()
    engine = make_engine(sqlite_url(folder / "medsearch.sqlite"))
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    before = (folder / "medsearch.sqlite").read_bytes()
    with pytest.raises(SchemaVersionError, match=r"9999_from_the_future.*newer medsearch.*upgrade medsearch"):
        open_index(folder)
    assert (folder / "medsearch.sqlite").read_bytes() == before
    access = make_engine(sqlite_url(folder / "access.sqlite"))
    AccessStore.open(folder).close()
    with access.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version_access SET version_num = 'a9999'"))
    access.dispose()
    with pytest.raises(SchemaVersionError, match="a9999"):
        AccessStore.open(folder)


@pytest.mark.parametrize(("chain", "metadata"), [(INDEX, Base.metadata), (ACCESS, AccessBase.metadata)])
def test_models_and_migrations_describe_the_same_schema(chain, metadata, tmp_path: Path):
    """A change to storage/sql/models.py or storage/access.py without a migration fails here."""
    engine = make_engine(sqlite_url(tmp_path / "new.sqlite"))
    from storage.migrate import upgrade

    upgrade(engine, chain)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": chain.version_table})
        differences = [d for d in compare_metadata(context, metadata) if d[0] != "remove_table"
                       or (d[1].name != chain.version_table and not d[1].name.startswith(FTS_TABLE))]
        # SQLite cannot reflect expression indexes, so autogenerate skips them: compare their names and SQL
        expressions = {index.name: str(index.expressions[0]) for table in metadata.tables.values()
                       for index in table.indexes if any(not isinstance(e, sa.Column) for e in index.expressions)}
        created = dict(connection.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'index'")).all())
    engine.dispose()
    assert differences == []
    assert all(name in created and expression in created[name] for name, expression in expressions.items()), (
        expressions, created)


SCHEMA4 = Path(__file__).parent / "fixtures" / "schema4"  # made by commit 0320d5f: fixtures/make_schema4.py


def test_an_index_from_before_report_search_gets_its_report_index_backfilled(tmp_path: Path):
    """Revision 0004 (written by the code before report search) migrates to the report index in place:
    every image with a report or a description gets the document a fresh analysis gives, nothing is
    re-encoded, and report search answers with assertions."""
    folder = tmp_path / "db"
    folder.mkdir()
    for name in ("medsearch.sqlite", "index.faiss", "index.faiss.delta"):
        shutil.copy2(SCHEMA4 / name, folder / name)
    before = sqlite_rows(folder / "medsearch.sqlite", "SELECT image_id, vector FROM embeddings ORDER BY image_id")
    analyzer = report_analyzer()
    with open_index(folder, reports=analyzer) as (store, repository):
        assert store.verify() == []
        images = repository.get_images(repository.image_ids().tolist())
        documents = repository.get_reports(list(images))
        for image_id, image in images.items():
            fresh = analyzer.analyze(image.metadata.report_text, (image.metadata.study_description,
                                                                  image.metadata.series_description))
            assert fresh is not None  # every fixture image has a description
            assert [tuple(m.__dict__.values()) for m in documents[image_id].mentions] == [tuple(m) for m in
                                                                                        fresh.mentions]
        by_path = {image.sources[0].path: image_id for image_id, image in images.items()}

        def found(text: str, assertions: tuple[str, ...] | None = None) -> set[str]:
            query = analyzer.parse_query(text)
            match = ReportMatch(tuple(tuple(g) for g in analyzer.query_groups(query, assertions)), query.words)
            ids = set(repository.report_matches(match))
            return {path for path, image_id in by_path.items() if image_id in ids}

        assert found("pleural effusion") == {"p1/cxr.dcm"}
        assert found("pleural effusion", ("negated",)) == {"p2/cxr.dcm"}
        assert found("possible pleural effusion") == {"p3/ct.dcm"}
        assert found("infarct", ("historical",)) == {"p4/ct.dcm", "p4/ct2.dcm"}
        assert found("knee") == {"p5/mr.dcm"}  # a description alone is searchable
    assert sqlite_rows(folder / "medsearch.sqlite", "SELECT image_id, vector FROM embeddings ORDER BY image_id") \
        == before  # nothing re-encoded


def sqlite_rows(path: Path, query: str) -> list[tuple]:
    engine = make_engine(sqlite_url(path))
    with engine.connect() as connection:
        rows = [tuple(row) for row in connection.execute(sa.text(query))]
    engine.dispose()
    return rows
