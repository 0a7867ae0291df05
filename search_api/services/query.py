"""What a search takes and gives, shared by the search service (search_api/services/search.py) and the report and
hybrid searches (search_api/services/reports.py): query parts, options, hits and their totals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from core.imaging.images import LoadedImage
from core.reports import ReportQuery
from storage.records import ImageFilter, StoredImage
from storage.reports.records import ReportMatch
from storage.vectors.effort import QueryKind

Mode = Literal["hybrid", "image", "report"]
Order = Literal["relevance", "probability", "newest", "oldest"]
MODES: tuple[Mode, ...] = ("hybrid", "image", "report")


RRF_K = 60
WINDOW = 1000


@dataclass(frozen=True)
class Fusion:
    k: int = RRF_K
    report_weight: float = 1.0
    image_weight: float = 1.0
    window: int = WINDOW


@dataclass(frozen=True)
class ProbeCondition:
    """Keep the images a probe gives at least `min_probability` for `label`."""

    name: str
    label: str
    min_probability: float = 0.5


@dataclass(frozen=True)
class QueryPart:
    """One weighted part of a query: a text, an indexed image, or an uploaded image."""

    weight: float = 1.0
    text: str | None = None
    image_id: int | None = None
    image: LoadedImage | None = None


def query_kind(parts: Sequence[QueryPart]) -> QueryKind:
    """text, image, or both (a composite of the two: the larger search effort)."""
    kinds = {"text" if part.text is not None else "image" for part in parts if part.weight != 0}
    return "both" if len(kinds) > 1 else "text" if kinds == {"text"} else "image"


@dataclass(frozen=True)
class SearchOptions:
    k: int = 10
    offset: int = 0
    filters: ImageFilter = field(default_factory=ImageFilter)
    min_score: float | None = None
    group_by: str | None = None  # "study" or "patient": the best image of each
    exclude: tuple[int, ...] = ()  # image ids left out (the query image of "more like this")
    probe: ProbeCondition | None = None  # only images a probe calls positive (exact: every image scored)
    order: Order = "relevance"  # or by the probe's probability, or by study date
    mode: Mode = "image"  # image similarity, the reports, or both fused (search_api/services/fusion.py)
    assertions: tuple[str, ...] | None = None  # report findings asserted so; None: as the query says
    fusion: Fusion = field(default_factory=Fusion)


@dataclass(frozen=True)
class MatchInfo:
    """Why a result matched: its place in each ranking (1 = best; None: not in that ranking's window or
    not matched), the report engine's relevance, and the fused score of a hybrid search."""

    image_rank: int | None = None
    report_rank: int | None = None
    report_score: float | None = None
    fused_score: float | None = None


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float | None  # cosine to the query; None without a query (a filter-only search)
    probability: float | None  # SigLIP's calibrated probability, for single text queries
    image: StoredImage
    probe_probability: float | None = None  # the filtering probe's probability of its label
    match: MatchInfo | None = None  # report and hybrid searches
    study: tuple[int | None, int | None] = (None, None)  # its study's images and series (SearchService.page)


@dataclass(frozen=True)
class Matches:
    total: int
    facets: dict[str, dict[str, int]] | None  # field -> value -> images
    total_at_least: bool = False  # groups counted among the first count_limit matching images only
    facets_counted: int | None = None  # the facets counted this many of the matching images (the first by id)


@dataclass(frozen=True)
class ReportPlan:
    """A query's text as the report index reads it (None match: nothing it could find, and why)."""

    query: ReportQuery
    match: ReportMatch
    reason: str | None = None  # why no report can match: stop words only, no words at all


@dataclass(frozen=True)
class Prepared:
    """What a page of results and its total share, each computed once per request: the query vector
    (None without a query), the candidate set of the filters (None: every image), and for report and
    hybrid searches the report query and, where needed (report mode, an assertion filter), its matches
    among the candidates."""

    vector: np.ndarray | None
    candidates: Candidates | None
    report: ReportPlan | None = None
    kind: QueryKind = "image"  # which search effort the vector index uses for it (storage/vectors/effort.py)
    report_ids: np.ndarray | None = None  # every matching image the candidates allow, ascending; or not needed
    checked: ImageFilter | None = None  # filters checked on the nearest images instead of listed (a broad one)
    share: float = 1.0  # the estimated share of images `checked` lets through


@dataclass(frozen=True)
class Candidates:
    """The ids a search may return (ascending), and the probe's probability of each when one filters."""

    ids: np.ndarray
    probability: np.ndarray | None


def probability_of(candidates: Candidates | None, image_id: int) -> float | None:
    """The probe's probability of one candidate (None without a probe, or for an id not among them)."""
    if candidates is None or candidates.probability is None:
        return None
    at = int(np.searchsorted(candidates.ids, image_id))
    return float(candidates.probability[at]) if at < len(candidates.ids) and candidates.ids[at] == image_id else None


def new_group(image: StoredImage, group_by: str | None, seen: set[str]) -> bool:
    """Whether the image is the first of its study / patient (always true without grouping)."""
    if not group_by:
        return True
    meta = image.metadata
    key = (meta.study_uid if group_by == "study" else meta.patient_id) or f"image:{image.id}"
    if key in seen:
        return False
    seen.add(key)
    return True
