"""Route handlers: thin; the work is in SearchService."""

from __future__ import annotations

import html
from importlib import resources
from typing import Annotated, Any, Literal, NoReturn

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, UploadFile
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from core.errors import ImageError, ImageTooLargeError, NoPixelDataError, NotAnImageError
from core.images import LoadedImage
from search_api.auth import AccessControl, AccessDep, AdminDep, CallerDep, Principal
from search_api.deps import ServiceDep, SettingsDep
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
from search_api.service import PreviewError, QueryPart, SearchOptions, SearchService, UnknownImageError
from storage.repository import ImageFilter

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (404, 413, 422)}
Kind = Literal["text", "image", "similar", "composite"]


def field_error(status: int, loc: list[str | int], msg: str, kind: str) -> NoReturn:
    raise HTTPException(status_code=status, detail=[{"loc": loc, "msg": msg, "type": kind}])


def model_info(service: SearchService) -> ModelInfo:
    fp = service.encoder.fingerprint
    return ModelInfo(name=fp.name, revision=fp.revision, fingerprint=fp.key, dim=fp.dim, device=service.device,
                     random_weights=fp.random_weights,
                     warning=RANDOM_MODEL_WARNING if fp.random_weights else None)


def image_parts(row: dict[str, Any]) -> dict[str, Any]:
    sources = [Source(**source) for source in row["sources"]]
    return {
        "image_id": row["id"],
        "kind": row["kind"],
        "source": sources[0],
        "sources": sources,
        "metadata": ImageMetadataOut.model_validate({k: row.get(k) for k in ImageMetadataOut.model_fields
                                                    if row.get(k) is not None}),
    }


def to_filter(filters: Filters | None) -> ImageFilter:
    if filters is None:
        return ImageFilter()
    return ImageFilter(modality=tuple(filters.modality), body_part=tuple(filters.body_part),
                       patient_sex=filters.patient_sex, age_min=filters.age_min, age_max=filters.age_max,
                       study_date_from=filters.study_date_from, study_date_to=filters.study_date_to,
                       manufacturer=filters.manufacturer, labels=tuple(filters.labels),
                       description=filters.description)


def to_options(request: SearchOptionsIn, exclude: tuple[int, ...] = ()) -> SearchOptions:
    return SearchOptions(k=request.k, offset=request.offset, filters=to_filter(request.filters),
                         min_score=request.min_score, group_by=request.group_by, exclude=exclude)


def run_search(service: SearchService, access: AccessControl, caller: Principal, kind: Kind,
               parts: list[QueryPart], request: SearchOptionsIn, loc: list[str | int],
               exclude: tuple[int, ...] = ()) -> SearchResponse:
    try:
        hits = service.search(parts, to_options(request, exclude))
    except UnknownImageError as exc:
        access.record(caller, "search", kind, [], 404)
        field_error(404, loc, str(exc), "not_found")
    access.record(caller, "search", kind, [h.image["id"] for h in hits])
    info = model_info(service)
    results = [SearchResult(rank=h.rank, score=h.score, probability=h.probability,
                            **image_parts(access.redact(caller, h.image))) for h in hits]
    return SearchResponse(query_kind=kind, k=request.k, offset=request.offset, results=results, model=info,
                          warning=info.warning)


def composite_parts(request: CompositeSearchRequest) -> list[QueryPart]:
    return [QueryPart(weight=p.weight, text=p.text, image_id=p.image_id) for p in request.parts]


async def read_upload(file: UploadFile, service: SearchService, max_bytes: int) -> LoadedImage:
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        field_error(413, ["body", "file"], f"upload exceeds {max_bytes} bytes", "too_large")
    source = f"uploaded file {file.filename!r}" if file.filename else "uploaded file"
    try:
        return await run_in_threadpool(service.load_query_image, data, source)
    except ImageTooLargeError as exc:
        field_error(413, ["body", "file"], str(exc), "too_large")
    except NotAnImageError as exc:
        field_error(422, ["body", "file"], f"{exc.reason}", "not_an_image")
    except NoPixelDataError as exc:
        field_error(422, ["body", "file"], f"DICOM without an image: {exc.reason}", "no_pixel_data")
    except ImageError as exc:
        field_error(422, ["body", "file"], f"unreadable image: {exc.reason}", "unreadable_image")


def form_filters(raw: str | None) -> Filters | None:
    if not raw:
        return None
    try:
        return Filters.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        field_error(422, ["body", "filters", *([where] if where else [])], first["msg"], "invalid_filters")


@router.post("/search/text", response_model=SearchResponse, responses=ERRORS, tags=["search"])
def search_text(body: TextSearchRequest, service: ServiceDep, access: AccessDep, caller: CallerDep) -> SearchResponse:
    """Rank indexed images by similarity to a text description; `probability` is SigLIP's calibrated
    probability that the image matches the text."""
    return run_search(service, access, caller, "text", [QueryPart(text=body.query)], body, ["body", "query"])


@router.post("/search/image", response_model=SearchResponse, responses=ERRORS, tags=["search"])
async def search_image(
    service: ServiceDep,
    settings: SettingsDep,
    access: AccessDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="A DICOM, PNG or JPEG image.")],
    k: Annotated[int, Form(ge=1, le=1000, description="How many results, 1..1000.")] = 10,
    offset: Annotated[int, Form(ge=0, le=10_000)] = 0,
    min_score: Annotated[float | None, Form(ge=-1, le=1)] = None,
    group_by: Annotated[Literal["study", "patient"] | None, Form()] = None,
    filters: Annotated[str | None, Form(description="Filters as JSON, as in /search/text.")] = None,
) -> SearchResponse:
    """Rank indexed images by similarity to an uploaded image, decoded exactly as the indexer does."""
    image = await read_upload(file, service, settings.max_upload_bytes)
    request = SearchOptionsIn(k=k, offset=offset, min_score=min_score, group_by=group_by,
                              filters=form_filters(filters))
    return await run_in_threadpool(run_search, service, access, caller, "image", [QueryPart(image=image)], request,
                                   ["body", "file"])


@router.post("/search/similar", response_model=SearchResponse, responses=ERRORS, tags=["search"])
def search_similar(body: SimilarSearchRequest, service: ServiceDep, access: AccessDep,
                   caller: CallerDep) -> SearchResponse:
    """More like this: cases similar to an indexed image (the image itself left out)."""
    return run_search(service, access, caller, "similar", [QueryPart(image_id=body.image_id)], body,
                      ["body", "image_id"], exclude=(body.image_id,))


@router.post("/search", response_model=SearchResponse, responses=ERRORS, tags=["search"])
def search_composite(body: CompositeSearchRequest, service: ServiceDep, access: AccessDep,
                     caller: CallerDep) -> SearchResponse:
    """A weighted combination of indexed images and texts, for example
    `[{"image_id": 12}, {"text": "pleural effusion"}, {"text": "chest tube", "weight": -0.5}]`."""
    return run_search(service, access, caller, "composite", composite_parts(body), body, ["body", "parts"])


@router.post("/search/batch", response_model=BatchSearchResponse, responses=ERRORS, tags=["search"])
def search_batch(body: BatchSearchRequest, service: ServiceDep, access: AccessDep,
                 caller: CallerDep) -> BatchSearchResponse:
    """Several composite queries in one request, answered in order."""
    return BatchSearchResponse(responses=[
        run_search(service, access, caller, "composite", composite_parts(query), query,
                   ["body", "queries", i, "parts"]) for i, query in enumerate(body.queries)])


@router.post("/classify", response_model=ClassifyResponse, responses=ERRORS, tags=["classify"])
async def classify(
    service: ServiceDep,
    settings: SettingsDep,
    access: AccessDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="A DICOM, PNG or JPEG image.")],
    labels: Annotated[str | None, Form(description="Candidate labels, one per line or comma-separated.")] = None,
    preset: Annotated[str | None, Form(description=f"Or a preset: {', '.join(PRESETS)}.")] = None,
    neighbours: Annotated[int, Form(ge=0, le=100, description="Nearest indexed cases whose labels vote.")] = 10,
) -> ClassifyResponse:
    """Zero-shot labels with SigLIP's semantics: each label's own sigmoid probability, the softmax across
    the labels and its entropy, a flag when a person should look, and the labels of similar cases."""
    if preset is not None and preset not in PRESETS:
        field_error(422, ["body", "preset"], f"unknown preset; one of {', '.join(PRESETS)}", "unknown_preset")
    if preset:
        prompts = PRESETS[preset]
    else:
        names = [part.strip() for part in (labels or "").replace("\n", ",").split(",") if part.strip()]
        if not names or len(names) > 100:
            field_error(422, ["body", "labels"], "give 1 to 100 labels, or a preset", "missing_labels")
        prompts = {name[:200]: name[:200] for name in dict.fromkeys(names)}
    image = await read_upload(file, service, settings.max_upload_bytes)
    result = await run_in_threadpool(service.classify, image, prompts, neighbours)
    access.record(caller, "classify", preset or "labels", [])
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
              caller: CallerDep) -> ImageResponse:
    """The stored metadata and sources of one indexed image."""
    row = service.get_image(image_id)
    if row is None or not row["sources"]:
        access.record(caller, "view", None, [image_id], 404)
        field_error(404, ["path", "image_id"], f"no image with id {image_id}", "not_found")
    access.record(caller, "view", None, [image_id])
    info = model_info(service)
    return ImageResponse(**image_parts(access.redact(caller, row)), model=info, warning=info.warning)


@router.get("/images/{image_id}/preview", responses={**ERRORS, 200: {"content": {"image/png": {}}}},
            response_class=Response, tags=["images"])
def preview(image_id: Annotated[int, Path(ge=0, le=2**62)], service: ServiceDep, access: AccessDep,
            caller: CallerDep,
            size: Annotated[int, Query(ge=32, le=1024, description="Longest side in pixels.")] = 256) -> Response:
    """The image as PNG, rendered with the same windowing as for indexing, from the file recorded for
    this id (never a path taken from the request)."""
    try:
        png = service.preview(image_id, size)
    except UnknownImageError as exc:
        access.record(caller, "preview", None, [image_id], 404)
        field_error(404, ["path", "image_id"], str(exc), "not_found")
    except PreviewError as exc:
        access.record(caller, "preview", None, [image_id], 404)
        field_error(404, ["path", "image_id"], str(exc), "source_unreadable")
    access.record(caller, "preview", None, [image_id])
    return Response(content=png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/audit", responses=ERRORS, tags=["service"])
def audit_log(access: AccessDep, _admin: AdminDep,
              limit: Annotated[int, Query(ge=1, le=100_000)] = 1000) -> list[dict[str, Any]]:
    """The most recent audit records (admins only): who searched, viewed or previewed what, when."""
    if access.store is None:
        return []
    records = list(access.store.audit())
    return records[-limit:]


@router.get("/health", response_model=HealthResponse, tags=["service"])
def health(service: ServiceDep) -> HealthResponse:
    """Model, embedding dimension and the number of indexed vectors."""
    info = model_info(service)
    return HealthResponse(status="ok", model=info, vectors=service.store.ntotal,
                          images=service.store.repository.count_images(), warning=info.warning)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def home(service: ServiceDep) -> str:
    """The web page: search box, image upload, filters, results grid, case view."""
    page = resources.files("search_api").joinpath("static/index.html").read_text()
    warning = model_info(service).warning
    if warning:  # in the HTML itself, not only once the script has run
        page = page.replace('<div id="banner" role="alert"></div>',
                            f'<div id="banner" role="alert" style="display:block">{html.escape(warning)}</div>')
    return page
