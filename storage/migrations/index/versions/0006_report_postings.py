"""Report postings: each document's count of each of its concept tokens beside its length, ordered so
that a query's best matches are read first and ranked without scoring every match (storage/reports/topk.py),
and per token the documents carrying it and their total length (report_terms; the token '' counts every
document), added by the writer and taken away by a trigger, in the transactions that write and remove
documents.

Existing documents are backfilled from their stored concept tokens and words: nothing is analysed again,
nothing re-encoded.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from storage.reports.postings import backfill_postings

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SQLITE = [  # the writer adds a batch's counts (storage.reports.postings.write_postings); a delete takes its own
    "CREATE TRIGGER report_postings_ad AFTER DELETE ON report_postings BEGIN UPDATE report_terms SET "
    "documents = documents - 1, tokens = tokens - old.dl WHERE id = old.term_id; END",
]
POSTGRESQL = [
    "CREATE FUNCTION report_terms_removed() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "UPDATE report_terms t SET documents = t.documents - s.n, tokens = t.tokens - s.l "
    "FROM (SELECT term_id, count(*) AS n, sum(dl) AS l FROM old_rows GROUP BY term_id) s WHERE t.id = s.term_id; "
    "RETURN NULL; END $$",
    "CREATE TRIGGER report_postings_ad AFTER DELETE ON report_postings REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION report_terms_removed()",
]

def upgrade() -> None:
    op.create_table(
        "report_terms",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("token", sa.String(255), nullable=False, unique=True),
        sa.Column("documents", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "report_postings",
        sa.Column("term_id", sa.Integer(), primary_key=True),
        sa.Column("tf", sa.Integer(), primary_key=True),
        sa.Column("dl", sa.Integer(), primary_key=True),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("report_documents.image_id", ondelete="CASCADE"),
                  primary_key=True),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_report_postings_image", "report_postings", ["image_id"])  # a document's delete finds them
    dialect = op.get_bind().dialect.name
    for statement in SQLITE if dialect == "sqlite" else POSTGRESQL if dialect == "postgresql" else []:
        op.execute(statement)
    backfill_postings(op.get_bind())
