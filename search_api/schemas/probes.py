"""Request and response schemas of probes, the filter-only search and case summaries."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field

from search_api.schemas.search import ClassifyResponse, ModelInfo


class ProbeOut(BaseModel):
    name: str
    labels: list[str]
    created_at: datetime
    usable: bool = Field(description="Trained on this index's model; a probe of another model is refused.")
    images: int | None = Field(default=None, description="Labelled images it was trained on.")
    patients: int | None = None
    prior: bool = Field(default=False, description="Whether the zero-shot prompts were its prior.")
    mean_auc: float | None = Field(default=None, description="Cross-validated, folds grouped by patient.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Per label: positives, negatives, AUC and "
                                    "its bootstrap 95% interval, zero-shot AUC, accuracy, Brier score, ECE.")
    training_fingerprint: str


class ProbesResponse(BaseModel):
    probes: list[ProbeOut]


class EvidenceOut(BaseModel):
    image_ids: list[int] = Field(default_factory=list, description="The indexed cases the statement restates.")
    probabilities: dict[str, float] = Field(default_factory=dict, description="label -> the probability it "
                                            "restates.")


class StatementOut(BaseModel):
    text: str
    evidence: EvidenceOut


class SimilarCaseOut(BaseModel):
    image_id: int
    score: float = Field(description="Cosine similarity to the summarised image.")
    modality: str | None = None
    body_part: str | None = None
    study_date: date | None = Field(default=None, description="Not for researchers unless allow-listed.")
    labels: list[str] = Field(default_factory=list)
    report_text: str | None = Field(default=None, description="Not for researchers unless allow-listed.")


class VoteOut(BaseModel):
    label: str
    count: int
    agreement: float = Field(description="Share of the nearest cases carrying the label.")
    image_ids: list[int]


class SummaryResponse(BaseModel):
    image_id: int
    method: str = Field(description="What scored the findings: a probe, zero-shot on a preset or on the labels "
                        "asked for, zero-shot on the labels of the nearest cases, or none.")
    findings: ClassifyResponse | None
    similar_cases: list[SimilarCaseOut] = Field(description="Nearest indexed cases of other patients, one image "
                                                "per patient, nearest first.")
    label_vote: list[VoteOut]
    statements: list[StatementOut] = Field(description="The summary, each sentence with its evidence.")
    disclaimer: str
    model: ModelInfo
    warning: str | None = None
