"""Request and response models of the image routes: viewing, study and series navigation, values under
the pointer, zero-shot classification of an indexed image."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ValuesResponse(BaseModel):
    """A frame's modality values (Hounsfield units for CT), for the value under the pointer."""

    width: int
    height: int
    scale: float = Field(description="File pixels per value: value (x, y) is file pixel (x*scale, y*scale).")
    unit: str = Field(description="HU for CT, else the header's RescaleType (possibly empty).")
    frame: int
    frames: int
    data: str = Field(description="Base64 of little-endian float32 values, row by row.")


class SeriesOut(BaseModel):
    series_uid: str | None = Field(description="Pseudonymised for researchers.")
    description: str | None = Field(description="Series description, where the caller's role may see it.")
    modality: str | None
    images: int
    first_image_id: int


class StudyResponse(BaseModel):
    """One patient's study of an image: its series in order, with counts."""

    image_id: int
    study_uid: str | None = Field(description="Pseudonymised for researchers.")
    patient_id: str | None = Field(description="Pseudonymised for researchers.")
    description: str | None
    study_date: str | None
    images: int
    series: list[SeriesOut]


class SeriesImageOut(BaseModel):
    image_id: int
    instance_number: int | None
    frame_index: int
    frames: int | None


class SeriesResponse(BaseModel):
    """The images of one patient's series in instance order (then frame)."""

    image_id: int
    series_uid: str | None = Field(description="Pseudonymised for researchers.")
    description: str | None
    position: int = Field(description="Where image_id is in `images` (0-based).")
    images: list[SeriesImageOut]


class ClassifyIndexedRequest(BaseModel):
    labels: list[Label] = Field(default_factory=list, max_length=100, description="Candidate labels.")
    preset: str | None = Field(default=None, max_length=64, description="Or a preset of GET /presets.")
    probe: str | None = Field(default=None, max_length=128, description="Or a probe of GET /probes: its labels "
                              "with its calibrated probabilities.")
    neighbours: int = Field(default=10, ge=0, le=100, description="Nearest indexed cases whose labels vote.")

    @model_validator(mode="after")
    def _one_way(self) -> ClassifyIndexedRequest:
        if sum(map(bool, (self.labels, self.preset, self.probe))) != 1:
            raise ValueError("give labels, a preset or a probe (one of them)")
        return self


class WhoAmI(BaseModel):
    role: Literal["admin", "clinician", "researcher"]
    may_download: bool = Field(description="Whether original files may be downloaded (never researchers).")
    researcher_fields: list[str] = Field(description="The metadata fields researchers see.")
