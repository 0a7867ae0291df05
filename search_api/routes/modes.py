"""Which ranking answers a search with text (image similarity, the reports, or both fused), who may
search reports, and how a result says why it matched.

Reports name people ("discussed with Dr X"), so the researcher role neither searches nor sees them
unless report text and the descriptions are on its allow-list (MEDSEARCH_RESEARCHER_FIELDS): `report`
mode answers 403 naming the setting, and `hybrid` answers with image similarity alone, saying so. What
a researcher gets then depends on no report, so a search cannot tell whether a word occurs in one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from search_api.errors import FieldError
from search_api.routes.snippets import findings_of, queried_terms, snippet
from search_api.schemas.reports import MatchOut, QueryConceptOut, ReportQueryOut
from search_api.schemas.search import SearchOptionsIn
from search_api.security.auth import AccessControl, Principal
from search_api.services.query import Hit, Mode, QueryPart, ReportPlan
from search_api.services.search import SearchService

REPORT_FIELDS = ("report_text", "study_description", "series_description")  # what a report document holds


@dataclass(frozen=True)
class Resolved:
    mode: Mode
    plan: ReportPlan | None = None
    notes: list[str] = field(default_factory=list)


def may_search_reports(access: AccessControl, principal: Principal) -> bool:
    return principal.role != "researcher" or set(REPORT_FIELDS) <= access.redactor.fields


def report_text(parts: Sequence[QueryPart]) -> str:
    """The words a report search looks for: the query's text parts that pull (positive weight)."""
    return " ".join(p.text for p in parts if p.text and p.weight > 0)


def resolve(service: SearchService, access: AccessControl, principal: Principal, parts: Sequence[QueryPart],
            request: SearchOptionsIn) -> Resolved:
    """The mode that answers, the report query, and notes where it differs from what was asked.
    Raises FieldError: 403 report mode for a role that may not search reports, 422 report mode or an
    assertion filter without text to match."""
    asked = request.mode
    text = report_text(parts)
    assertions = tuple(request.filters.assertion) if request.filters and request.filters.assertion else None
    if asked == "image" or (asked is None and not text):
        if assertions:
            raise FieldError(422, ("body", "filters", "assertion"), "the assertion filter needs report or hybrid "
                             "mode and a query with text", "assertion_needs_reports")
        return Resolved("image")
    if not may_search_reports(access, principal):
        missing = ", ".join(sorted(set(REPORT_FIELDS) - access.redactor.fields))
        if asked == "report" or assertions:
            raise FieldError(403, ("body", "mode" if asked == "report" else "filters"), "the researcher role may not "
                             f"search reports: {missing} not in MEDSEARCH_RESEARCHER_FIELDS", "forbidden_report_search")
        return Resolved("image", notes=[f"image similarity only: report search is not open to the researcher role "
                                        f"({missing} not in MEDSEARCH_RESEARCHER_FIELDS)"])
    if not text:
        if asked == "report":
            raise FieldError(422, ("body", "mode"), "report mode needs a query with text", "report_needs_text")
        return Resolved("image", notes=["image similarity only: the query has no text to look for in reports"])
    if service.reports is None or not service.has_reports():
        if asked == "report" or assertions:
            raise FieldError(422, ("body", "mode" if asked == "report" else "filters"), "this index holds no report "
                             "text to search", "no_reports")
        return Resolved("image", notes=["image similarity only: this index holds no report text"] if asked else [])
    plan = service.plan_reports(text, assertions)
    if plan.reason is not None and asked != "report":
        return Resolved("image", plan, [f"image similarity only: {plan.reason}"])
    return Resolved(asked or "hybrid", plan, [plan.reason] if plan.reason else [])


def report_query_out(plan: ReportPlan | None, assertions: Sequence[str] | None) -> ReportQueryOut | None:
    if plan is None:
        return None
    wanted = [c.assertion for c in plan.query.concepts if c.assertion]
    concepts = []
    for concept in plan.query.concepts:
        chosen = list(assertions) if assertions else [concept.assertion] if concept.assertion else wanted
        concepts.append(QueryConceptOut.model_validate({"term": concept.term, "kind": concept.kind,
                                                        "assertions": list(dict.fromkeys(chosen))}))
    return ReportQueryOut(concepts=concepts, words=list(plan.query.words), reason=plan.reason)


def matches_out(service: SearchService, access: AccessControl, principal: Principal, hits: Sequence[Hit],
                resolved: Resolved, assertions: Sequence[str] | None) -> list[MatchOut | None]:
    """Each hit's MatchOut: its ranks and scores, and (for roles that see report text) its snippet."""
    if resolved.plan is None or resolved.mode == "image" or service.reports is None:
        return [None] * len(hits)
    shows_text = principal.role != "researcher" or "report_text" in access.redactor.fields
    stored = service.repository.get_reports([hit.image.id for hit in hits]) if shows_text else {}
    terms = queried_terms(service.reports, resolved.plan)
    asked = set(assertions) if assertions else {c.assertion for c in resolved.plan.query.concepts if c.assertion}
    found: list[MatchOut | None] = []
    for hit in hits:
        info = hit.match
        report = stored.get(hit.image.id)
        found.append(MatchOut(
            image_rank=info.image_rank if info else None, report_rank=info.report_rank if info else None,
            report_score=info.report_score if info else None, fused_score=info.fused_score if info else None,
            snippet=snippet(service.reports, hit.image.metadata.report_text, report, resolved.plan, terms, asked)
            if report is not None else None,
            findings=findings_of(report, terms) if report is not None else []))
    return found
