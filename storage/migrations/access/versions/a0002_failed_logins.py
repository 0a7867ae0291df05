"""The audit log records failed authentications: key_id may be a prefix of an unknown key, and the
client address is kept for rate limiting reviews.

Revision ID: a0002
Revises: a0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "a0002"
down_revision = "a0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit", sa.Column("client", sa.String(64)))
