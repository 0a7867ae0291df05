"""Request and response models of the API (ORM models live in storage/, never here)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

from search_api.schemas.reports import Assertion, FusionIn, MatchOut, ModeIn, ReportQueryOut

RANDOM_MODEL_WARNING = ("The loaded model has RANDOM weights (a test model): scores and rankings are "
                        "meaningless.")

QueryText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class ProbeFilter(BaseModel):
    name: str = Field(max_length=128, description="A probe of GET /probes (medsearch-index train-probe).")
    label: str = Field(max_length=200, description="One of its labels.")
    min_probability: float = Field(default=0.5, ge=0, le=1, description="Keep images the probe gives at least "
                                   "this calibrated probability for the label. Exact: every image is scored.")


class Filters(BaseModel):
    """Conditions applied inside the vector search: the top k are the k best matching images."""

    modality: list[Annotated[str, StringConstraints(max_length=16)]] = Field(
        default_factory=list, max_length=50, description="Any of these modalities (CT, MR, CR...).")
    body_part: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list, max_length=50, description="Any of these body parts / regions.")
    patient_sex: Literal["M", "F", "O"] | None = None
    age_min: float | None = Field(default=None, ge=0, le=150)
    age_max: float | None = Field(default=None, ge=0, le=150)
    study_date_from: date | None = None
    study_date_to: date | None = None
    manufacturer: str | None = Field(default=None, max_length=200, description="Substring, any case.")
    labels: list[Annotated[str, StringConstraints(max_length=200)]] = Field(
        default_factory=list, max_length=50, description="All of these labels.")
    description: str | None = Field(default=None, max_length=200,
                                    description="Substring of the study or series description, any case.")
    probe: ProbeFilter | None = Field(default=None, description="Only images a site's probe calls positive.")
    assertion: list[Assertion] = Field(default_factory=list, max_length=6, description="Only images whose report "
                                       "states the query's findings so (negated: 'no pleural effusion'); empty: "
                                       "as the query states them (present unless it says 'no', 'possible'...).")

    @model_validator(mode="after")
    def _ranges(self) -> Filters:
        if self.age_min is not None and self.age_max is not None and self.age_min > self.age_max:
            raise ValueError("age_min is greater than age_max")
        if self.study_date_from and self.study_date_to and self.study_date_from > self.study_date_to:
            raise ValueError("study_date_from is after study_date_to")
        return self


class SearchOptionsIn(BaseModel):
    k: int = Field(default=10, ge=1, le=1000, description="How many results, 1..1000.")
    offset: int = Field(default=0, ge=0, le=10_000, description="Skip this many results (pagination).")
    filters: Filters | None = None
    min_score: float | None = Field(default=None, ge=-1, le=1, description="Only results with a cosine at "
                                    "least this high.")
    group_by: Literal["study", "patient"] | None = Field(default=None, description="The best image of each "
                                                         "study or patient only.")
    facets: bool = Field(default=False, description="Also count the matching images per modality, body part, "
                         "sex and study year (those of these fields the caller's role may see).")
    order: Literal["relevance", "probability", "newest", "oldest"] = Field(
        default="relevance", description="relevance: most similar first; probability: highest probability of "
        "filters.probe first; newest / oldest: by study date (unknown dates last). Every allowed image is "
        "ordered, not only the nearest ones.")
    mode: ModeIn | None = Field(default=None, description="For queries with text: image (similarity of the "
                                "text to the images), report (the reports' words and findings) or hybrid (both "
                                "rankings fused). Default: hybrid where the index holds reports, else image.")
    fusion: FusionIn | None = Field(default=None, description="Hybrid: how the two rankings are fused.")


class FilterSearchRequest(SearchOptionsIn):
    """No query: the images the filters allow, in the order asked (default: by filters.probe's
    probability when given, else in index order)."""


class TextSearchRequest(SearchOptionsIn):
    query: QueryText = Field(description="What to look for, in words: 'right pleural effusion'.")


class SimilarSearchRequest(SearchOptionsIn):
    image_id: int = Field(ge=0, le=2**62, description="An indexed image: find cases like it (itself excluded).")


class QueryPartIn(BaseModel):
    text: QueryText | None = None
    image_id: int | None = Field(default=None, ge=0, le=2**62)
    weight: float = Field(default=1.0, ge=-10, le=10, description="Negative weights push results away.")

    @model_validator(mode="after")
    def _one_thing(self) -> QueryPartIn:
        if (self.text is None) == (self.image_id is None):
            raise ValueError("give exactly one of text or image_id")
        if self.weight == 0:
            raise ValueError("weight must not be 0")
        return self


class CompositeSearchRequest(SearchOptionsIn):
    parts: list[QueryPartIn] = Field(min_length=1, max_length=16, description="Weighted parts, for example "
                                     "+this image, +'pleural effusion', -'chest tube'.")


class BatchSearchRequest(BaseModel):
    queries: list[CompositeSearchRequest] = Field(min_length=1, max_length=64)


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
    url: str | None = Field(default=None, description="For an image indexed from a PACS: the WADO-RS URL of "
                            "its DICOM instance (not shown to researchers).")
    viewer_url: str | None = Field(default=None, description="Its study in the viewer of "
                                   "MEDSEARCH_VIEWER_URL_TEMPLATE, for every source with a Study Instance UID "
                                   "(not shown to researchers).")


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
    study_images: int | None = Field(default=None, description="Images indexed from this patient's study.")
    study_series: int | None = Field(default=None, description="Series they belong to.")
    score: float | None = Field(description="Cosine similarity between query and image embeddings, -1..1; "
                                "null for a search without a query (/search/filter).")
    probability: float | None = Field(default=None, description="For text queries: SigLIP's calibrated "
                                      "probability sigmoid(logit_scale * cosine + logit_bias), from the model.")
    probe_probability: float | None = Field(default=None, description="With filters.probe: the probe's "
                                            "calibrated probability of its label for this image.")
    match: MatchOut | None = Field(default=None, description="Report and hybrid searches: why it matched.")


class SearchResponse(BaseModel):
    query_kind: Literal["text", "image", "similar", "composite", "filter"]
    k: int
    offset: int = 0
    total: int | None = Field(default=None, description="How many results there are to page through: the "
                              "images (or studies, patients) the filters and min_score allow; null when a "
                              "min_score cutoff has too many candidates to count exactly.")
    facets: dict[str, dict[str, int]] | None = Field(default=None, description="With facets=true: field -> "
                                                     "value -> matching images.")
    total_at_least: bool = Field(default=False, description="group_by: the total counts the studies (patients) "
                                 "of the first MEDSEARCH_COUNT_LIMIT matching images only: there are at least "
                                 "this many.")
    facets_counted: int | None = Field(default=None, description="Set when more images match than "
                                       "MEDSEARCH_COUNT_LIMIT: the facets counted this many of them (the first "
                                       "by id), so each count is a lower bound.")
    results: list[SearchResult]
    mode: ModeIn = Field(default="image", description="The mode that answered (a hybrid search falls back to "
                         "image where reports cannot be searched: `notes` says why).")
    notes: list[str] = Field(default_factory=list, description="What the search did differently from what was "
                             "asked, and why.")
    report_query: ReportQueryOut | None = Field(default=None, description="How the report index read the query.")
    model: ModelInfo
    warning: str | None = None


class BatchSearchResponse(BaseModel):
    responses: list[SearchResponse]


class LabelScoreOut(BaseModel):
    label: str
    probability: float = Field(description="sigmoid(logit_scale * cosine + logit_bias): this label alone.")
    softmax: float = Field(description="Share of this label among the candidates.")
    cosine: float | None = Field(description="To the label's prompt; null when a probe scored the labels.")


class NeighbourVote(BaseModel):
    label: str
    count: int
    frequency: float


class ClassifyResponse(BaseModel):
    labels: list[LabelScoreOut] = Field(description="Most probable first.")
    entropy: float = Field(description="Of the softmax across labels, normalised to 0..1.")
    requires_human_review: bool
    review_reasons: list[str]
    neighbours: int = Field(description="How many nearest indexed cases voted.")
    neighbour_votes: list[NeighbourVote]
    probe: str | None = Field(default=None, description="The probe whose calibrated probabilities these are; "
                              "null: zero-shot.")
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
