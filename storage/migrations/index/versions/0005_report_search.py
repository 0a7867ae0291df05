"""Report search: one document per image with report text or a study/series description
(report_documents: the normalised words, the concept tokens of its findings with their assertions, and
where each finding was mentioned), and the database's own full-text index over it: SQLite FTS5 (BM25)
kept in step by triggers, or PostgreSQL tsvector with a GIN index, ranked by the same BM25 (the
documents' count and length kept in report_totals by triggers). Both are written in the transactions
that write the images.

Existing images are backfilled from their stored report text and descriptions, nothing re-encoded,
when the opener passes the report analyzer (Repository.open(..., reports=...)); otherwise they stay
pending until `Repository.backfill_reports` runs (medsearch-index run and verify --repair do).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SQLITE = [
    # external content: the words live once, in report_documents; FTS5 holds only its index
    "CREATE VIRTUAL TABLE report_fts USING fts5(body, concepts, content='report_documents', "
    "content_rowid='image_id', tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER report_documents_ai AFTER INSERT ON report_documents BEGIN "
    "INSERT INTO report_fts(rowid, body, concepts) VALUES (new.image_id, new.body, new.concepts); END",
    "CREATE TRIGGER report_documents_ad AFTER DELETE ON report_documents BEGIN "
    "INSERT INTO report_fts(report_fts, rowid, body, concepts) VALUES ('delete', old.image_id, old.body, "
    "old.concepts); END",
    "CREATE TRIGGER report_documents_au AFTER UPDATE ON report_documents BEGIN "
    "INSERT INTO report_fts(report_fts, rowid, body, concepts) VALUES ('delete', old.image_id, old.body, "
    "old.concepts); INSERT INTO report_fts(rowid, body, concepts) VALUES (new.image_id, new.body, new.concepts); END",
]
POSTGRESQL = [
    # words weigh D, concept tokens A: a query term names the weight it may match (core.reports.text)
    "ALTER TABLE report_documents ADD COLUMN document tsvector GENERATED ALWAYS AS "
    "(setweight(to_tsvector('simple', body), 'D') || setweight(to_tsvector('simple', concepts), 'A')) STORED",
    "CREATE INDEX ix_report_documents_document ON report_documents USING gin (document)",
    # BM25 as FTS5 computes it (storage/reports/documents.py) needs the documents' count and total length: kept here
    "CREATE FUNCTION report_tokens(body text, concepts text) RETURNS bigint IMMUTABLE LANGUAGE sql AS $$ "
    "SELECT coalesce(array_length(string_to_array(body, ' '), 1), 0) "
    "+ coalesce(array_length(string_to_array(concepts, ' '), 1), 0) $$",
    "CREATE TABLE report_totals (one boolean PRIMARY KEY DEFAULT true CHECK (one), documents bigint NOT NULL, "
    "tokens bigint NOT NULL)",
    "INSERT INTO report_totals VALUES (true, 0, 0)",
    "CREATE FUNCTION report_totals_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF TG_OP IN ('INSERT', 'UPDATE') THEN UPDATE report_totals SET documents = documents + s.n, "
    "tokens = tokens + s.t FROM (SELECT count(*) AS n, coalesce(sum(report_tokens(body, concepts)), 0) AS t "
    "FROM new_rows) s; END IF; "
    "IF TG_OP IN ('DELETE', 'UPDATE') THEN UPDATE report_totals SET documents = documents - s.n, "
    "tokens = tokens - s.t FROM (SELECT count(*) AS n, coalesce(sum(report_tokens(body, concepts)), 0) AS t "
    "FROM old_rows) s; END IF; RETURN NULL; END $$",
    "CREATE TRIGGER report_totals_ai AFTER INSERT ON report_documents REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION report_totals_change()",
    "CREATE TRIGGER report_totals_ad AFTER DELETE ON report_documents REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION report_totals_change()",
    "CREATE TRIGGER report_totals_au AFTER UPDATE ON report_documents REFERENCING OLD TABLE AS old_rows "
    "NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION report_totals_change()",
]


def upgrade() -> None:
    op.create_table(
        "report_documents",
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("concepts", sa.Text(), nullable=False),
        sa.Column("mentions", sa.JSON(), nullable=False),
        sa.Column("has_report", sa.Boolean(), nullable=False),
        sa.Column("analyzer", sa.String(64), nullable=False),
    )
    dialect = op.get_bind().dialect.name
    for statement in SQLITE if dialect == "sqlite" else POSTGRESQL if dialect == "postgresql" else []:
        op.execute(statement)
    config = op.get_context().config
    analyzer = config.attributes.get("report_analyzer") if config is not None else None
    if analyzer is not None:
        backfill(op.get_bind(), analyzer)


def backfill(connection: sa.Connection, analyzer: Any) -> None:
    """Documents for the images that have report text or a description, 1,000 at a time."""
    images = sa.table("images", sa.column("id"), sa.column("report_text"), sa.column("study_description"),
                      sa.column("series_description"))
    documents = sa.table("report_documents", sa.column("image_id"), sa.column("body"), sa.column("concepts"),
                         sa.column("mentions", sa.JSON()), sa.column("has_report"), sa.column("analyzer"))
    last = -1
    while True:
        rows = connection.execute(sa.select(images).where(images.c.id > last, sa.or_(
            images.c.report_text.is_not(None), images.c.study_description.is_not(None),
            images.c.series_description.is_not(None))).order_by(images.c.id).limit(1000)).all()
        if not rows:
            return
        last = rows[-1].id
        values = []
        for row in rows:
            found = analyzer.analyze(row.report_text, (row.study_description, row.series_description))
            if found is not None:
                values.append({"image_id": row.id, "body": found.body, "concepts": found.concepts,
                               "mentions": [list(m) for m in found.mentions], "has_report": found.has_report,
                               "analyzer": analyzer.fingerprint})
        if values:
            connection.execute(documents.insert(), values)
