"""Work units committed by a distributed run (the Ray engine): a unit's shard is committed in one
transaction that records its id, so committing the same shard again (a retried task, a resumed
driver) changes nothing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "committed_units",
        sa.Column("unit_id", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="SET NULL")),
        sa.Column("committed_at", sa.DateTime(), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
    )
