"""All SQL of the index database, one transaction per public method, typed records in and out. `Repository`
is the images, sources and embeddings part; the manifest and facts about the database (storage/sql/meta.py),
runs (storage/sql/runs.py), removals with their exclusions (storage/sql/removal.py), browsing by study and
series with facet counts (storage/sql/browse.py), probes (storage/sql/probes.py) and the report index
(storage/reports/documents.py) are mixed in, so that an entry point builds one repository and passes it where it
is needed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, Select, delete, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import DimensionMismatchError
from storage.records import (
    METADATA_FIELDS,
    SOURCE_FIELDS,
    SOURCE_IDENTIFIERS,
    FileIssue,
    ImageFilter,
    Link,
    Metadata,
    NewImage,
    SourceRecord,
    StoredImage,
    StoredSource,
    UnitRecord,
)
from storage.reports.documents import ReportsMixin
from storage.reports.records import ReportAnalyzer, ReportFields
from storage.sql.browse import BrowseMixin
from storage.sql.db import database_errors, make_engine, session_factory
from storage.sql.filters import filter_query
from storage.sql.labels import LabelsMixin, write_labels
from storage.sql.meta import MetaMixin, utcnow
from storage.sql.models import (
    CommittedUnitRow,
    EmbeddingRow,
    ImageRow,
    RunErrorRow,
    SourceRow,
)
from storage.sql.probes import ProbesMixin
from storage.sql.removal import RemovalMixin
from storage.sql.runs import RunsMixin


def stored_image(row: ImageRow, sources: Sequence[SourceRow]) -> StoredImage:
    metadata = Metadata(**{name: getattr(row, name) for name in METADATA_FIELDS})
    metadata.labels = list(metadata.labels or [])
    metadata.extra = dict(metadata.extra or {})
    return StoredImage(row.id, row.pixel_sha256, row.kind, metadata, tuple(
        StoredSource(s.id, s.archive, s.path, s.frame_index, s.file_sha256,
                     **{name: getattr(s, name) for name in SOURCE_IDENTIFIERS})
        for s in sorted(sources, key=lambda s: s.id)))


class Repository(MetaMixin, RunsMixin, RemovalMixin, BrowseMixin, ProbesMixin, ReportsMixin, LabelsMixin):
    """The index database. Build it at the entry point (`Repository.open`) and pass it in. `reports`
    analyses the report text of images written without their document (None: they stay pending)."""

    def __init__(self, engine: Engine, reports: ReportAnalyzer | None = None) -> None:
        self.engine = engine
        self.reports = reports
        self._sessions: sessionmaker[Session] = session_factory(engine)

    @classmethod
    def open(cls, url: str, reports: ReportAnalyzer | None = None) -> Repository:
        """Open (and migrate in place, backfilling the report index with `reports`) the database at
        `url`. Raises StorageError."""
        from storage.migrate import INDEX, upgrade

        engine = make_engine(url)
        upgrade(engine, INDEX, {"report_analyzer": reports})
        return cls(engine, reports)

    def close(self) -> None:
        self.engine.dispose()

    # -- what is already indexed ----------------------------------------------------------------------
    def images_by_case(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """(pixel hash, case key) -> image id, for the keys that are stored."""
        shas = list({sha for sha, _ in keys})
        if not shas:
            return {}
        wanted = set(keys)
        with database_errors(self.engine), self._sessions() as session:
            rows = session.execute(select(ImageRow.pixel_sha256, ImageRow.case_key, ImageRow.id)
                                   .where(ImageRow.pixel_sha256.in_(shas)))
            return {(sha, case): image_id for sha, case, image_id in rows if (sha, case) in wanted}

    def vectors_by_pixels(self, shas: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        """pixel hash -> the stored vector of an image with those pixels (in any case): pixels encoded
        once are not encoded again for another patient or study."""
        if not shas:
            return {}
        with database_errors(self.engine), self._sessions() as session:
            rows = session.execute(select(ImageRow.pixel_sha256, EmbeddingRow.vector)
                                   .join(EmbeddingRow, EmbeddingRow.image_id == ImageRow.id)
                                   .where(ImageRow.pixel_sha256.in_(list(set(shas)))))
            found = {sha: np.frombuffer(vector, dtype=np.float32) for sha, vector in rows}
        if any(v.size != dim for v in found.values()):
            raise DimensionMismatchError(f"stored vectors are not {dim}-dimensional")
        return found

    # -- writing --------------------------------------------------------------------------------------
    def write_batch(self, new_images: Sequence[NewImage], links: Sequence[Link], fingerprint_key: str,
                    run_id: int | None, remove_source_ids: Sequence[int] = (),
                    touched: Sequence[tuple[int, int | None, float | None]] = (), issues: Sequence[FileIssue] = (),
                    unit: UnitRecord | None = None) -> tuple[list[int], list[int]] | None:
        """One transaction: replace sources (a file read again), insert new images with their vectors and
        sources, link further sources to stored images, update touched sources' size/mtime, record the
        files not indexed, delete images left without any source, and record the work unit. Returns (new
        image ids in order, image ids removed); None, with nothing written, when `unit` was committed
        before (a retried or resumed commit)."""
        now = utcnow()
        with database_errors(self.engine), self._sessions() as session, session.begin():
            if unit is not None:
                if session.get(CommittedUnitRow, unit.unit_id) is not None:
                    return None
                session.add(CommittedUnitRow(unit_id=unit.unit_id, run_id=run_id, committed_at=now, files=unit.files,
                                             frames=unit.frames))
            session.add_all(RunErrorRow(run_id=run_id, archive=i.archive, path=i.path, kind=i.kind, reason=i.reason,
                                        size=i.size, mtime=i.mtime, file_sha256=i.file_sha256) for i in issues
                            if run_id is not None)
            affected = self._drop_sources(session, remove_source_ids)
            survivors = self._images_with_sources(session, affected)  # kept a source of an earlier run
            rows = [self._image_row(n.record.pixel_sha256, n.record.case_key, n.record.kind, n.record.metadata,
                                    run_id, now) for n in new_images]
            session.add_all(rows)
            session.flush()
            write_labels(session, [(row.id, new.record.metadata.labels) for row, new in zip(rows, new_images,
                                                                                           strict=True)])
            self.write_documents(session, [(row, new.record.report) for row, new in zip(rows, new_images, strict=True)])
            for row, new in zip(rows, new_images, strict=True):
                vector = np.ascontiguousarray(new.vector, dtype=np.float32)
                session.add(EmbeddingRow(image_id=row.id, fingerprint_key=fingerprint_key, vector=vector.tobytes()))
                session.add_all(self._source_row(s, row.id, run_id, now) for s in new.sources)
            session.add_all(self._source_row(link.source, link.image_id, run_id, now) for link in links)
            for link in links:  # every earlier source replaced: the image now reads as the new file
                if link.record is not None and link.image_id in affected and link.image_id not in survivors:
                    self._rewrite_metadata(session, link.image_id, link.record.kind, link.record.metadata,
                                           link.record.report)
                    survivors.add(link.image_id)
            for source_id, size, mtime in touched:
                session.execute(update(SourceRow).where(SourceRow.id == source_id).values(size=size, mtime=mtime))
            removed = self._delete_orphans(session, affected)
            self._refresh_identifiers(session, set(affected) - set(removed))
            return [row.id for row in rows], removed

    @staticmethod
    def _image_row(sha: str, case: str, kind: str, metadata: Metadata, run_id: int | None,
                   now: datetime) -> ImageRow:
        return ImageRow(pixel_sha256=sha, case_key=case, kind=kind, run_id=run_id, indexed_at=now,
                        **{name: getattr(metadata, name) for name in METADATA_FIELDS})

    @staticmethod
    def _source_row(source: SourceRecord, image_id: int, run_id: int | None, now: datetime) -> SourceRow:
        return SourceRow(image_id=image_id, **{name: getattr(source, name) for name in SOURCE_FIELDS},
                         run_id=run_id, indexed_at=now)

    def _rewrite_metadata(self, session: Session, image_id: int, kind: str, metadata: Metadata,
                          report: ReportFields | None) -> None:
        session.execute(update(ImageRow).where(ImageRow.id == image_id)
                        .values(kind=kind, **{name: getattr(metadata, name) for name in METADATA_FIELDS}))
        write_labels(session, [(image_id, metadata.labels)], replace=True)
        row = session.get(ImageRow, image_id, populate_existing=True)
        if row is not None:
            self.write_documents(session, [(row, report)], replace=True)

    @staticmethod
    def _drop_sources(session: Session, source_ids: Sequence[int]) -> set[int]:
        """Delete sources; returns the ids of the images they belonged to."""
        if not source_ids:
            return set()
        ids = list(source_ids)
        images = set(session.scalars(select(SourceRow.image_id).where(SourceRow.id.in_(ids))))
        session.execute(delete(SourceRow).where(SourceRow.id.in_(ids)))
        return images

    @staticmethod
    def _images_with_sources(session: Session, image_ids: set[int]) -> set[int]:
        if not image_ids:
            return set()
        return set(session.scalars(select(SourceRow.image_id).where(SourceRow.image_id.in_(list(image_ids)))))

    def _delete_orphans(self, session: Session, image_ids: set[int]) -> list[int]:
        orphans = sorted(image_ids - self._images_with_sources(session, image_ids))
        if orphans:
            session.execute(delete(EmbeddingRow).where(EmbeddingRow.image_id.in_(orphans)))
            session.execute(delete(ImageRow).where(ImageRow.id.in_(orphans)))
        return orphans

    @staticmethod
    def _refresh_identifiers(session: Session, image_ids: set[int]) -> None:
        """An image keeps the file identifiers of its first remaining source (a removed file leaves none)."""
        for image_id in image_ids:
            first = session.scalars(select(SourceRow).where(SourceRow.image_id == image_id)
                                    .order_by(SourceRow.id).limit(1)).first()
            if first is not None:
                session.execute(update(ImageRow).where(ImageRow.id == image_id).values(
                    **{name: getattr(first, name) for name in SOURCE_IDENTIFIERS}))

    def remove_sources(self, source_ids: Sequence[int]) -> list[int]:
        """Delete sources; images left without any source go too. Returns the image ids removed."""
        with database_errors(self.engine), self._sessions() as session, session.begin():
            affected = self._drop_sources(session, source_ids)
            removed = self._delete_orphans(session, affected)
            self._refresh_identifiers(session, affected - set(removed))
            return removed

    def committed_unit(self, unit_id: str) -> bool:
        with database_errors(self.engine), self._sessions() as session:
            return session.get(CommittedUnitRow, unit_id) is not None

    def delete_images(self, ids: Sequence[int]) -> None:
        with database_errors(self.engine), self._sessions() as session, session.begin():
            session.execute(delete(EmbeddingRow).where(EmbeddingRow.image_id.in_(list(ids))))
            session.execute(delete(SourceRow).where(SourceRow.image_id.in_(list(ids))))
            session.execute(delete(ImageRow).where(ImageRow.id.in_(list(ids))))

    # -- reading --------------------------------------------------------------------------------------
    def get_images(self, ids: Sequence[int]) -> dict[int, StoredImage]:
        """id -> the stored image with its sources, for the ids that exist."""
        if not len(ids):
            return {}
        wanted = [int(i) for i in ids]
        with database_errors(self.engine), self._sessions() as session:
            rows = session.scalars(select(ImageRow).where(ImageRow.id.in_(wanted))).all()
            sources: dict[int, list[SourceRow]] = {}
            for source in session.scalars(select(SourceRow).where(SourceRow.image_id.in_(wanted))):
                sources.setdefault(source.image_id, []).append(source)
            return {row.id: stored_image(row, sources.get(row.id, [])) for row in rows}

    def filter_image_ids(self, where: ImageFilter) -> np.ndarray:
        """Ids of the images matching `where`, ascending."""
        return self._ids(filter_query(where))

    def count_images(self) -> int:
        with database_errors(self.engine), self._sessions() as session:
            return int(session.scalar(select(func.count()).select_from(ImageRow)) or 0)

    def count_sources(self) -> int:
        with database_errors(self.engine), self._sessions() as session:
            return int(session.scalar(select(func.count()).select_from(SourceRow)) or 0)

    def image_ids(self) -> np.ndarray:
        return self._ids("SELECT id FROM images ORDER BY id")

    def images_without_sources(self) -> list[int]:
        with database_errors(self.engine), self._sessions() as session:
            used = select(SourceRow.image_id)
            return list(session.scalars(select(ImageRow.id).where(ImageRow.id.not_in(used))))

    def embedding_ids(self) -> np.ndarray:
        return self._ids("SELECT image_id FROM embeddings ORDER BY image_id")

    def _ids(self, query: str | Select[Any]) -> np.ndarray:
        """One column of ids as the driver's cursor returns them: 3x faster than rows through the ORM where
        every id of a table is read (start-up's reconcile) or a filter's many matches are listed."""
        with database_errors(self.engine), self.engine.connect() as connection:
            result = connection.execute(text(query) if isinstance(query, str) else query)
            rows = result.cursor.fetchall() if result.cursor is not None else []
        return np.asarray(rows, dtype=np.int64).reshape(-1)

    def get_embeddings(self, ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids found, vectors) for `ids`, in ascending id order. Read through the driver's cursor: a
        compressed index re-ranks its candidates from here, and rows through the ORM cost twice as
        much (1,600 vectors of 1152-d: 23.5 -> 10.7 ms)."""
        return self._embedding_rows(select(EmbeddingRow.image_id, EmbeddingRow.vector)
                                    .where(EmbeddingRow.image_id.in_([int(i) for i in ids]))
                                    .order_by(EmbeddingRow.image_id), dim)

    def iter_embeddings(self, dim: int, batch: int = 10_000, start_after: int = -1,
                        stop_before: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in ascending id order, `batch` at a time: every one, or those with
        start_after < id < stop_before."""
        last = start_after
        while True:
            query = select(EmbeddingRow.image_id, EmbeddingRow.vector).where(EmbeddingRow.image_id > last)
            if stop_before is not None:
                query = query.where(EmbeddingRow.image_id < stop_before)
            ids, vectors = self._embedding_rows(query.order_by(EmbeddingRow.image_id).limit(batch), dim)
            if not len(ids):
                return
            last = int(ids[-1])
            yield ids, vectors

    def _embedding_rows(self, query: Select[int, bytes], dim: int) -> tuple[np.ndarray, np.ndarray]:
        with database_errors(self.engine), self.engine.connect() as connection:
            result = connection.execute(query)
            rows = result.cursor.fetchall() if result.cursor is not None else []
        return self._unpack(rows, dim)

    @staticmethod
    def _unpack(rows: Sequence[Any], dim: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        if vectors.size != len(rows) * dim:
            raise DimensionMismatchError(f"stored vectors are not {dim}-dimensional")
        return ids, vectors.reshape(len(rows), dim)
