"""Why a report matched, shown: the sentences of its report that hold the query's findings, anatomy and
words, with each marked (a finding with the assertion it has there). Words are marked by the same
normalisation the full-text engines were fed (core.reports.text), so a marked word is a matched word."""

from __future__ import annotations

from collections.abc import Sequence

from core.reports import ReportAnalyzer
from core.reports.text import words
from search_api.schemas.reports import FindingOut, Mark, Snippet
from search_api.services.query import ReportPlan
from storage.reports.records import StoredReport

MAX_SENTENCES = 2
MAX_CHARS = 320
GAP = " … "


def queried_terms(analyzer: ReportAnalyzer, plan: ReportPlan) -> set[str]:
    """The vocabulary terms the query asks for, with their narrower terms."""
    return {term for concept in plan.query.concepts for term in analyzer.vocabulary.narrower(concept.term)}


def findings_of(report: StoredReport, terms: set[str]) -> list[FindingOut]:
    """The query's findings as this report states them, each (term, assertion) once."""
    seen = dict.fromkeys((m.term, m.assertion) for m in report.mentions
                         if m.kind == "finding" and m.term in terms and m.assertion)
    return [FindingOut.model_validate({"term": term, "assertion": assertion}) for term, assertion in seen]


def snippet(analyzer: ReportAnalyzer, text: str | None, report: StoredReport | None, plan: ReportPlan,
            terms: set[str], asked: set[str]) -> Snippet | None:
    """The best sentences of `text` for the query (those stating its findings as `asked` first), with
    the matched terms marked; None when nothing in the report text itself matched (a description did)."""
    if not text or report is None:
        return None
    marks = [Mark.model_validate({"start": m.start, "end": m.end, "term": m.term, "kind": m.kind,
                                  "assertion": m.assertion}) for m in report.mentions if m.term in terms]
    wanted = set(plan.query.words)
    covered = [(m.start, m.end) for m in marks]
    marks += [Mark(start=a, end=b, term=text[a:b], kind="word") for w, a, b in words(text)
              if w in wanted and not any(s <= a < e for s, e in covered)]
    if not marks:
        return None
    sentences = analyzer.sentence_spans(text)
    chosen = _best(sentences, marks, asked)
    pieces: list[str] = []
    shown: list[Mark] = []
    offset = 0
    for start, end in chosen:
        piece = text[start:end].strip()
        lead = start + (len(text[start:end]) - len(text[start:end].lstrip()))
        if len(piece) > MAX_CHARS:
            piece = piece[:MAX_CHARS].rstrip() + "…"
        if pieces:
            offset += len(GAP)
        for mark in marks:
            if lead <= mark.start and mark.end <= lead + len(piece):
                shown.append(mark.model_copy(update={"start": offset + mark.start - lead,
                                                     "end": offset + mark.end - lead}))
        pieces.append(piece)
        offset += len(piece)
    return Snippet(text=GAP.join(pieces), marks=sorted(shown, key=lambda m: m.start))


def _best(sentences: Sequence[tuple[int, int]], marks: Sequence[Mark], asked: set[str]) -> list[tuple[int, int]]:
    """Up to MAX_SENTENCES sentences, in text order: those holding a finding with an assertion asked
    for first, then those with the most marks."""

    def weight(span: tuple[int, int]) -> tuple[int, int, int]:
        inside = [m for m in marks if span[0] <= m.start < span[1]]
        return (sum(1 for m in inside if m.kind == "finding" and m.assertion in asked), len(inside), -span[0])

    ranked = sorted((s for s in sentences if weight(s)[1]), key=weight, reverse=True)[:MAX_SENTENCES]
    return sorted(ranked)
