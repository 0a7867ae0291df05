"""Route handlers for searching, classifying uploads and the service: thin; the work is in SearchService,
answers are built per role in search_api/routes/views.py, errors become HTTP answers in search_api/errors.py,
and every route that touches patient data is audited by a dependency (search_api/security/auth.py). The image
routes (viewing, study and series, downloads) are in search_api/routes/images.py."""

from __future__ import annotations

import html
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from core.imaging.images import LoadedImage
from search_api.errors import FieldError
from search_api.routes.deps import ServiceDep, SettingsDep
from search_api.routes.modes import matches_out, report_query_out, resolve
from search_api.routes.presets import PRESETS, prompts_for
from search_api.routes.upload import read_limited
from search_api.routes.views import (
    check_filters,
    classify_response,
    export_response,
    facet_names,
    image_parts,
    model_info,
    to_filter,
)
from search_api.schemas.images import WhoAmI
from search_api.schemas.reports import FusionIn
from search_api.schemas.search import (
    BatchSearchRequest,
    BatchSearchResponse,
    ClassifyResponse,
    CompositeSearchRequest,
    ErrorResponse,
    Filters,
    HealthResponse,
    SearchOptionsIn,
    SearchResponse,
    SearchResult,
    SimilarSearchRequest,
    TextSearchRequest,
)
from search_api.security.auth import (
    DOWNLOAD_ROLES,
    AccessControl,
    AccessDep,
    AdminDep,
    Audit,
    CallerDep,
    ClassifyAudit,
    Principal,
    SearchAudit,
)
from search_api.services.classifying import classify as classify_image
from search_api.services.query import Fusion, ProbeCondition, QueryPart, SearchOptions
from search_api.services.search import SearchService

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (404, 413, 422)}
Kind = Literal["text", "image", "similar", "composite", "filter"]


Export = Annotated[Literal["csv", "json"] | None, Query(
    alias="format", description="csv or json: the results as a file to download (audited as an export).")]
EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {**ERRORS, 200: {"content": {
    "application/json": {}, "text/csv": {}}, "description": "The results, or with ?format= a file."}}


def run_search(service: SearchService, access: AccessControl, principal: Principal, audit: Audit, kind: Kind,
               parts: list[QueryPart], request: SearchOptionsIn, exclude: tuple[int, ...] = ()) -> SearchResponse:
    """One page of results with their total (and facets when asked), as the caller's role may see them, in
    the mode that answers (search_api/routes/modes.py)."""
    check_filters(request, access, principal)
    audit.kind = kind
    resolved = resolve(service, access, principal, parts, request)
    probe = request.filters.probe if request.filters else None
    assertions = tuple(request.filters.assertion) if request.filters and request.filters.assertion else None
    fusion = request.fusion or FusionIn()
    options = SearchOptions(k=request.k, offset=request.offset, filters=to_filter(request.filters),
                            min_score=request.min_score, group_by=request.group_by, exclude=exclude,
                            probe=ProbeCondition(probe.name, probe.label, probe.min_probability) if probe else None,
                            order=request.order, mode=resolved.mode, assertions=assertions,
                            fusion=Fusion(fusion.k, fusion.report_weight, fusion.image_weight, fusion.window))
    hits, matches = service.page(parts, options, facet_names(access, principal) if request.facets else (),
                                 resolved.plan if resolved.mode != "image" else None)
    audit.ids += [hit.image.id for hit in hits]
    info = model_info(service)
    why = matches_out(service, access, principal, hits, resolved, assertions)
    results = []
    for hit, match in zip(hits, why, strict=True):
        images, series = hit.study
        results.append(SearchResult(rank=hit.rank, score=hit.score, probability=hit.probability,
                                    probe_probability=hit.probe_probability, match=match,
                                    study_images=images, study_series=series,
                                    **image_parts(hit.image, service, access, principal)))
    return SearchResponse(query_kind=kind, k=request.k, offset=request.offset, total=matches.total,
                          facets=matches.facets, total_at_least=matches.total_at_least,
                          facets_counted=matches.facets_counted, results=results, mode=resolved.mode,
                          notes=resolved.notes,
                          report_query=report_query_out(resolved.plan, assertions) if resolved.mode != "image"
                          else None, model=info, warning=info.warning)


def answer(response: SearchResponse, form: str | None, audit: Audit) -> Response:
    """The page as JSON (serialised once, by its own model: FastAPI would validate it again against the
    response model and encode it twice), or as the export `form` asks for."""
    if form is None:
        return Response(response.model_dump_json(), media_type="application/json")
    audit.action = "export"
    return export_response(response, form)


def composite_parts(request: CompositeSearchRequest) -> list[QueryPart]:
    return [QueryPart(weight=p.weight, text=p.text, image_id=p.image_id) for p in request.parts]


async def read_upload(file: UploadFile, service: SearchService, max_bytes: int) -> LoadedImage:
    data = await read_limited(file, max_bytes)
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


@router.post("/search/text", response_model=SearchResponse, responses=EXPORT_RESPONSES, tags=["search"])
def search_text(body: TextSearchRequest, service: ServiceDep, access: AccessDep, caller: CallerDep,
                audit: SearchAudit, form: Export = None) -> Response:
    """Rank indexed images by similarity to a text description; `probability` is SigLIP's calibrated
    probability that the image matches the text."""
    return answer(run_search(service, access, caller, audit, "text", [QueryPart(text=body.query)], body), form,
                  audit)


@router.post("/search/image", response_model=SearchResponse, responses=EXPORT_RESPONSES, tags=["search"])
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
    facets: Annotated[bool, Form(description="Also count matches per value, as in /search/text.")] = False,
    order: Annotated[Literal["relevance", "probability", "newest", "oldest"], Form(
        description="As in /search/text.")] = "relevance",
    form: Export = None,
) -> Response:
    """Rank indexed images by similarity to an uploaded image, decoded exactly as the indexer does."""
    audit.kind = "image"
    request = SearchOptionsIn(k=k, offset=offset, min_score=min_score, group_by=group_by,
                              filters=form_filters(filters), facets=facets, order=order)
    check_filters(request, access, caller)
    image = await read_upload(file, service, settings.max_upload_bytes)
    response = await run_in_threadpool(run_search, service, access, caller, audit, "image",
                                       [QueryPart(image=image)], request)
    return answer(response, form, audit)


@router.post("/search/similar", response_model=SearchResponse, responses=EXPORT_RESPONSES, tags=["search"])
def search_similar(body: SimilarSearchRequest, service: ServiceDep, access: AccessDep, caller: CallerDep,
                   audit: SearchAudit, form: Export = None) -> Response:
    """More like this: cases similar to an indexed image (the image itself left out)."""
    return answer(run_search(service, access, caller, audit, "similar", [QueryPart(image_id=body.image_id)], body,
                             exclude=(body.image_id,)), form, audit)


@router.post("/search", response_model=SearchResponse, responses=EXPORT_RESPONSES, tags=["search"])
def search_composite(body: CompositeSearchRequest, service: ServiceDep, access: AccessDep, caller: CallerDep,
                     audit: SearchAudit, form: Export = None) -> Response:
    """A weighted combination of indexed images and texts, for example
    `[{"image_id": 12}, {"text": "pleural effusion"}, {"text": "chest tube", "weight": -0.5}]`."""
    return answer(run_search(service, access, caller, audit, "composite", composite_parts(body), body), form,
                  audit)


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
    probe: Annotated[str | None, Form(max_length=128, description="Or a probe of GET /probes: its labels with "
                                      "its calibrated probabilities.")] = None,
    neighbours: Annotated[int, Form(ge=0, le=100, description="Nearest indexed cases whose labels vote.")] = 10,
) -> ClassifyResponse:
    """Zero-shot labels with SigLIP's semantics: each label's own sigmoid probability, the softmax across
    the labels and its entropy, a flag when a person should look, and the labels of similar cases. With
    `probe`, a site's own trained classifier scores its labels instead (calibrated on held-out folds)."""
    audit.kind = f"probe:{probe}" if probe else preset or "labels"
    if probe and (labels or preset):
        raise FieldError(422, ("body", "probe"), "give labels, a preset or a probe (one of them)", "value_error")
    trained = service.probe(probe) if probe else None
    prompts = None if trained else prompts_for((labels or "").replace("\n", ",").split(","), preset)
    image = await read_upload(file, service, settings.max_upload_bytes)
    result = await run_in_threadpool(classify_image, service, image, prompts, neighbours, trained)
    return classify_response(result, service)


@router.get("/presets", tags=["classify"])
def presets() -> dict[str, list[str]]:
    """The label presets of /classify."""
    return {name: list(prompts) for name, prompts in PRESETS.items()}


@router.get("/audit", responses=ERRORS, tags=["service"])
def audit_log(access: AccessDep, _admin: AdminDep,
              limit: Annotated[int, Query(ge=1, le=100_000)] = 1000) -> list[dict[str, Any]]:
    """The most recent audit records (admins only): who searched, viewed or previewed what, when, and
    the failed authentications."""
    if access.store is None:
        return []
    records = list(access.store.audit())
    return records[-limit:]


@router.get("/whoami", response_model=WhoAmI, tags=["service"])
def whoami(access: AccessDep, caller: CallerDep) -> WhoAmI:
    """The caller's role and what it may do (the web page shows only what works for it)."""
    return WhoAmI(role=caller.role, may_download=caller.role in DOWNLOAD_ROLES,  # type: ignore[arg-type]
                  researcher_fields=sorted(access.redactor.fields))


@router.get("/windows", tags=["images"])
def windows(settings: SettingsDep) -> dict[str, Any]:
    """The window presets of the preview (centre, width in modality units) and the indexing window."""
    return {"presets": {name: list(pair) for name, pair in settings.window_presets.items()},
            "indexing": settings.window}


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
        page = page.replace('<div id="banner" role="alert" hidden></div>',
                            f'<div id="banner" role="alert">{html.escape(warning)}</div>')
    return page
