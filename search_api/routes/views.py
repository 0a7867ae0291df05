"""What a caller's role may see, turned into response models: one image, a classification, the model,
and a page of results as CSV or JSON for export. Every route builds its answers here, so that the
researcher allow-list (search_api/security/redact.py) is applied in one place."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from fastapi.responses import Response

from core.csvsafe import csv_text
from core.sources.dicomweb_locations import instance_url, viewer_url
from search_api.errors import FieldError
from search_api.schemas.search import (
    RANDOM_MODEL_WARNING,
    ClassifyResponse,
    Filters,
    ImageMetadataOut,
    LabelScoreOut,
    ModelInfo,
    NeighbourVote,
    SearchOptionsIn,
    SearchResponse,
    Source,
)
from search_api.security.auth import AccessControl, Principal
from search_api.services.classifying import Classification
from search_api.services.search import SearchService
from storage.records import ImageFilter, StoredImage
from storage.sql.browse import FACET_FIELDS

# a facet reveals the values of the field it counts
FACET_NEEDS = {"modality": "modality", "body_part": "body_part", "patient_sex": "patient_sex", "year": "study_date"}


def model_info(service: SearchService) -> ModelInfo:
    fp = service.encoder.fingerprint
    name = fp.name.rstrip("/").rsplit("/", 1)[-1] if fp.name.startswith(("/", ".")) else fp.name
    return ModelInfo(name=name, revision=fp.revision, fingerprint=fp.key, dim=fp.dim, device=service.device,
                     random_weights=fp.random_weights, warning=RANDOM_MODEL_WARNING if fp.random_weights else None)


def researcher(principal: Principal) -> bool:
    return principal.role == "researcher"


def may_see(access: AccessControl, principal: Principal, name: str) -> bool:
    """Whether the caller sees the metadata field `name` as it is (researchers: the allow-list)."""
    return not researcher(principal) or name in access.redactor.fields


def shallow(record: Any) -> dict[str, Any]:
    """A record's fields as a dict, values as they are (`dataclasses.asdict` deep-copies every value: it
    was a third of a search's time in the server)."""
    return {item.name: getattr(record, item.name) for item in fields(record)}


def image_parts(image: StoredImage, service: SearchService, access: AccessControl, principal: Principal
                ) -> dict[str, Any]:
    """The response fields of one image, as this caller's role may see them."""
    sources = []
    for stored in image.sources:
        identifiers = {"study_uid": stored.study_uid, "series_uid": stored.series_uid, "sop_uid": stored.sop_uid}
        source = {**shallow(stored), "url": instance_url(stored.archive, stored.path),
                  "viewer_url": viewer_url(service.viewer_url_template, stored.archive, identifiers)}
        source.pop("id")
        sources.append(Source(**(access.redactor.source(source) if researcher(principal) else source)))
    metadata = access.redactor.metadata(image.metadata) if researcher(principal) else shallow(image.metadata)
    return {"image_id": image.id, "kind": image.kind, "source": sources[0], "sources": sources,
            "metadata": ImageMetadataOut(**metadata)}


def facet_names(access: AccessControl, principal: Principal) -> list[str]:
    """The facets this caller may count: a count per value reveals the values."""
    return [name for name in FACET_FIELDS if may_see(access, principal, FACET_NEEDS[name])]


def to_filter(filters: Filters | None) -> ImageFilter:
    if filters is None:
        return ImageFilter()
    return ImageFilter(modality=tuple(filters.modality), body_part=tuple(filters.body_part),
                       patient_sex=filters.patient_sex, age_min=filters.age_min, age_max=filters.age_max,
                       study_date_from=filters.study_date_from, study_date_to=filters.study_date_to,
                       manufacturer=filters.manufacturer, labels=tuple(filters.labels),
                       description=filters.description)


def check_filters(request: SearchOptionsIn, access: AccessControl, principal: Principal) -> None:
    """Researchers may filter only on fields they may see (a filter tells what a hidden field holds), and
    order by a study date only when they may see it."""
    if not researcher(principal):
        return
    if request.order in ("newest", "oldest") and access.redactor.forbidden_filters(["study_date_from"]):
        raise FieldError(403, ("body", "order"), "the researcher role may not order by study date: the field is "
                         "not in MEDSEARCH_RESEARCHER_FIELDS", "forbidden_order")
    if request.filters is None:
        return
    given = [name for name, value in request.filters if value not in (None, [])]
    for name in access.redactor.forbidden_filters(given):
        raise FieldError(403, ("body", "filters", name), f"the researcher role may not filter on {name}: its "
                         "field is not in MEDSEARCH_RESEARCHER_FIELDS", "forbidden_filter")


def classify_response(result: Classification, service: SearchService) -> ClassifyResponse:
    info = model_info(service)
    return ClassifyResponse(
        labels=[LabelScoreOut(label=s.label, probability=s.probability, softmax=s.softmax, cosine=s.cosine)
                for s in result.labels], probe=result.probe,
        entropy=result.entropy, requires_human_review=result.requires_human_review,
        review_reasons=result.review_reasons, neighbours=result.neighbours,
        neighbour_votes=[NeighbourVote(label=label, count=n, frequency=f) for label, n, f in result.neighbour_votes],
        model=info, warning=info.warning)


# -- export ---------------------------------------------------------------------------------------------
EXPORT_SOURCE = ("archive", "path", "frame_index")


def export_rows(response: SearchResponse) -> tuple[list[str], list[list[Any]]]:
    """One row per result: rank, score, probabilities, ids, the first source, then the metadata fields
    the response carries (already what the caller's role may see; labels joined by ';')."""
    metadata_fields = [name for name in ImageMetadataOut.model_fields if name != "extra"]
    header = ["rank", "score", "probability", "probe_probability", "image_id", "kind", *EXPORT_SOURCE,
              "study_images", *metadata_fields]
    rows = []

    def figure(value: float | None) -> str:
        return "" if value is None else f"{value:.6f}"

    for result in response.results:
        meta = result.metadata.model_dump()
        cells = [result.rank, figure(result.score), figure(result.probability), figure(result.probe_probability),
                 result.image_id, result.kind,
                 *(getattr(result.source, name) for name in EXPORT_SOURCE), result.study_images]
        for name in metadata_fields:
            value = meta[name]
            cells.append(";".join(value) if isinstance(value, list) else "" if value is None else value)
        rows.append(cells)
    return header, rows


def export_response(response: SearchResponse, form: str) -> Response:
    """The results as a downloadable CSV (cells that a spreadsheet would run as formulas are escaped)
    or JSON file."""
    if form == "csv":
        header, rows = export_rows(response)
        body, media, suffix = csv_text(header, rows), "text/csv; charset=utf-8", "csv"
    else:
        body = json.dumps(response.model_dump(mode="json"), indent=1)
        media, suffix = "application/json", "json"
    return Response(content=body, media_type=media, headers={
        "Content-Disposition": f'attachment; filename="medsearch-results.{suffix}"', "Cache-Control": "no-store"})
