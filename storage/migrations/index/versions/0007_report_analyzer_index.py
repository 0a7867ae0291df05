"""An index on the analysis that made each report document (report_documents.analyzer), so that a query
can tell in two index seeks whether every document carries the group tokens of the current analysis
(storage/reports/documents.py `_answerable`): a broad term's query is then one token, ranked from its
postings. Documents made by an older analysis keep answering the unfolded query until a run (or
verify --repair) analyses them again; nothing is re-encoded.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_report_documents_analyzer", "report_documents", ["analyzer"])

