"""Route handlers: thin; the work is in SearchService."""

from __future__ import annotations

import html
from typing import Annotated, Any, Literal, NoReturn

from fastapi import APIRouter, File, Form, HTTPException, Path, UploadFile
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from core.errors import ImageError, ImageTooLargeError, NoPixelDataError, NotAnImageError
from search_api.deps import ServiceDep, SettingsDep
from search_api.schemas import (
    RANDOM_MODEL_WARNING,
    ErrorResponse,
    HealthResponse,
    ImageMetadataOut,
    ImageResponse,
    ModelInfo,
    SearchResponse,
    SearchResult,
    Source,
    TextSearchRequest,
)
from search_api.service import Hit, SearchService

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (404, 413, 422)
}


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


def respond(service: SearchService, kind: Literal["text", "image"], k: int, hits: list[Hit]) -> SearchResponse:
    info = model_info(service)
    results = [SearchResult(rank=h.rank, score=h.score, **image_parts(h.image)) for h in hits]
    return SearchResponse(query_kind=kind, k=k, results=results, model=info, warning=info.warning)


@router.post("/search/text", response_model=SearchResponse, responses=ERRORS, tags=["search"])
def search_text(body: TextSearchRequest, service: ServiceDep) -> SearchResponse:
    """Rank indexed images by similarity to a text description."""
    return respond(service, "text", body.k, service.search_text(body.query, body.k))


@router.post("/search/image", response_model=SearchResponse, responses=ERRORS, tags=["search"])
async def search_image(
    service: ServiceDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="A DICOM, PNG or JPEG image.")],
    k: Annotated[int, Form(ge=1, le=1000, description="How many results, 1..1000.")] = 10,
) -> SearchResponse:
    """Rank indexed images by similarity to an uploaded image, decoded exactly as the indexer does."""
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        field_error(413, ["body", "file"], f"upload exceeds {settings.max_upload_bytes} bytes", "too_large")
    source = f"uploaded file {file.filename!r}" if file.filename else "uploaded file"
    try:
        image = service.load_query_image(data, source)
    except ImageTooLargeError as exc:
        field_error(413, ["body", "file"], str(exc), "too_large")
    except NotAnImageError as exc:
        field_error(422, ["body", "file"], f"{exc.reason}", "not_an_image")
    except NoPixelDataError as exc:
        field_error(422, ["body", "file"], f"DICOM without an image: {exc.reason}", "no_pixel_data")
    except ImageError as exc:
        field_error(422, ["body", "file"], f"unreadable image: {exc.reason}", "unreadable_image")
    hits = await run_in_threadpool(service.search_image, image, k)
    return respond(service, "image", k, hits)


@router.get("/images/{image_id}", response_model=ImageResponse, responses=ERRORS, tags=["images"])
def get_image(image_id: Annotated[int, Path(ge=0, le=2**62)], service: ServiceDep) -> ImageResponse:
    """The stored metadata and source of one indexed image."""
    row = service.get_image(image_id)
    if row is None:
        field_error(404, ["path", "image_id"], f"no image with id {image_id}", "not_found")
    info = model_info(service)
    return ImageResponse(**image_parts(row), model=info, warning=info.warning)


@router.get("/health", response_model=HealthResponse, tags=["service"])
def health(service: ServiceDep) -> HealthResponse:
    """Model, embedding dimension and the number of indexed vectors."""
    info = model_info(service)
    return HealthResponse(status="ok", model=info, vectors=service.store.ntotal,
                          images=service.store.repository.count_images(), warning=info.warning)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def home(service: ServiceDep) -> str:
    info = model_info(service)
    banner = (f'<p style="background:#b00020;color:#fff;padding:.6em;font-weight:bold">{html.escape(info.warning)}</p>'
              if info.warning else "")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>medsearch</title></head><body>{banner}"
            f"<h1>medsearch</h1><p>Model {html.escape(info.name)} ({info.dim}-d), "
            f"{service.store.ntotal} images indexed.</p>"
            "<p>API documentation: <a href='/docs'>/docs</a></p></body></html>")
