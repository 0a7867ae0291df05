"""SQLAlchemy 2 ORM models of the index database. API schemas live in search_api/schemas/search.py, never here.

The schema changes only through Alembic migrations (storage/migrations/index/versions): a change here
without a migration fails tests/storage/test_migrations.py, which compares the two.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value facts about the database itself (its id, settings runs must agree on, PACS marks)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ImageRow(Base):
    """One case image: distinct pixels within one patient and study (`case_key`, see storage.records).
    `id` is also its id in the FAISS index. Its metadata comes from the first file it was found in;
    `sources` lists every file and frame with these pixels in this case."""

    __tablename__ = "images"
    __table_args__ = (
        Index("ix_images_case", "pixel_sha256", "case_key", unique=True),
        Index("ix_images_pixel_sha256", "pixel_sha256"),
        Index("ix_images_patient", "patient_id"),
        Index("ix_images_study", "study_uid"),
        Index("ix_images_modality", "modality"),
        # what filters compare (storage/sql/filters.py): a selective filter reads its matches, not the table
        Index("ix_images_modality_upper", func.upper(text("modality"))),  # migration 0008
        Index("ix_images_body_part_upper", func.upper(text("body_part"))),
        Index("ix_images_study_date", "study_date"),
        {"sqlite_autoincrement": True},  # ids are never reused: they are FAISS ids
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pixel_sha256: Mapped[str] = mapped_column(String(64))
    case_key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    study_uid: Mapped[str | None] = mapped_column(String(64))
    series_uid: Mapped[str | None] = mapped_column(String(64))
    sop_uid: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(128))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    patient_age: Mapped[float | None] = mapped_column(Float)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[date | None] = mapped_column(Date)
    study_description: Mapped[str | None] = mapped_column(Text)
    series_description: Mapped[str | None] = mapped_column(Text)
    manufacturer: Mapped[str | None] = mapped_column(Text)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    frames: Mapped[int | None] = mapped_column(Integer)
    window: Mapped[str | None] = mapped_column(Text)
    burned_in_annotation: Mapped[bool | None] = mapped_column(Boolean)
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    report_text: Mapped[str | None] = mapped_column(Text)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    indexed_at: Mapped[datetime] = mapped_column(DateTime)


class ImageLabelRow(Base):
    """One of an image's labels as filters compare it (`label_key`), beside `images.labels` (the labels as
    given), written in the same transactions (migration 0008), so that a label filter reads the images
    carrying it instead of every row's list. Leaves with its image."""

    __tablename__ = "image_labels"
    __table_args__ = (Index("ix_image_labels_label", "label", "image_id"), {"sqlite_with_rowid": False})
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String(255), primary_key=True)


def label_key(label: str) -> str:
    """A label as filters compare it: case does not count."""
    return label.lower()


class SourceRow(Base):
    """Where an image was found: one file (and frame) of one archive."""

    __tablename__ = "sources"
    __table_args__ = (
        Index("ix_sources_location", "archive", "path", "frame_index", unique=True),
        Index("ix_sources_file_sha256", "file_sha256"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    archive: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    frame_index: Mapped[int] = mapped_column(Integer, default=0)
    file_sha256: Mapped[str] = mapped_column(String(64))
    # the file's own identifiers (a duplicate's may differ from those of the image's first source)
    patient_id: Mapped[str | None] = mapped_column(String(128), index=True)
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    series_uid: Mapped[str | None] = mapped_column(String(64))
    sop_uid: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(Integer)
    mtime: Mapped[float | None] = mapped_column(Float)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    indexed_at: Mapped[datetime] = mapped_column(DateTime)


class EmbeddingRow(Base):
    """The vector of one image: the source of truth from which any FAISS index is rebuilt."""

    __tablename__ = "embeddings"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    fingerprint_key: Mapped[str] = mapped_column(String(64))
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class IndexManifestRow(Base):
    """Which model built this index (a single row)."""

    __tablename__ = "index_manifest"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint_key: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(Text)
    model_revision: Mapped[str | None] = mapped_column(Text)
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(16))
    preprocessing_version: Mapped[str] = mapped_column(String(16))
    random_weights: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class RunRow(Base):
    """One indexing run and its summary."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    archive: Mapped[str] = mapped_column(Text)
    fingerprint_key: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), default="running")
    indexed: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float | None] = mapped_column(Float)


class RunErrorRow(Base):
    """A file a run could not index (kind 'failed') or chose not to (kind 'skipped'), and why."""

    __tablename__ = "run_errors"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    archive: Mapped[str] = mapped_column(Text, index=True)
    path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(Integer)
    mtime: Mapped[float | None] = mapped_column(Float)
    file_sha256: Mapped[str | None] = mapped_column(String(64))


class ExclusionRow(Base):
    """A removal that sticks (see storage.records.Exclusion): a keyed hash, never the identifier."""

    __tablename__ = "exclusions"
    __table_args__ = (Index("ix_exclusions_digest", "kind", "digest", unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    images: Mapped[int] = mapped_column(Integer, default=0)
    sources: Mapped[int] = mapped_column(Integer, default=0)
    note: Mapped[str | None] = mapped_column(Text)


class CommittedUnitRow(Base):
    """A work unit of a distributed run whose shard is committed (see storage.sql.repository.write_batch)."""

    __tablename__ = "committed_units"
    unit_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    committed_at: Mapped[datetime] = mapped_column(DateTime)
    files: Mapped[int] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer)


class ProbeRow(Base):
    """A few-shot classifier on the stored embeddings (see storage.records.Probe)."""

    __tablename__ = "probes"
    __table_args__ = (Index("ix_probes_name", "name", unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    fingerprint_key: Mapped[str] = mapped_column(String(64))
    training_fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    labels: Mapped[list[str]] = mapped_column(JSON)
    dim: Mapped[int] = mapped_column(Integer)
    weights: Mapped[bytes] = mapped_column(LargeBinary)  # labels x dim float32, the calibrated linear map
    intercepts: Mapped[list[float]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


class ReportDocumentRow(Base):
    """An image's report index document (storage/reports/documents.py): the normalised words of its report text and
    descriptions, the concept tokens of its findings with their assertions, and where each was mentioned.
    The full-text index over it (SQLite FTS5 `report_fts`, or PostgreSQL's `document` tsvector with a GIN
    index) is the database's own, created by migration 0005 and kept in step in the same transactions."""

    __tablename__ = "report_documents"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    concepts: Mapped[str] = mapped_column(Text)
    mentions: Mapped[list[list[Any]]] = mapped_column(JSON)
    has_report: Mapped[bool] = mapped_column(Boolean)
    analyzer: Mapped[str] = mapped_column(String(64), index=True)  # migration 0007


class ReportTermRow(Base):
    """A concept token of the report index's postings (storage/reports/postings.py) with how many documents
    carry it and their total length, kept by triggers (migration 0006). The token '' stands for every
    document: its counts are BM25's N and the documents' total length."""

    __tablename__ = "report_terms"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token: Mapped[str] = mapped_column(String(255), unique=True)
    documents: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)


class ReportPostingRow(Base):
    """One document's count of one concept token (`tf`) beside the document's length in tokens (`dl`),
    ordered so that a term's documents are read best first by BM25 (storage/reports/topk.py). Every
    document has one row for the token '' (tf 0). Leaves with its document (found by its image id)."""

    __tablename__ = "report_postings"
    __table_args__ = (Index("ix_report_postings_image", "image_id"), {"sqlite_with_rowid": False})
    term_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # report_terms.id
    tf: Mapped[int] = mapped_column(Integer, primary_key=True)
    dl: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("report_documents.image_id", ondelete="CASCADE"),
                                          primary_key=True)
