"""Typed records that storage takes and returns. The image metadata field list is defined here once for
storage (models.py's columns, the repository's reads and writes); core.imaging.metadata.ImageMetadata mirrors it
for decoding (core may not import storage) and tests prove the two lists, the ORM columns, the API
schema and the manifest columns agree.

One image row is one *case image*: distinct pixels within one patient and one study. The same pixels
under two patients (or two studies) are two images, each with its own file's metadata; the model
encodes those pixels once and the second image gets a copy of the vector (see `case_key`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from typing import Any

from storage.reports.records import ReportFields


@dataclass
class Metadata:
    """Patient, study, series and instance attributes of one image. Every field is optional."""

    patient_id: str | None = None
    patient_sex: str | None = None
    patient_age: float | None = None  # years at the time of the study
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    accession_number: str | None = None
    modality: str | None = None
    body_part: str | None = None
    view_position: str | None = None
    study_date: date | None = None
    study_description: str | None = None
    series_description: str | None = None
    manufacturer: str | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    frames: int | None = None
    window: str | None = None
    burned_in_annotation: bool | None = None
    labels: list[str] = field(default_factory=list)
    report_text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


METADATA_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Metadata))
# identifiers a source (one file) carries itself; the rest of the metadata is the image's
SOURCE_IDENTIFIERS = ("patient_id", "study_uid", "series_uid", "sop_uid", "accession_number")


def case_key(patient_id: str | None, study_uid: str | None) -> str:
    """Which patient and study an image belongs to: images are distinct per (pixels, case_key). A hash,
    so that the unique index holds no identifier and two absent values still compare equal."""
    return hashlib.sha256(json.dumps([patient_id, study_uid]).encode()).hexdigest()


@dataclass
class ImageRecord:
    """An image to insert: its pixel hash, kind and metadata (its id is assigned on insert), and its
    report index document when the caller analysed it already (else the repository's analyzer does)."""

    pixel_sha256: str
    kind: str
    metadata: Metadata = field(default_factory=Metadata)
    report: ReportFields | None = None

    @property
    def case_key(self) -> str:
        return case_key(self.metadata.patient_id, self.metadata.study_uid)


@dataclass(frozen=True)
class SourceRecord:
    """One file (and frame) an image was found in, with that file's own identifiers."""

    archive: str
    path: str
    frame_index: int
    file_sha256: str
    size: int | None
    mtime: float | None
    patient_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    accession_number: str | None = None


SOURCE_FIELDS = tuple(f.name for f in fields(SourceRecord))


@dataclass(frozen=True)
class StoredSource:
    """A recorded source, as read back."""

    id: int
    archive: str
    path: str
    frame_index: int
    file_sha256: str
    patient_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    accession_number: str | None = None


@dataclass(frozen=True)
class StoredImage:
    """An indexed image with its metadata and every file (and frame) it was found in, oldest first."""

    id: int
    pixel_sha256: str
    kind: str
    metadata: Metadata
    sources: tuple[StoredSource, ...]


@dataclass
class NewImage:
    """An image to insert with its vector, and the sources it was found in."""

    record: ImageRecord
    vector: Any  # (dim,) float32
    sources: list[SourceRecord]


@dataclass(frozen=True)
class Link:
    """A further source of an image already stored. `record`: the file's own reading, which replaces the
    image's metadata when every earlier source of the image is replaced in the same batch (a file
    whose header changed but whose pixels did not)."""

    source: SourceRecord
    image_id: int
    record: ImageRecord | None = None


@dataclass(frozen=True)
class UnitRecord:
    """A work unit of a distributed run, committed with its batch (its id derives from its files)."""

    unit_id: str
    files: int
    frames: int


@dataclass(frozen=True)
class FileIssue:
    """A file a run did not index: kind 'failed' (unreadable), 'skipped' (not an image, no pixels...) or
    'excluded' (its patient, study or path was removed from the index: `medsearch-index exclusions`)."""

    archive: str
    path: str
    kind: str
    reason: str
    size: int | None = None
    mtime: float | None = None
    file_sha256: str | None = None


@dataclass
class FileState:
    """What the database knows of one path of an archive."""

    source_ids: list[int]
    file_sha256: str | None
    size: int | None
    mtime: float | None
    issue: FileIssue | None = None  # set when the file was skipped or failed last time (and had no source)


@dataclass(frozen=True)
class ImageFilter:
    """Conditions on image metadata; every given one must hold. Text matches ignore case."""

    modality: tuple[str, ...] = ()  # any of
    body_part: tuple[str, ...] = ()  # any of
    patient_sex: str | None = None
    age_min: float | None = None
    age_max: float | None = None
    study_date_from: date | None = None
    study_date_to: date | None = None
    manufacturer: str | None = None  # substring
    labels: tuple[str, ...] = ()  # all of
    description: str | None = None  # substring of the study or series description

    @property
    def empty(self) -> bool:
        return self == ImageFilter()


@dataclass(frozen=True)
class Manifest:
    """Which model built the index (the vectors' fingerprint)."""

    fingerprint_key: str
    model_name: str
    model_revision: str | None
    weights_sha256: str | None
    dim: int
    metric: str
    preprocessing_version: str
    random_weights: bool
    created_at: datetime


@dataclass(frozen=True)
class RunSummary:
    id: int
    archive: str
    status: str
    indexed: int
    unchanged: int
    skipped: int
    failed: int
    seconds: float | None
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class Selection:
    """What `remove` takes away: every given condition must hold (path: a prefix inside the archive)."""

    archive: str | None = None
    path_prefix: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None

    @property
    def empty(self) -> bool:
        return self == Selection()


@dataclass(frozen=True)
class RemovalPreview:
    """What a removal would take away: counts per patient and per study (as stored)."""

    sources: int
    images: int
    by_patient: dict[str, int]
    by_study: dict[str, int]
    issues: int  # skipped/failed records of the same files


@dataclass(frozen=True)
class Exclusion:
    """A removal that sticks: files of this patient, study, path or archive are not indexed again.
    `digest` is a keyed hash of the identifier: the list holds no identifier itself."""

    id: int
    kind: str  # patient, study, path, archive
    digest: str
    created_at: datetime
    images: int
    sources: int
    note: str | None
