"""POST /images/{id}/explain: where on an indexed image its score for a query is sensitive (a relevance
map over the model's patch grid, placed on the file's pixels, and a PNG overlay at the preview's size).
The same roles as previews (researchers see the map, never identifiers); audited like previews."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Path, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from core.maps.explain import METHODS
from core.maps.geometry import Placement, overlay_png, thumbnail_size
from search_api.errors import FieldError
from search_api.routes.deps import ServiceDep, SettingsDep
from search_api.routes.images import ERRORS, NO_STORE
from search_api.routes.upload import read_limited
from search_api.routes.views import model_info
from search_api.security.auth import PreviewAudit
from search_api.services.explaining import ExplainQuery, Explanation
from search_api.services.search import SearchService

router = APIRouter(tags=["images"])


class ExplainResponse(BaseModel):
    image_id: int
    frame: int
    query: Literal["text", "upload", "image"]
    method: Literal["gradient", "occlusion"]
    window: int | None = Field(description="Occlusion's window in patches (None for gradient).")
    score: float = Field(description="The pair's cosine similarity, as the model scores it.")
    values: list[list[float]] = Field(description="The map, row by row from the top: the score's sensitivity "
                                      "to each patch (> 0: the patch raises the score).")
    placement: Placement
    passes: int = Field(description="Image forward passes the map took.")
    seconds: float
    cached: bool
    overlay_size: tuple[int, int] = Field(description="(width, height) of the overlay: the preview's at `size`.")
    overlay_png: str = Field(description="Base64 PNG (RGBA): the map from its least (transparent) to its most "
                             "relevant patch (opaque), to lay over "
                             "GET /images/{id}/preview at the same size.")
    warning: str | None = None


def _query(service: SearchService, text: str | None, query_image_id: int | None, data: bytes | None) -> ExplainQuery:
    given = [name for name, value in (("text", text), ("query_image_id", query_image_id), ("file", data))
             if value is not None]
    if len(given) != 1:
        raise FieldError(422, ("body",), "give one query: text, query_image_id or file"
                         + (f" (got {', '.join(given)})" if given else ""), "one_query")
    if text is not None:
        return ExplainQuery("text", text, service.text_vector(text))
    if query_image_id is not None:
        if service.get_image(query_image_id) is None:
            raise FieldError(404, ("body", "query_image_id"), f"no image with id {query_image_id}", "not_found")
        return ExplainQuery("image", str(query_image_id), service.image_vector(query_image_id))
    assert data is not None
    loaded = service.load_query_image(data, "uploaded file")
    return ExplainQuery.upload(data, service.encoder.encode_images([loaded.pixels])[0])


def _explain(service: SearchService, image_id: int, text: str | None, query_image_id: int | None,
             data: bytes | None, method: str, window: int | None, frame: int | None) -> Explanation:
    image = service.require_image(image_id)
    return service.explanations.explain(image, _query(service, text, query_image_id, data), method, window, frame)


@router.post("/images/{image_id}/explain", response_model=ExplainResponse, responses={
    **ERRORS, 200: {"content": {"application/json": {}, "image/png": {}},
                    "description": "The map as numbers (JSON), or only its overlay (format=png)."}})
async def explain(
    image_id: Annotated[int, Path(ge=0, le=2**62, description="An indexed image's id.")],
    service: ServiceDep, settings: SettingsDep, audit: PreviewAudit,
    text: Annotated[str | None, Form(min_length=1, max_length=1000, description="A text query.")] = None,
    query_image_id: Annotated[int | None, Form(ge=0, le=2**62, description="Or an indexed image as the query "
                                               "(a similar-case search's query).")] = None,
    file: Annotated[UploadFile | None, File(description="Or an uploaded DICOM, PNG or JPEG as the query.")] = None,
    method: Annotated[Literal["gradient", "occlusion"], Form(description=f"{' or '.join(METHODS)}: gradient "
                      "(one forward and one backward pass) or occlusion (a forward pass per window; slower, "
                      "the reference the gradient map is checked against).")] = "gradient",
    window: Annotated[int | None, Form(ge=1, le=64, description="Occlusion: the window in patches (default: "
                                       "the smallest whose map takes at most 257 passes).")] = None,
    frame: Annotated[int | None, Form(ge=0, le=100_000, description="Frame (default: the one indexed).")] = None,
    size: Annotated[int, Form(ge=32, le=2048, description="The overlay's longest side, as the preview's.")] = 512,
    format: Annotated[Literal["json", "png"], Form(description="json: numbers and overlay; png: the overlay "
                                                   "only.")] = "json",
) -> ExplainResponse | Response:
    """A relevance map of the image's score for the query: where the model's score is sensitive on this
    image (not a segmentation and not a diagnosis). Cached per image, frame, query, method and model;
    422 when it would not finish within the request timeout."""
    audit.kind = f"explain:{method}"
    data = await read_limited(file, settings.max_upload_bytes) if file is not None else None
    found = await run_in_threadpool(_explain, service, image_id, text, query_image_id, data, method, window, frame)
    overlay = overlay_png(found.grid.values, found.placement, size)
    if format == "png":
        return Response(content=overlay, media_type="image/png", headers=NO_STORE)
    where = found.placement
    return ExplainResponse(
        image_id=image_id, frame=found.frame, query=_kind(text, query_image_id), method=found.grid.method,  # type: ignore[arg-type]
        window=found.window, score=found.grid.score, values=found.grid.values.round(6).tolist(),
        placement=where, passes=found.grid.passes,
        seconds=round(found.grid.seconds, 4),
        cached=found.cached, overlay_size=thumbnail_size(where.width, where.height, size),
        overlay_png=base64.b64encode(overlay).decode(), warning=model_info(service).warning)


def _kind(text: str | None, query_image_id: int | None) -> str:
    return "text" if text is not None else "image" if query_image_id is not None else "upload"
