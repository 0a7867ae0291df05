"""Routes of probes (a site's trained classifiers), the filter-only search and case summaries."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from search_api.errors import FieldError
from search_api.routes.deps import ServiceDep
from search_api.routes.presets import PRESETS, prompts_for
from search_api.routes.search import EXPORT_RESPONSES, Export, answer, run_search
from search_api.routes.views import classify_response, may_see, model_info
from search_api.schemas.probes import (
    EvidenceOut,
    ProbeOut,
    ProbesResponse,
    SimilarCaseOut,
    StatementOut,
    SummaryResponse,
    VoteOut,
)
from search_api.schemas.search import ErrorResponse, FilterSearchRequest, SearchResponse
from search_api.security.auth import AccessDep, CallerDep, SearchAudit, ViewAudit
from search_api.services.summary import summarise

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (403, 404, 409, 422)}


@router.get("/probes", response_model=ProbesResponse, tags=["classify"])
def probes(service: ServiceDep, _caller: CallerDep) -> ProbesResponse:
    """The probes stored in the index (medsearch-index train-probe): labels, date, cross-validated metrics,
    and whether each was trained on the model in use (a probe of another model is refused)."""
    manifest = service.store.manifest
    key = manifest.fingerprint_key if manifest else None
    return ProbesResponse(probes=[ProbeOut(
        name=p.name, labels=p.labels, created_at=p.created_at, usable=p.fingerprint_key == key,
        images=p.details.get("images"), patients=p.details.get("patients"), prior=bool(p.details.get("prior")),
        mean_auc=p.metrics.get("mean_auc"), metrics=p.metrics.get("labels", {}),
        training_fingerprint=p.training_fingerprint) for p in service.repository.list_probes()])


@router.post("/search/filter", response_model=SearchResponse, responses={**EXPORT_RESPONSES, **ERRORS},
             tags=["search"])
def search_filter(body: FilterSearchRequest, service: ServiceDep, access: AccessDep, caller: CallerDep,
                  audit: SearchAudit, form: Export = None) -> Response:
    """No query: every image the filters allow, in the order asked. With filters.probe, for example "all
    chest films the site's pneumothorax probe calls positive, newest first":
    `{"filters": {"body_part": ["CHEST"], "probe": {"name": "site", "label": "pneumothorax"}},
    "order": "newest"}`. Exact: every image is scored by the probe."""
    if body.min_score is not None:
        raise FieldError(422, ("body", "min_score"), "min_score needs a query: use /search/text or /search",
                         "value_error")
    return answer(run_search(service, access, caller, audit, "filter", [], body), form, audit)


@router.get("/images/{image_id}/summary", response_model=SummaryResponse, responses=ERRORS, tags=["classify"])
async def summary(
    image_id: Annotated[int, Path(ge=0, le=2**62, description="An indexed image's id.")],
    service: ServiceDep, access: AccessDep, caller: CallerDep, audit: ViewAudit,
    probe: Annotated[str | None, Query(max_length=128, description="Findings from this probe.")] = None,
    preset: Annotated[str | None, Query(max_length=64, description=f"Or zero-shot on a preset: "
                                        f"{', '.join(PRESETS)}.")] = None,
    labels: Annotated[str | None, Query(max_length=4000, description="Or zero-shot on these labels, "
                                        "comma-separated. Default: the labels of the nearest cases.")] = None,
    k: Annotated[int, Query(ge=1, le=50, description="Nearest cases of other patients.")] = 10,
) -> SummaryResponse:
    """A summary of an indexed case from evidence: the findings with their probabilities and review flag,
    the nearest indexed cases of other patients with their labels and report text (as the role may
    see them), and the label vote among them with its agreement. Every statement points at its evidence;
    none is a diagnosis or a treatment recommendation."""
    audit.kind = "summary"
    if sum(map(bool, (probe, preset, labels))) > 1:
        raise FieldError(422, ("query", "probe"), "give a probe, a preset or labels (at most one)", "value_error")
    image = service.require_image(image_id)
    trained = service.probe(probe, ("query", "probe")) if probe else None
    prompts = prompts_for(labels.split(",") if labels else [], preset) if (labels or preset) else None
    shows = {name: may_see(access, caller, name) for name in ("study_date", "report_text", "labels", "modality",
                                                              "body_part")}
    result = await run_in_threadpool(summarise, service, image, k, trained, prompts, preset, shows["labels"])
    audit.ids += [n.image.id for n in result.neighbours]
    cases = [SimilarCaseOut(
        image_id=n.image.id, score=n.score, modality=n.image.metadata.modality if shows["modality"] else None,
        body_part=n.image.metadata.body_part if shows["body_part"] else None,
        study_date=n.image.metadata.study_date if shows["study_date"] else None,
        labels=n.image.metadata.labels if shows["labels"] else [],
        report_text=n.image.metadata.report_text if shows["report_text"] else None) for n in result.neighbours]
    info = model_info(service)
    return SummaryResponse(
        image_id=image_id, method=result.method,
        findings=classify_response(result.findings, service) if result.findings else None,
        similar_cases=cases, label_vote=[VoteOut(label=v.label, count=v.count, agreement=v.agreement,
                                                 image_ids=v.image_ids) for v in result.votes],
        statements=[StatementOut(text=s.text, evidence=EvidenceOut(image_ids=s.evidence.image_ids,
                                                                   probabilities=s.evidence.probabilities))
                    for s in result.statements],
        disclaimer=result.disclaimer, model=info, warning=info.warning)
