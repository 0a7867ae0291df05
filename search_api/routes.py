"""Route handlers: thin; the work is in SearchService, errors become HTTP answers in search_api/errors.py,
every route that touches patient data is audited by a dependency (search_api/auth.py)."""

from __future__ import annotations

import html
from dataclasses import asdict
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Path, Query, UploadFile
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from core.images import LoadedImage
from search_api.auth import (
    AccessControl,
    AccessDep,
    AdminDep,
    Audit,
    CallerDep,
    ClassifyAudit,
    PreviewAudit,
    Principal,
    SearchAudit,
    ViewAudit,
)
from search_api.deps import ServiceDep, SettingsDep
from search_api.errors import FieldError, UnknownImageError
from search_api.presets import PRESETS
from search_api.schemas import (
    RANDOM_MODEL_WARNING,
    BatchSearchRequest,
    BatchSearchResponse,
    ClassifyResponse,
    CompositeSearchRequest,
    ErrorResponse,
    Filters,
    HealthResponse,
    ImageMetadataOut,
    ImageResponse,
    LabelScoreOut,
    ModelInfo,
    NeighbourVote,
    SearchOptionsIn,
    SearchResponse,
    SearchResult,
    SimilarSearchRequest,
    Source,
    TextSearchRequest,
)
from search_api.service import QueryPart, SearchOptions, SearchService
from storage.records import ImageFilter, StoredImage

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (404, 413, 422)}
Kind = Literal["text", "image", "similar", "composite"]


def model_info(service: SearchService) -> ModelInfo:
    fp = service.encoder.fingerprint
    name = fp.name.rstrip("/").rsplit("/", 1)[-1] if fp.name.startswith(("/", ".")) else fp.name
    return ModelInfo(name=name, revision=fp.revision, fingerprint=fp.key, dim=fp.dim, device=service.device,
                     random_weights=fp.random_weights, warning=RANDOM_MODEL_WARNING if fp.random_weights else None)


def image_parts(image: StoredImage, service: SearchService, access: AccessControl, principal: Principal
                ) -> dict[str, Any]:
    """The response fields of one image, as this caller's role may see them."""
    researcher = principal.role == "researcher"
    sources = []
    for stored in image.sources:
        links = service.links(stored)
        source = {**asdict(stored), "url": links.url, "viewer_url": links.viewer_url}
        source.pop("id")
        sources.append(Source(**(access.redactor.source(source) if researcher else source)))
    metadata = access.redactor.metadata(image.metadata) if researcher else asdict(image.metadata)
    return {"image_id": image.id, "kind": image.kind, "source": sources[0], "sources": sources,
            "metadata": ImageMetadataOut(**metadata)}


def to_filter(filters: Filters | None) -> ImageFilter:
    if filters is None:
        return ImageFilter()
    return ImageFilter(modality=tuple(filters.modality), body_part=tuple(filters.body_part),
                       patient_sex=filters.patient_sex, age_min=filters.age_min, age_max=filters.age_max,
                       study_date_from=filters.study_date_from, study_date_to=filters.study_date_to,
                       manufacturer=filters.manufacturer, labels=tuple(filters.labels),
                       description=filters.description)


def check_filters(request: SearchOptionsIn, access: AccessControl, principal: Principal) -> None:
    """Researchers may filter only on fields they may see (a filter tells what a hidden field holds)."""
    if principal.role != "researcher" or request.filters is None:
        return
    given = [name for name, value in request.filters if value not in (None, [])]
    for name in access.redactor.forbidden_filters(given):
        raise FieldError(403, ("body", "filters", name), f"the researcher role may not filter on {name}: its "
                         "field is not in MEDSEARCH_RESEARCHER_FIELDS", "forbidden_filter")


def run_search(service: SearchService, access: AccessControl, principal: Principal, audit: Audit, kind: Kind,
               parts: list[QueryPart], request: SearchOptionsIn, exclude: tuple[int, ...] = ()) -> SearchResponse:
    check_filters(request, access, principal)
    audit.kind = kind
    hits = service.search(parts, SearchOptions(k=request.k, offset=request.offset, filters=to_filter(request.filters),
                                               min_score=request.min_score, group_by=request.group_by,
                                               exclude=exclude))
    audit.ids += [hit.image.id for hit in hits]
    info = model_info(service)
    results = [SearchResult(rank=h.rank, score=h.score, probability=h.probability,
                            **image_parts(h.image, service, access, principal)) for h in hits]
    return SearchResponse(query_kind=kind, k=request.k, offset=request.offset, results=results, model=info,
                          warning=info.warning)


def composite_parts(request: CompositeSearchRequest) -> list[QueryPart]:
    return [QueryPart(weight=p.weight, text=p.text, image_id=p.image_id) for p in request.parts]


async def read_upload(file: UploadFile, service: SearchService, max_bytes: int) -> LoadedImage:
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FieldError(413, ("body", "file"), f"the upload exceeds the limit of {max_bytes} bytes", "too_large")
    source = "uploaded file"  # the file's own name is the caller's and may name the patient: never echoed
    return await run_in_threadpool(service.load_query_image, data, source)


def form_filters(raw: str | None) -> Filters | None:
    if not raw:
        return None
    try:
        return Filters.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise FieldError(422, ("body", "filters", *([where] if where else [])), first["msg"],
                         "invalid_filters") from None


@router.post("/search/text", response_model=SearchResponse, responses=ERRORS, tags=["search"])
def search_text(body: TextSearchRequest, service: ServiceDep, access: AccessDep, caller: CallerDep,
                audit: SearchAudit) -> SearchResponse:
    """Rank indexed images by similarity to a text description; `probability` is SigLIP's calibrated
    probability that the image matches the text."""
    return run_search(service, access, caller, audit, "text", [QueryPart(text=body.query)], body)


@router.post("/search/image", response_model=SearchResponse, responses=ERRORS, tags=["search"])
async def search_image(
    service: ServiceDep,
    settings: SettingsDep,
    access: AccessDep,
    caller: CallerDep,
    audit: SearchAudit,
    file: Annotated[UploadFile, File(description="A DICOM, PNG or JPEG image.")],
    k: Annotated[int, Form(ge=1, le=1000, description="How many results, 1..1000.")] = 10,
    offset: Annotated[int, Form(ge=0, le=10_000)] = 0,
    min_score: Annotated[float | None, Form(ge=-1, le=1)] = None,
    group_by: Annotated[Literal["study", "patient"] | None, Form()] = None,
    filters: Annotated[str | None, Form(description="Filters as JSON, as in /search/text.")] = None,
) -> SearchResponse:
    """Rank indexed images by similarity to an uploaded image, decoded exactly as the indexer does."""
    audit.kind = "image"
    request = SearchOptionsIn(k=k, offset=offset, min_score=min_score, group_by=group_by,
                              filters=form_filters(filters))
    check_filters(request, access, caller)
    image = await read_upload(file, service, settings.max_upload_bytes)
    return await run_in_threadpool(run_search, service, access, caller, audit, "image", [QueryPart(image=image)],
                                   request)


@router.post("/search/similar", response_model=SearchResponse, responses=ERRORS, tags=["search"])
def search_similar(body: SimilarSearchRequest, service: ServiceDep, access: AccessDep, caller: CallerDep,
                   audit: SearchAudit) -> SearchResponse:
    """More like this: cases similar to an indexed image (the image itself left out)."""
    return run_search(service, access, caller, audit, "similar", [QueryPart(image_id=body.image_id)], body,
                      exclude=(body.image_id,))


@router.post("/search", response_model=SearchResponse, responses=ERRORS, tags=["search"])
def search_composite(body: CompositeSearchRequest, service: ServiceDep, access: AccessDep, caller: CallerDep,
                     audit: SearchAudit) -> SearchResponse:
    """A weighted combination of indexed images and texts, for example
    `[{"image_id": 12}, {"text": "pleural effusion"}, {"text": "chest tube", "weight": -0.5}]`."""
    return run_search(service, access, caller, audit, "composite", composite_parts(body), body)


@router.post("/search/batch", response_model=BatchSearchResponse, responses=ERRORS, tags=["search"])
def search_batch(body: BatchSearchRequest, service: ServiceDep, access: AccessDep, caller: CallerDep,
                 audit: SearchAudit) -> BatchSearchResponse:
    """Several composite queries in one request, answered in order."""
    return BatchSearchResponse(responses=[run_search(service, access, caller, audit, "composite",
                                                     composite_parts(query), query) for query in body.queries])


@router.post("/classify", response_model=ClassifyResponse, responses=ERRORS, tags=["classify"])
async def classify(
    service: ServiceDep,
    settings: SettingsDep,
    audit: ClassifyAudit,
    file: Annotated[UploadFile, File(description="A DICOM, PNG or JPEG image.")],
    labels: Annotated[str | None, Form(description="Candidate labels, one per line or comma-separated.")] = None,
    preset: Annotated[str | None, Form(description=f"Or a preset: {', '.join(PRESETS)}.")] = None,
    neighbours: Annotated[int, Form(ge=0, le=100, description="Nearest indexed cases whose labels vote.")] = 10,
) -> ClassifyResponse:
    """Zero-shot labels with SigLIP's semantics: each label's own sigmoid probability, the softmax across
    the labels and its entropy, a flag when a person should look, and the labels of similar cases."""
    audit.kind = preset or "labels"
    if preset is not None and preset not in PRESETS:
        raise FieldError(422, ("body", "preset"), f"unknown preset; one of {', '.join(PRESETS)}", "unknown_preset")
    if preset:
        prompts = PRESETS[preset]
    else:
        names = [part.strip() for part in (labels or "").replace("\n", ",").split(",") if part.strip()]
        if not names or len(names) > 100:
            raise FieldError(422, ("body", "labels"), "give 1 to 100 labels, or a preset", "missing_labels")
        prompts = {name[:200]: name[:200] for name in dict.fromkeys(names)}
    image = await read_upload(file, service, settings.max_upload_bytes)
    result = await run_in_threadpool(service.classify, image, prompts, neighbours)
    info = model_info(service)
    return ClassifyResponse(
        labels=[LabelScoreOut(label=s.label, probability=s.probability, softmax=s.softmax, cosine=s.cosine)
                for s in result.labels],
        entropy=result.entropy, requires_human_review=result.requires_human_review,
        review_reasons=result.review_reasons, neighbours=result.neighbours,
        neighbour_votes=[NeighbourVote(label=label, count=n, frequency=f) for label, n, f in result.neighbour_votes],
        model=info, warning=info.warning)


@router.get("/presets", tags=["classify"])
def presets() -> dict[str, list[str]]:
    """The label presets of /classify."""
    return {name: list(prompts) for name, prompts in PRESETS.items()}


@router.get("/images/{image_id}", response_model=ImageResponse, responses=ERRORS, tags=["images"])
def get_image(image_id: Annotated[int, Path(ge=0, le=2**62)], service: ServiceDep, access: AccessDep,
              caller: CallerDep, audit: ViewAudit) -> ImageResponse:
    """The stored metadata and sources of one indexed image."""
    audit.ids.append(image_id)
    image = service.get_image(image_id)
    if image is None:
        raise UnknownImageError(image_id, loc=("path", "image_id"))
    info = model_info(service)
    return ImageResponse(**image_parts(image, service, access, caller), model=info, warning=info.warning)


@router.get("/images/{image_id}/preview", responses={**ERRORS, 200: {"content": {"image/png": {}}}},
            response_class=Response, tags=["images"])
def preview(image_id: Annotated[int, Path(ge=0, le=2**62)], service: ServiceDep, audit: PreviewAudit,
            size: Annotated[int, Query(ge=32, le=1024, description="Longest side in pixels.")] = 256) -> Response:
    """The image as PNG, rendered with the same windowing as for indexing, from the file recorded for
    this id (never a path taken from the request). Never cached by the browser."""
    audit.ids.append(image_id)
    png = service.preview(image_id, size)
    return Response(content=png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/audit", responses=ERRORS, tags=["service"])
def audit_log(access: AccessDep, _admin: AdminDep,
              limit: Annotated[int, Query(ge=1, le=100_000)] = 1000) -> list[dict[str, Any]]:
    """The most recent audit records (admins only): who searched, viewed or previewed what, when, and
    the failed authentications."""
    if access.store is None:
        return []
    records = list(access.store.audit())
    return records[-limit:]


@router.get("/health", response_model=HealthResponse, tags=["service"])
def health(service: ServiceDep) -> HealthResponse:
    """Model name, embedding dimension and the number of indexed vectors (no key needed: nothing here
    names a patient or a path on the server)."""
    info = model_info(service)
    return HealthResponse(status="ok", model=info, vectors=service.store.ntotal,
                          images=service.repository.count_images(), warning=info.warning)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def home(service: ServiceDep) -> str:
    """The web page: search box, image upload, filters, results grid, case view."""
    page = resources.files("search_api").joinpath("static/index.html").read_text()
    warning = model_info(service).warning
    if warning:  # in the HTML itself, not only once the script has run
        page = page.replace('<div id="banner" role="alert"></div>',
                            f'<div id="banner" role="alert" style="display:block">{html.escape(warning)}</div>')
    return page
