"""Typed records of the report index (storage/reports/documents.py): what an analyzer hands storage, what a report
search returns. Storage imports nothing of ours, so the analyzer (core.reports) is described here by
the shape it has, not imported."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class ReportFields(Protocol):
    """One image's document: normalised words, concept tokens, and the mentions of vocabulary terms
    (term, kind, assertion or None, start, end: offsets into the report text)."""

    @property
    def body(self) -> str: ...

    @property
    def concepts(self) -> str: ...

    @property
    def mentions(self) -> Sequence[tuple[str, str, str | None, int, int]]: ...

    @property
    def has_report(self) -> bool: ...

    @property
    def analyzer(self) -> str: ...  # the fingerprint of the analysis that made it


class ReportAnalyzer(Protocol):
    """Makes documents from an image's report text and descriptions (core.reports.ReportAnalyzer)."""

    @property
    def fingerprint(self) -> str: ...

    def analyze(self, report_text: str | None, descriptions: Sequence[str | None] = ()) -> ReportFields | None: ...


@dataclass(frozen=True)
class ReportMention:
    term: str
    kind: str  # finding or anatomy
    assertion: str | None
    start: int
    end: int


@dataclass(frozen=True)
class StoredReport:
    """An image's document as stored: its mentions, whether it has a report, which analysis made it."""

    image_id: int
    mentions: tuple[ReportMention, ...]
    has_report: bool
    analyzer: str


@dataclass(frozen=True)
class ReportMatch:
    """A query for the report index: every group must be matched by one of its concept tokens, every
    word must occur (both as core.reports.text makes them: letters and digits only). `folded`: the same
    groups with a broad term's group token for the tokens of the terms under it, which documents made
    by the analysis `folded_by` carry: the same matches, fewer tokens to rank."""

    groups: tuple[tuple[str, ...], ...] = ()
    words: tuple[str, ...] = ()
    folded: tuple[tuple[str, ...], ...] | None = None
    folded_by: str = ""

    @property
    def empty(self) -> bool:
        return not self.groups and not self.words


@dataclass(frozen=True)
class ReportRanking:
    """Matching image ids, best first (the engine's relevance, ties by id), with their scores; `complete`
    when every match is listed (the limit was not reached)."""

    ids: tuple[int, ...]
    scores: tuple[float, ...]
    complete: bool
    ranked_by: str = "engine"  # or "postings": read best first (storage/reports/topk.py)
