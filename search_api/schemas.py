"""Request and response models of the API (ORM models live in storage/, never here)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

RANDOM_MODEL_WARNING = ("The loaded model has RANDOM weights (a test model): scores and rankings are "
                        "meaningless.")

QueryText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class TextSearchRequest(BaseModel):
    query: QueryText = Field(description="What to look for, in words: 'right pleural effusion'.")
    k: int = Field(default=10, ge=1, le=1000, description="How many results, 1..1000.")


class ModelInfo(BaseModel):
    name: str
    revision: str | None
    fingerprint: str
    dim: int
    device: str
    random_weights: bool
    warning: str | None = Field(default=None, description="Set when results are meaningless (random model).")


class Source(BaseModel):
    archive: str
    path: str
    frame_index: int = Field(description="Frame of a multi-frame file (0 otherwise).")
    file_sha256: str
    patient_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    accession_number: str | None = None


class ImageMetadataOut(BaseModel):
    patient_id: str | None = None
    patient_sex: str | None = None
    patient_age: float | None = None
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
    window: str | None = Field(default=None, description="How the pixels were windowed for the model.")
    burned_in_annotation: bool | None = None
    labels: list[str] = Field(default_factory=list)
    report_text: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class ImageOut(BaseModel):
    image_id: int
    kind: str = Field(description="dicom, png, jpeg...")
    source: Source = Field(description="The first file the image was found in.")
    sources: list[Source] = Field(description="Every file (and frame) with exactly these pixels.")
    metadata: ImageMetadataOut


class SearchResult(ImageOut):
    rank: int = Field(description="1 = best.")
    score: float = Field(description="Cosine similarity between query and image embeddings, -1..1.")


class SearchResponse(BaseModel):
    query_kind: Literal["text", "image"]
    k: int
    results: list[SearchResult]
    model: ModelInfo
    warning: str | None = None


class ImageResponse(ImageOut):
    model: ModelInfo
    warning: str | None = None


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model: ModelInfo
    vectors: int = Field(description="Vectors in the FAISS index.")
    images: int = Field(description="Image rows in the database.")
    warning: str | None = None


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[ErrorItem] | str
