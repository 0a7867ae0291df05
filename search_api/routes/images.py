"""Route handlers for one indexed image, as a viewer shows it: its record, a preview with any window and
frame, the modality values under the pointer, its study and series, zero-shot labels, and (for
clinicians and admins) the original file. Every route is audited; researchers see what the allow-list
grants (search_api/routes/views.py). Files are always the ones recorded for the id, never a path from the
request."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Path, Query, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from search_api.routes.deps import ServiceDep, SettingsDep
from search_api.routes.presets import prompts_for
from search_api.routes.upload import read_limited
from search_api.routes.views import classify_response, image_parts, may_see, model_info, researcher
from search_api.schemas.images import (
    ClassifyIndexedRequest,
    SeriesImageOut,
    SeriesOut,
    SeriesResponse,
    StudyResponse,
    ValuesResponse,
)
from search_api.schemas.search import ClassifyResponse, ErrorResponse, ImageResponse
from search_api.security.auth import (
    AccessDep,
    CallerDep,
    ClassifyAudit,
    DownloadAudit,
    DownloaderDep,
    PreviewAudit,
    ViewAudit,
)
from search_api.services.classifying import classify
from search_api.services.images import Values

router = APIRouter(tags=["images"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (403, 404, 422)}
ImageId = Annotated[int, Path(ge=0, le=2**62, description="An indexed image's id.")]
Frame = Annotated[int | None, Query(ge=0, le=100_000, description="Frame of a multi-frame file (default: the "
                                   "one indexed).")]
Window = Annotated[str | None, Query(max_length=40, description=(
    "A preset (lung, mediastinum, bone, brain, abdomen: CT), CENTER/WIDTH such as 40/400 in modality units, "
    "header, or auto. Default: the window used for indexing."))]
PNG = {**ERRORS, 200: {"content": {"image/png": {}}, "description": "A PNG image."}}
NO_STORE = {"Cache-Control": "no-store"}  # pixels of a patient are never kept by the browser


@router.get("/images/{image_id}", response_model=ImageResponse, responses=ERRORS)
def get_image(image_id: ImageId, service: ServiceDep, access: AccessDep, caller: CallerDep,
              audit: ViewAudit) -> ImageResponse:
    """The stored metadata and sources of one indexed image."""
    image = service.require_image(image_id)
    info = model_info(service)
    return ImageResponse(**image_parts(image, service, access, caller), model=info, warning=info.warning)


@router.get("/images/{image_id}/preview", responses=PNG, response_class=Response)
def preview(image_id: ImageId, service: ServiceDep, audit: PreviewAudit,
            size: Annotated[int, Query(ge=32, le=2048, description="Longest side in pixels.")] = 256,
            window: Window = None,
            frame: Frame = None) -> Response:
    """The image as PNG, windowed as asked, from the file recorded for this id."""
    audit.kind = window
    png = service.files.preview(service.require_image(image_id), size, window, frame)
    return Response(content=png, media_type="image/png", headers=NO_STORE)


@router.post("/render", responses=PNG, response_class=Response)
async def render_upload(service: ServiceDep, settings: SettingsDep, audit: PreviewAudit,
                        file: Annotated[UploadFile, File(description="A DICOM, PNG or JPEG image.")],
                        size: Annotated[int, Query(ge=32, le=2048)] = 512, window: Window = None) -> Response:
    """An uploaded image as PNG, decoded as for searching (the query image shown beside results)."""
    audit.kind = "upload"
    data = await read_limited(file, settings.max_upload_bytes)
    png = await run_in_threadpool(service.files.render_upload, data, size, window)
    return Response(content=png, media_type="image/png", headers=NO_STORE)


@router.get("/images/{image_id}/values", response_model=ValuesResponse, responses=ERRORS)
def values(image_id: ImageId, service: ServiceDep, audit: PreviewAudit, frame: Frame = None,
           size: Annotated[int, Query(ge=32, le=2048, description="Longest side of the value grid.")] = 512
           ) -> ValuesResponse:
    """A greyscale frame's modality values (Hounsfield units for CT) on a grid of at most `size` a side:
    the value under the viewer's pointer. 422 for colour images."""
    audit.kind = "values"
    found: Values = service.files.values(service.require_image(image_id), size, frame)
    return ValuesResponse(**found.__dict__)


@router.get("/images/{image_id}/file", responses={**ERRORS, 200: {"content": {
    "application/dicom": {}, "application/octet-stream": {}}, "description": "The file as indexed."}},
            response_class=Response)
def original(image_id: ImageId, service: ServiceDep, audit: DownloadAudit, _caller: DownloaderDep,
             source: Annotated[int, Query(ge=0, le=10_000, description="Which of the image's sources.")] = 0
             ) -> Response:
    """The original file as it was indexed (clinicians and admins; never researchers). Audited."""
    data, name = service.files.original(service.require_image(image_id), source)
    media = "application/dicom" if name.lower().endswith((".dcm", ".dicom")) else "application/octet-stream"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:120] or "image"
    return Response(content=data, media_type=media,
                    headers={**NO_STORE, "Content-Disposition": f'attachment; filename="{safe}"'})


@router.get("/images/{image_id}/study", response_model=StudyResponse, responses=ERRORS)
def study(image_id: ImageId, service: ServiceDep, access: AccessDep, caller: CallerDep,
          audit: ViewAudit) -> StudyResponse:
    """The image's study (its patient's images with the same Study Instance UID): the series in order
    with their image counts, descriptions and first image. An image without a study UID is a study of
    its own."""
    audit.kind = "study"
    image = service.require_image(image_id)
    meta = image.metadata
    if meta.study_uid:
        found = service.repository.study_series(meta.study_uid, meta.patient_id)
        series = [SeriesOut(series_uid=s.series_uid, description=s.description, modality=s.modality,
                            images=s.images, first_image_id=s.first_image_id) for s in found]
    else:
        series = [SeriesOut(series_uid=meta.series_uid, description=meta.series_description,
                            modality=meta.modality, images=1, first_image_id=image_id)]
    hide = researcher(caller)
    pseudo = access.redactor.pseudonym
    shown = [s.model_copy(update={
        "series_uid": pseudo(s.series_uid, "series") if hide else s.series_uid,
        "description": s.description if may_see(access, caller, "series_description") else None,
        "modality": s.modality if may_see(access, caller, "modality") else None}) for s in series]
    return StudyResponse(
        image_id=image_id, study_uid=pseudo(meta.study_uid, "study") if hide else meta.study_uid,
        patient_id=pseudo(meta.patient_id, "patient") if hide else meta.patient_id,
        description=meta.study_description if may_see(access, caller, "study_description") else None,
        study_date=meta.study_date.isoformat() if meta.study_date and may_see(access, caller, "study_date") else None,
        images=sum(s.images for s in shown), series=shown)


@router.get("/images/{image_id}/series", response_model=SeriesResponse, responses=ERRORS)
def series(image_id: ImageId, service: ServiceDep, access: AccessDep, caller: CallerDep,
           audit: ViewAudit) -> SeriesResponse:
    """The images of the image's series (its patient's, same Series Instance UID) in instance order,
    for scrolling through a series (at most 5,000)."""
    audit.kind = "series"
    image = service.require_image(image_id)
    meta = image.metadata
    found = service.repository.series_images(meta.series_uid, meta.patient_id) if meta.series_uid else []
    images = [SeriesImageOut(image_id=i.image_id, instance_number=i.instance_number, frame_index=i.frame_index,
                             frames=i.frames) for i in found] or [SeriesImageOut(
        image_id=image_id, instance_number=meta.instance_number, frame_index=image.sources[0].frame_index,
        frames=meta.frames)]
    position = next((n for n, i in enumerate(images) if i.image_id == image_id), 0)
    hide = researcher(caller)
    return SeriesResponse(
        image_id=image_id, position=position, images=images,
        series_uid=access.redactor.pseudonym(meta.series_uid, "series") if hide else meta.series_uid,
        description=meta.series_description if may_see(access, caller, "series_description") else None)


@router.post("/images/{image_id}/classify", response_model=ClassifyResponse, responses=ERRORS)
async def classify_indexed(image_id: ImageId, body: ClassifyIndexedRequest, service: ServiceDep,
                           audit: ClassifyAudit) -> ClassifyResponse:
    """Zero-shot labels for an indexed image (its stored embedding; the image itself is left out of
    the neighbours that vote), with the same semantics as POST /classify."""
    audit.kind = f"probe:{body.probe}" if body.probe else body.preset or "labels"
    trained = service.probe(body.probe) if body.probe else None
    prompts = None if trained else prompts_for(body.labels, body.preset)
    service.require_image(image_id)
    result = await run_in_threadpool(classify, service, image_id, prompts, body.neighbours, trained)
    return classify_response(result, service)
