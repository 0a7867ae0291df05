"""What medsearch records about an image besides its pixels: the metadata field list.

storage.records.Metadata mirrors ImageMetadata for storage (storage may not import core); tests prove
that the two lists, the database columns, the API's response schema and the manifest columns agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any


@dataclass
class ImageMetadata:
    """Patient, study, series and instance attributes of one image. Every field is optional.

    DICOM images fill it from their header; PNG/JPEG images from the archive's manifest CSV.
    """

    patient_id: str | None = None
    patient_sex: str | None = None
    patient_age: float | None = None  # years at the time of the study
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    accession_number: str | None = None
    modality: str | None = None
    body_part: str | None = None  # BodyPartExamined, else the region named in the descriptions
    view_position: str | None = None
    study_date: date | None = None
    study_description: str | None = None
    series_description: str | None = None
    manufacturer: str | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    frames: int | None = None
    frame_index: int | None = None  # which frame of a multi-frame object was encoded (a source's property)
    window: str | None = None  # how the pixels were windowed, for example "header 40/400 LINEAR"
    burned_in_annotation: bool | None = None  # DICOM BurnedInAnnotation: text burned into the pixels
    labels: list[str] = field(default_factory=list)
    report_text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# what an image stores (frame_index belongs to each source)
METADATA_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ImageMetadata) if f.name != "frame_index")
# computed from the pixels and the rendering: never taken from a manifest
COMPUTED_FIELDS = ("rows", "columns", "frames", "frame_index", "window")
# what a manifest CSV may set, each parsed by its type in ImageMetadata (indexer/pipeline/manifest.py)
MANIFEST_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ImageMetadata) if f.name not in COMPUTED_FIELDS)
# identifiers: always keyed pseudonyms for researchers, never on the allow-list in plain
IDENTIFIER_FIELDS = ("patient_id", "accession_number", "study_uid", "series_uid", "sop_uid")
# the researcher role's default allow-list: nothing free-text or identifying (no dates, descriptions,
# report text, or extra columns)
RESEARCHER_DEFAULT_FIELDS = ("patient_sex", "patient_age", "modality", "body_part", "view_position",
                             "manufacturer", "instance_number", "rows", "columns", "frames", "window",
                             "burned_in_annotation", "labels")


def check_field_names(names: Iterable[str]) -> list[str]:
    """The names, or ValueError naming any that is neither a stored field nor extra.COLUMN."""
    names = [name.strip() for name in names if name.strip()]
    unknown = [n for n in names if n not in METADATA_FIELDS and not (n.startswith("extra.") and len(n) > 6)]
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}: expected fields of {', '.join(METADATA_FIELDS)}, "
                         "or extra.COLUMN for a manifest column")
    return names
