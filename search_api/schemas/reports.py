"""Request and response models of report and hybrid search (their use: search_api/schemas/search.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

Assertion = Literal["present", "negated", "uncertain", "historical", "family", "hypothetical"]
ModeIn = Literal["hybrid", "image", "report"]


class FusionIn(BaseModel):
    """How a hybrid search fuses its two rankings (reciprocal rank fusion, search_api/services/fusion.py)."""

    k: int = Field(default=60, ge=1, le=1000, description="RRF's k: 1 / (k + rank) per ranking.")
    report_weight: float = Field(default=1.0, ge=0, le=10, description="Weight of the report ranking.")
    image_weight: float = Field(default=1.0, ge=0, le=10, description="Weight of the image-similarity ranking.")
    window: int = Field(default=1000, ge=10, le=10_000, description="How many of each ranking are fused; "
                        "images beyond both windows follow by image similarity.")

    @model_validator(mode="after")
    def _some_weight(self) -> FusionIn:
        if self.report_weight == 0 and self.image_weight == 0:
            raise ValueError("report_weight and image_weight are both 0")
        return self


class Mark(BaseModel):
    start: int = Field(description="Offset in the snippet's text.")
    end: int
    term: str = Field(description="The vocabulary term (a finding or anatomy), or the query word matched.")
    kind: Literal["finding", "anatomy", "word"]
    assertion: Assertion | None = Field(default=None, description="A finding's assertion in this sentence.")


class Snippet(BaseModel):
    text: str = Field(description="The sentences of the report that matched (… where text was left out).")
    marks: list[Mark] = Field(description="The matched terms, in order: mark them in the text.")


class FindingOut(BaseModel):
    term: str
    assertion: Assertion


class MatchOut(BaseModel):
    """Why a result matched (report and hybrid searches)."""

    image_rank: int | None = Field(default=None, description="Its rank by image similarity (1 = best); "
                                   "null where it is beyond the fused window and was ranked by its report.")
    report_rank: int | None = Field(default=None, description="Its rank in the report search (1 = best); null: "
                                    "its report did not match (or is beyond the fused window).")
    report_score: float | None = Field(default=None, description="Its report's BM25 relevance (the same "
                                       "in SQLite and PostgreSQL): comparable within one search only.")
    fused_score: float | None = Field(default=None, description="Hybrid: the reciprocal rank fusion score.")
    snippet: Snippet | None = Field(default=None, description="Where its report matched, terms marked (only "
                                    "for roles that may see report text).")
    findings: list[FindingOut] = Field(default_factory=list, description="The query's findings as this "
                                       "report states them.")


class QueryConceptOut(BaseModel):
    term: str
    kind: Literal["finding", "anatomy"]
    assertions: list[Assertion] = Field(description="Matched with these assertions (anatomy: those of the "
                                        "query's findings; empty: any).")


class ReportQueryOut(BaseModel):
    """How the report index read the query."""

    concepts: list[QueryConceptOut]
    words: list[str] = Field(description="Other words, normalised (stemmed), that must occur.")
    reason: str | None = Field(default=None, description="Why no report can match this query.")
