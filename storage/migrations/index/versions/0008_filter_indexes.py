"""Indexes for what filters compare, so that a selective filter reads its matches instead of every row of
`images`: upper(modality), upper(body_part), study_date, and `image_labels` (one row per image and label as
filters compare it, storage.sql.labels.label_keys) with an index by label. Existing labels are copied from
`images.labels` in batches; nothing is re-encoded.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import json

import sqlalchemy as sa
from alembic import op

from storage.sql.labels import label_keys

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BATCH = 10_000


def upgrade() -> None:
    op.create_index("ix_images_modality_upper", "images", [sa.text("upper(modality)")])
    op.create_index("ix_images_body_part_upper", "images", [sa.text("upper(body_part)")])
    op.create_index("ix_images_study_date", "images", ["study_date"])
    labels = op.create_table(
        "image_labels",
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("label", sa.String(255), primary_key=True),
        sqlite_with_rowid=False,
    )
    connection = op.get_bind()
    last = 0
    while True:  # by id, a batch at a time: the copy's memory does not grow with the archive
        rows = connection.execute(sa.text("SELECT id, labels FROM images WHERE id > :last ORDER BY id LIMIT :n"),
                                  {"last": last, "n": BATCH}).all()
        if not rows:
            break
        found = [{"image_id": image_id, "label": key} for image_id, raw in rows  # JSON text on SQLite
                 for key in label_keys(json.loads(raw) if isinstance(raw, str) else raw)]
        if found:
            connection.execute(labels.insert(), found)
        last = int(rows[-1][0])
    op.create_index("ix_image_labels_label", "image_labels", ["label", "image_id"])
