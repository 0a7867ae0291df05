"""What medsearch records about an image besides its pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    frame_index: int | None = None  # which frame of a multi-frame object was encoded
    window: str | None = None  # how the pixels were windowed, for example "header 40/400 LINEAR"
    burned_in_annotation: bool | None = None  # DICOM BurnedInAnnotation: text burned into the pixels
    labels: list[str] = field(default_factory=list)
    report_text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
