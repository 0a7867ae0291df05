"""Schema 1: the index database as medsearch wrote it before Alembic (commit f415163).

Databases of that time are stamped with this revision when first opened (they carry a `meta` row
schema_version=1), new ones are created by it.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("meta", sa.Column("key", sa.String(64), primary_key=True),
                    sa.Column("value", sa.Text(), nullable=False))
    op.create_table(
        "index_manifest",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("fingerprint_key", sa.String(64), nullable=False),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_revision", sa.Text()),
        sa.Column("weights_sha256", sa.String(64)),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(16), nullable=False),
        sa.Column("preprocessing_version", sa.String(16), nullable=False),
        sa.Column("random_weights", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("archive", sa.Text(), nullable=False),
        sa.Column("fingerprint_key", sa.String(64)),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("indexed", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float()),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("pixel_sha256", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("series_uid", sa.String(64)),
        sa.Column("sop_uid", sa.String(64)),
        sa.Column("accession_number", sa.String(64)),
        sa.Column("patient_id", sa.String(128)),
        sa.Column("patient_sex", sa.String(16)),
        sa.Column("patient_age", sa.Float()),
        sa.Column("modality", sa.String(16)),
        sa.Column("body_part", sa.String(64)),
        sa.Column("view_position", sa.String(16)),
        sa.Column("study_date", sa.Date()),
        sa.Column("study_description", sa.Text()),
        sa.Column("series_description", sa.Text()),
        sa.Column("manufacturer", sa.Text()),
        sa.Column("instance_number", sa.Integer()),
        sa.Column("rows", sa.Integer()),
        sa.Column("columns", sa.Integer()),
        sa.Column("frames", sa.Integer()),
        sa.Column("window", sa.Text()),
        sa.Column("burned_in_annotation", sa.Boolean()),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("report_text", sa.Text()),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id")),
        sa.Column("indexed_at", sa.DateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_images_pixel_sha256", "images", ["pixel_sha256"], unique=True)
    op.create_index("ix_images_patient", "images", ["patient_id"])
    op.create_index("ix_images_study", "images", ["study_uid"])
    op.create_index("ix_images_modality", "images", ["modality"])
    op.create_table(
        "run_errors",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("archive", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer()),
        sa.Column("mtime", sa.Float()),
        sa.Column("file_sha256", sa.String(64)),
    )
    op.create_index("ix_run_errors_run_id", "run_errors", ["run_id"])
    op.create_index("ix_run_errors_archive", "run_errors", ["archive"])
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("archive", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("frame_index", sa.Integer(), nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(128)),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("series_uid", sa.String(64)),
        sa.Column("sop_uid", sa.String(64)),
        sa.Column("accession_number", sa.String(64)),
        sa.Column("size", sa.Integer()),
        sa.Column("mtime", sa.Float()),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id")),
        sa.Column("indexed_at", sa.DateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_sources_study_uid", "sources", ["study_uid"])
    op.create_index("ix_sources_image_id", "sources", ["image_id"])
    op.create_index("ix_sources_patient_id", "sources", ["patient_id"])
    op.create_index("ix_sources_file_sha256", "sources", ["file_sha256"])
    op.create_index("ix_sources_location", "sources", ["archive", "path", "frame_index"], unique=True)
    op.create_table(
        "embeddings",
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True,
                  autoincrement=False),
        sa.Column("fingerprint_key", sa.String(64), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
    )
    op.execute(sa.text("INSERT INTO meta (key, value) VALUES ('schema_version', '1')"))
