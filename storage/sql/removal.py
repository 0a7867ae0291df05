"""Removals that leave no trace and stick (part of storage.sql.repository.Repository).

`remove(selection)` deletes, in one transaction, the selected sources, the images left without any
(with their vectors), the skipped/failed records of the same files and, for a whole archive, its runs;
it then records an exclusion so that later runs do not index the same patient, study, files or
archive again. An exclusion holds an HMAC of the identifier under a key kept in the database, never
the identifier: after `compact()` (SQLite deletes securely, then the write-ahead log is truncated) a
search of the database files for a removed patient's identifiers finds nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Engine, delete, select, tuple_, update
from sqlalchemy.orm import Session, sessionmaker

from storage.records import Exclusion, RemovalPreview, Selection
from storage.sql.db import database_errors
from storage.sql.meta import utcnow
from storage.sql.models import EmbeddingRow, ExclusionRow, ImageRow, RunErrorRow, RunRow, SourceRow

EXCLUSION_KEY = "exclusion_key"
ANY_ARCHIVE = "*"


def exclusion_digest(key: str, kind: str, *parts: str) -> str:
    return hmac.new(key.encode(), "\0".join((kind, *parts)).encode(), hashlib.sha256).hexdigest()


@dataclass
class ExclusionMatcher:
    """Tells whether a file about to be indexed falls under an exclusion (and which one)."""

    key: str
    ids: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, digest) -> exclusion id

    def _find(self, kind: str, *parts: str) -> int | None:
        return self.ids.get((kind, exclusion_digest(self.key, kind, *parts))) if self.ids else None

    def archive(self, archive: str) -> int | None:
        return self._find("archive", archive)

    def file(self, archive: str, path: str, patient_id: str | None, study_uid: str | None) -> int | None:
        found = self._find("path", archive, path)
        for scope in (archive, ANY_ARCHIVE):
            if found is None and patient_id is not None:
                found = self._find("patient", scope, patient_id)
            if found is None and study_uid is not None:
                found = self._find("study", scope, study_uid)
        return found


class RemovalMixin:
    engine: Engine
    _sessions: sessionmaker[Session]

    def secret(self, key: str) -> str:  # provided by Repository
        raise NotImplementedError

    @staticmethod
    def _selected(session: Session, selection: Selection) -> list[SourceRow]:
        query = select(SourceRow)
        if selection.archive is not None:
            query = query.where(SourceRow.archive == selection.archive)
        if selection.path_prefix is not None:
            query = query.where(SourceRow.path.startswith(selection.path_prefix, autoescape=True))
        if selection.patient_id is not None:
            query = query.where(SourceRow.patient_id == selection.patient_id)
        if selection.study_uid is not None:
            query = query.where(SourceRow.study_uid == selection.study_uid)
        return list(session.scalars(query.order_by(SourceRow.id)))

    @staticmethod
    def _issue_filter(selection: Selection, files: set[tuple[str, str]]) -> ColumnElement[bool] | None:
        whole_archive = selection.archive is not None and selection == Selection(archive=selection.archive)
        if whole_archive:
            return RunErrorRow.archive == selection.archive
        return tuple_(RunErrorRow.archive, RunErrorRow.path).in_(sorted(files)) if files else None

    def select_source_ids(self, selection: Selection) -> list[int]:
        with database_errors(self.engine), self._sessions() as session:
            return [source.id for source in self._selected(session, selection)]

    def _preview(self, session: Session, selection: Selection) -> tuple[RemovalPreview, list[SourceRow], list[int]]:
        sources = self._selected(session, selection)
        chosen = {s.id for s in sources}
        image_ids = {s.image_id for s in sources}
        remaining = set(session.scalars(select(SourceRow.image_id).where(
            SourceRow.image_id.in_(list(image_ids)), SourceRow.id.not_in(list(chosen))))) if image_ids else set()
        orphans = sorted(image_ids - remaining)
        rows = session.execute(select(ImageRow.patient_id, ImageRow.study_uid)
                               .where(ImageRow.id.in_(orphans))).all() if orphans else []
        condition = self._issue_filter(selection, {(s.archive, s.path) for s in sources})
        issues = len(session.scalars(select(RunErrorRow.id).where(condition)).all()) if condition is not None else 0
        preview = RemovalPreview(sources=len(sources), images=len(orphans),
                                 by_patient=dict(Counter(p or "(none)" for p, _ in rows)),
                                 by_study=dict(Counter(s or "(none)" for _, s in rows)), issues=issues)
        return preview, sources, orphans

    def preview_removal(self, selection: Selection) -> RemovalPreview:
        with database_errors(self.engine), self._sessions() as session:
            return self._preview(session, selection)[0]

    def remove(self, selection: Selection, note: str | None = None) -> tuple[RemovalPreview, list[int]]:
        """Remove what `selection` names and exclude it from later runs. Returns what was removed and the
        image ids whose vectors the caller must drop from the vector index."""
        if selection.empty:
            raise ValueError("an empty selection would remove everything")
        key = self.secret(EXCLUSION_KEY)
        with database_errors(self.engine), self._sessions() as session, session.begin():
            preview, sources, orphans = self._preview(session, selection)
            files = {(s.archive, s.path) for s in sources}
            condition = self._issue_filter(selection, files)
            affected = {s.image_id for s in sources}
            ids = [s.id for s in sources]
            for start in range(0, len(ids), 500):
                session.execute(delete(SourceRow).where(SourceRow.id.in_(ids[start:start + 500])))
            if orphans:
                session.execute(delete(EmbeddingRow).where(EmbeddingRow.image_id.in_(orphans)))
                session.execute(delete(ImageRow).where(ImageRow.id.in_(orphans)))
            self._refresh_identifiers(session, affected - set(orphans))
            if condition is not None:
                session.execute(delete(RunErrorRow).where(condition))
            if selection == Selection(archive=selection.archive):
                runs = list(session.scalars(select(RunRow.id).where(RunRow.archive == selection.archive)))
                if runs:
                    session.execute(update(ImageRow).where(ImageRow.run_id.in_(runs)).values(run_id=None))
                    session.execute(update(SourceRow).where(SourceRow.run_id.in_(runs)).values(run_id=None))
                    session.execute(delete(RunErrorRow).where(RunErrorRow.run_id.in_(runs)))
                    session.execute(delete(RunRow).where(RunRow.id.in_(runs)))
            for kind, parts in self._exclusions_for(selection, files):
                self._add_exclusion(session, kind, exclusion_digest(key, kind, *parts), preview, note)
        return preview, orphans

    @staticmethod
    def _exclusions_for(selection: Selection, files: set[tuple[str, str]]) -> list[tuple[str, tuple[str, ...]]]:
        scope = selection.archive or ANY_ARCHIVE
        if selection.path_prefix is not None:
            return [("path", file) for file in sorted(files)]
        found: list[tuple[str, tuple[str, ...]]] = []
        if selection.patient_id is not None:
            found.append(("patient", (scope, selection.patient_id)))
        if selection.study_uid is not None:
            found.append(("study", (scope, selection.study_uid)))
        if not found and selection.archive is not None:
            found = [("archive", (selection.archive,))]
        return found

    @staticmethod
    def _add_exclusion(session: Session, kind: str, digest: str, preview: RemovalPreview, note: str | None) -> None:
        row = session.scalars(select(ExclusionRow).where(ExclusionRow.kind == kind,
                                                         ExclusionRow.digest == digest)).first()
        if row is None:
            session.add(ExclusionRow(kind=kind, digest=digest, created_at=utcnow(), images=preview.images,
                                     sources=preview.sources, note=note))
        else:
            row.images += preview.images
            row.sources += preview.sources

    @staticmethod
    def _refresh_identifiers(session: Session, image_ids: set[int]) -> None:  # provided by Repository
        raise NotImplementedError

    def exclusions(self) -> list[Exclusion]:
        with database_errors(self.engine), self._sessions() as session:
            return [Exclusion(r.id, r.kind, r.digest, r.created_at, r.images, r.sources, r.note)
                    for r in session.scalars(select(ExclusionRow).order_by(ExclusionRow.id))]

    def lift_exclusion(self, exclusion_id: int) -> bool:
        """Undo an exclusion: later runs index its files again (every file skipped as excluded is read
        again, and skipped again if another exclusion still holds it). False if there is no such exclusion."""
        with database_errors(self.engine), self._sessions() as session, session.begin():
            found = session.get(ExclusionRow, exclusion_id)
            if found is not None:
                session.delete(found)
                session.execute(delete(RunErrorRow).where(RunErrorRow.kind == "excluded"))
            return found is not None

    def exclusion_matcher(self) -> ExclusionMatcher:
        with database_errors(self.engine), self._sessions() as session:
            ids = {(r.kind, r.digest): r.id for r in session.scalars(select(ExclusionRow))}
        return ExclusionMatcher(self.secret(EXCLUSION_KEY) if ids else "", ids)

    def compact(self) -> None:
        """After a removal: fold the write-ahead log into the database file and truncate it, so that the
        old pages of deleted rows do not linger in it (SQLite; PostgreSQL keeps dead rows until VACUUM)."""
        if self.engine.dialect.name == "sqlite":
            with database_errors(self.engine), self.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
