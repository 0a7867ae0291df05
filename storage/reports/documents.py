"""The report index (part of storage.sql.repository.Repository): one document per image with report text or
a description, in the database's own full-text engine: SQLite FTS5, or PostgreSQL's tsvector with a GIN
index (migration 0005 creates either), both ranked by the same BM25 (storage.reports.rank).

Documents are written in the transactions that write their images (`write_documents`), and leave with
them (a foreign key that cascades; FTS5 follows through triggers). After a removal `optimize` merges
FTS5's segments, so that no old segment keeps a removed report's words (SQLite's secure delete then
overwrites the freed pages). Queries arrive as ReportMatch: tokens of letters and digits only, quoted
for FTS5 and given to PostgreSQL as lexemes, so that no user text ever reaches an engine as syntax.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from sqlalchemy import Engine, and_, delete, func, literal_column, or_, select, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import StorageError
from storage.reports.postings import postings_problems, rebuild_postings, write_postings
from storage.reports.rank import (
    FTS_TABLE,
    fts5_query,
    phrases,
    postgres_ranking,
    postgres_totals_problem,
    recount_postgres_totals,
    sqlite_ranking,
    tsquery,
)
from storage.reports.records import (
    ReportAnalyzer,
    ReportFields,
    ReportMatch,
    ReportMention,
    ReportRanking,
    StoredReport,
)
from storage.reports.topk import topk_ranking
from storage.sql.db import database_errors
from storage.sql.models import ImageRow, ReportDocumentRow

TOKEN = re.compile(r"^[a-z0-9]+$")


def has_text(row: ImageRow) -> bool:
    return bool(row.report_text or row.study_description or row.series_description)


TEXT_CONDITION = or_(func.coalesce(ImageRow.report_text, "") != "", func.coalesce(ImageRow.study_description, "") != "",
                     func.coalesce(ImageRow.series_description, "") != "")


def _tokens(match: ReportMatch) -> Iterable[str]:
    return (token for token, _ in phrases(match))


def _answerable(session: Session, match: ReportMatch) -> ReportMatch:
    """`match` as the stored documents answer it: its folded form where every document was made by the
    analysis that folded it (two seeks of the analyzer's index, migration 0007), else as it is."""
    if match.folded is None or match.folded == match.groups:  # nothing folded: no question to ask
        return match
    other = or_(select(ReportDocumentRow.image_id).where(ReportDocumentRow.analyzer < match.folded_by).exists(),
                select(ReportDocumentRow.image_id).where(ReportDocumentRow.analyzer > match.folded_by).exists())
    return match if session.scalar(select(other)) else ReportMatch(match.folded, match.words)


def _check(match: ReportMatch) -> None:
    """Both forms of `match` (as given and folded) are tokens of letters and digits, no group empty."""
    forms = [match] if match.folded is None else [match, ReportMatch(match.folded, match.words)]
    bad = [t for form in forms for t in _tokens(form) if not TOKEN.match(t)]
    if bad or any(not group for form in forms for group in form.groups):
        raise ValueError(f"report query tokens must be letters and digits (got {bad[:3]})")


class ReportsMixin:
    engine: Engine
    _sessions: sessionmaker[Session]
    reports: ReportAnalyzer | None

    # -- writing (inside the repository's transactions) ------------------------------------------------
    def _document(self, row: ImageRow, given: ReportFields | None) -> ReportDocumentRow | None:
        if not has_text(row):
            return None
        found = given
        if found is None:
            if self.reports is None:
                return None  # pending: backfill_reports writes it later
            found = self.reports.analyze(row.report_text, (row.study_description, row.series_description))
        if found is None:
            return None
        return ReportDocumentRow(image_id=row.id, body=found.body, concepts=found.concepts,
                                 mentions=[list(m) for m in found.mentions], has_report=found.has_report,
                                 analyzer=found.analyzer)

    def write_documents(self, session: Session, rows: Sequence[tuple[ImageRow, ReportFields | None]],
                        replace: bool = False) -> None:
        """Documents of freshly flushed (or, `replace`, rewritten) image rows, in the caller's transaction."""
        if replace and rows:
            session.execute(delete(ReportDocumentRow).where(ReportDocumentRow.image_id.in_([r.id for r, _ in rows])))
        documents = [doc for doc in (self._document(row, given) for row, given in rows) if doc is not None]
        session.add_all(documents)
        if documents:
            session.flush()
            write_postings(session.connection(), [(d.image_id, d.body, d.concepts) for d in documents])

    # -- keeping it complete -----------------------------------------------------------------------------
    def reports_pending(self) -> int:
        """Images with report text or a description but no document (written without an analyzer)."""
        with database_errors(self.engine), self._sessions() as session:
            return int(session.scalar(select(func.count()).select_from(ImageRow).outerjoin(
                ReportDocumentRow, ReportDocumentRow.image_id == ImageRow.id).where(
                ReportDocumentRow.image_id.is_(None), TEXT_CONDITION)) or 0)

    def reports_stale(self, fingerprint: str) -> int:
        """Documents another analysis (another vocabulary, other rules) made."""
        with database_errors(self.engine), self._sessions() as session:
            return int(session.scalar(select(func.count()).where(ReportDocumentRow.analyzer != fingerprint)) or 0)

    def backfill_reports(self, stale: bool = False, batch: int = 1000) -> int:
        """Write the pending documents (and with `stale`, rewrite those another analysis made), `batch`
        images a transaction, so that a killed backfill keeps what it did. Returns the images done."""
        if self.reports is None:
            raise StorageError("no report analyzer: the report index cannot be filled")
        done, last = 0, -1
        fingerprint = self.reports.fingerprint
        while True:
            missing = ReportDocumentRow.image_id.is_(None)
            condition = or_(missing, ReportDocumentRow.analyzer != fingerprint) if stale else missing
            with database_errors(self.engine), self._sessions() as session, session.begin():
                rows = session.scalars(select(ImageRow).outerjoin(
                    ReportDocumentRow, ReportDocumentRow.image_id == ImageRow.id).where(
                    ImageRow.id > last, TEXT_CONDITION, condition).order_by(ImageRow.id).limit(batch)).all()
                if not rows:
                    return done
                last = rows[-1].id
                self.write_documents(session, [(row, None) for row in rows], replace=stale)
            done += len(rows)

    def report_problems(self) -> list[str]:
        """What `verify` reports about the report index."""
        found = []
        pending = self.reports_pending()
        if pending:
            found.append(f"{pending} images with report text or a description are not in the report index, "
                         "e.g. written without the report analyzer (verify --repair fills them)")
        with database_errors(self.engine), self._sessions() as session:
            textless = session.scalar(select(func.count()).select_from(ReportDocumentRow).join(
                ImageRow, ImageRow.id == ReportDocumentRow.image_id).where(~TEXT_CONDITION)) or 0
            if textless:
                found.append(f"{textless} report index documents of images without text")
            if self.engine.dialect.name == "sqlite":
                try:  # FTS5 compares its index with the documents it was built from
                    session.execute(text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rank) VALUES ('integrity-check', 1)"))
                except DatabaseError as exc:  # a mismatch reads as a corrupt virtual table
                    session.rollback()
                    found.append(f"the full-text index disagrees with the report documents ({exc.orig}): verify "
                                 "--repair rebuilds it")
            elif self.engine.dialect.name == "postgresql" and (problem := postgres_totals_problem(session)):
                found.append(problem)
            found.extend(postings_problems(session.connection()))
        if self.reports is not None:
            stale = self.reports_stale(self.reports.fingerprint)
            if stale:
                found.append(f"{stale} report documents were made with another vocabulary or rules (verify --repair "
                             "analyses them again)")
        return found

    def rebuild_report_index(self) -> None:
        """FTS5 rebuilt from the documents; PostgreSQL's totals recounted (its tsvector is generated); the
        postings written again."""
        with database_errors(self.engine), self._sessions() as session, session.begin():
            if self.engine.dialect.name == "sqlite":
                session.execute(text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')"))
            elif self.engine.dialect.name == "postgresql":
                recount_postgres_totals(session)
            rebuild_postings(session.connection())

    def optimize_reports(self) -> None:
        """Merge FTS5's segments into one, so that deleted documents' words are gone from every page."""
        if self.engine.dialect.name == "sqlite":
            with database_errors(self.engine), self._sessions() as session, session.begin():
                session.execute(text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('optimize')"))

    # -- reading -----------------------------------------------------------------------------------------
    def has_reports(self) -> bool:
        with database_errors(self.engine), self._sessions() as session:
            return session.scalar(select(ReportDocumentRow.image_id).where(ReportDocumentRow.has_report).limit(1)) \
                is not None

    def rank_reports(self, match: ReportMatch, limit: int) -> ReportRanking:
        """The best `limit` matching images by BM25, the same in both databases (storage.reports.rank)."""
        _check(match)
        if match.empty:
            return ReportRanking((), (), True)
        with database_errors(self.engine), self._sessions() as session:
            match = _answerable(session, match)
            scored, by = topk_ranking(session, match, limit), "postings"
            if scored is None:  # several groups, words, or narrower terms as common as the broad one
                scored, by = (sqlite_ranking if self.engine.dialect.name == "sqlite" else postgres_ranking)(
                    session, match, limit), "engine"
        ids, scores = zip(*scored, strict=True) if scored else ((), ())
        return ReportRanking(tuple(ids), tuple(scores), len(scored) < limit, by)

    def report_matches(self, match: ReportMatch) -> list[int]:
        """Every matching image id, ascending (for totals and facets: no ranking)."""
        _check(match)
        if match.empty:
            return []
        with database_errors(self.engine), self._sessions() as session:
            match = _answerable(session, match)
            if self.engine.dialect.name == "sqlite":
                rows = session.execute(text(f"SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :q"),
                                       {"q": fts5_query(match)}).scalars().all()
            else:
                query = func.to_tsquery(literal_column("'simple'"), tsquery(match))
                rows = session.scalars(select(ReportDocumentRow.image_id).where(
                    literal_column("document").op("@@")(query))).all()
        return sorted(int(i) for i in rows)

    def get_reports(self, ids: Sequence[int]) -> dict[int, StoredReport]:
        """image id -> its document's mentions, for the ids that have one."""
        if not ids:
            return {}
        with database_errors(self.engine), self._sessions() as session:
            rows = session.execute(select(ReportDocumentRow.image_id, ReportDocumentRow.mentions,
                                          ReportDocumentRow.has_report, ReportDocumentRow.analyzer).where(
                and_(ReportDocumentRow.image_id.in_([int(i) for i in ids])))).all()
        return {int(i): StoredReport(int(i), tuple(ReportMention(str(m[0]), str(m[1]), m[2], int(m[3]), int(m[4]))
                                                   for m in mentions or []), bool(has), str(analyzer))
                for i, mentions, has, analyzer in rows}
