"""Searching the reports, alone or fused with image similarity (search_api/services/fusion.py).

A query's text becomes a ReportMatch (`plan`): the vocabulary's findings it names, each with the
assertion the query gives it ("no pleural effusion": negated) or those of the `assertion` filter, its
anatomy bound to them, and its other words. The database ranks the matches (the same BM25 in SQLite and
PostgreSQL: storage/reports/rank.py); the filters' candidates, `exclude` and `min_score` restrict the
ranking before it is paged or fused, so that ranks are ranks among what may be shown.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from core.reports import ReportAnalyzer
from search_api.errors import FieldError
from search_api.services.fusion import Fused, Windows, fuse
from search_api.services.query import Hit, MatchInfo, Prepared, ReportPlan, SearchOptions, new_group
from storage.records import StoredImage
from storage.reports.records import ReportMatch
from storage.sql.repository import Repository
from storage.store import Store

MAX_TERMS = 32  # findings, anatomy and words of one query


def plan_report_query(analyzer: ReportAnalyzer, text: str, assertions: tuple[str, ...] | None,
                      loc: tuple[str | int, ...] = ("body", "query")) -> ReportPlan:
    """The report query of `text`. Raises FieldError (422) for a query with too many terms, or an
    assertion filter on a query that names no finding of the vocabulary."""
    query = analyzer.parse_query(text)
    if len(query.concepts) + len(query.words) > MAX_TERMS:
        raise FieldError(422, loc, f"the query has {len(query.concepts) + len(query.words)} distinct terms; report "
                         f"search takes at most {MAX_TERMS}", "too_many_terms")
    if assertions is not None and not any(c.kind == "finding" for c in query.concepts):
        raise FieldError(422, ("body", "filters", "assertion"), "the assertion filter applies to findings, and the "
                         "query names none of the report vocabulary's findings", "assertion_needs_finding")
    match = ReportMatch(tuple(tuple(group) for group in analyzer.query_groups(query, assertions)), query.words,
                        tuple(tuple(group) for group in analyzer.query_groups(query, assertions, folded=True)),
                        analyzer.fingerprint)
    reason = None if not match.empty else ("the query has no word the report index can match (only stop words "
                                           "or symbols)")
    return ReportPlan(query, match, reason)


def _allowed(ids: np.ndarray, prepared: Prepared, exclude: Sequence[int]) -> np.ndarray:
    keep = np.ones(len(ids), dtype=bool)
    if prepared.candidates is not None:
        keep &= np.isin(ids, prepared.candidates.ids)
    if exclude:
        keep &= ~np.isin(ids, np.asarray(exclude, dtype=np.int64))
    return ids[keep]


def report_ids(repository: Repository, prepared: Prepared, exclude: Sequence[int]) -> np.ndarray:
    """Every image whose document matches, among the candidates, ascending."""
    assert prepared.report is not None
    found = np.asarray(repository.report_matches(prepared.report.match), dtype=np.int64)
    return _allowed(found, prepared, exclude)


@dataclass(frozen=True)
class ReportList:
    ids: list[int]  # best first, among the candidates
    scores: list[float]
    complete: bool


def report_ranking(repository: Repository, prepared: Prepared, exclude: Sequence[int], depth: int) -> ReportList:
    """The first `depth` matching images among the candidates, best first."""
    assert prepared.report is not None
    candidates = prepared.candidates.ids if prepared.candidates is not None else None
    excluded = np.asarray(exclude, dtype=np.int64)
    limit = max(depth, 16)
    while True:
        ranking = repository.rank_reports(prepared.report.match, limit)
        if candidates is None and not len(excluded):  # every match may be shown
            return ReportList(list(ranking.ids[:depth]), list(ranking.scores[:depth]),
                              ranking.complete and len(ranking.ids) <= depth)
        ids = np.asarray(ranking.ids, dtype=np.int64)
        keep = np.ones(len(ids), dtype=bool)
        if candidates is not None:
            keep &= np.isin(ids, candidates)
        if len(excluded):
            keep &= ~np.isin(ids, excluded)
        kept = [(int(i), s) for i, s, k in zip(ids, ranking.scores, keep, strict=True) if k]
        if len(kept) >= depth or ranking.complete:
            return ReportList([i for i, _ in kept[:depth]], [s for _, s in kept[:depth]],
                              ranking.complete and len(kept) <= depth)
        limit *= 4


def collect(repository: Repository, ids: Iterator[int], need: int, group_by: str | None) -> list[StoredImage]:
    """The first `need` images of `ids` that still exist, one per group."""
    kept: list[StoredImage] = []
    seen: set[str] = set()
    chunk: list[int] = []

    def take() -> None:
        images = repository.get_images(chunk)
        for image_id in chunk:
            image = images.get(image_id)
            if len(kept) < need and image is not None and image.sources and new_group(image, group_by, seen):
                kept.append(image)
        chunk.clear()

    for image_id in ids:
        chunk.append(image_id)
        if len(chunk) >= max(64, 2 * need):
            take()
            if len(kept) >= need:
                return kept
    if chunk:
        take()
    return kept


def cosines(repository: Repository, vector: np.ndarray | None, ids: list[int], dim: int) -> dict[int, float]:
    if vector is None or not ids:
        return {}
    found, vectors = repository.get_embeddings(ids, dim)
    return dict(zip(found.tolist(), (vectors @ vector[0]).tolist(), strict=True))


class ReportSearch:
    """Report-only and hybrid pages over one store and repository (built by SearchService; `windows`
    reads a hybrid query's report and image windows)."""

    def __init__(self, store: Store, repository: Repository, dim: int, windows: Windows) -> None:
        self.store, self.repository, self.dim, self.windows = store, repository, dim, windows

    def report_page(self, prepared: Prepared, options: SearchOptions) -> list[Hit]:
        need = options.offset + options.k
        depth = need * (4 if options.group_by else 1)
        while True:
            ranked = report_ranking(self.repository, prepared, options.exclude, depth)
            kept = collect(self.repository, iter(ranked.ids), need, options.group_by)
            if len(kept) >= need or ranked.complete:
                break
            depth *= 4
        rank = {image_id: r for r, image_id in enumerate(ranked.ids, start=1)}
        score = dict(zip(ranked.ids, ranked.scores, strict=True))
        page = kept[options.offset:need]
        cosine = cosines(self.repository, prepared.vector, [image.id for image in page], self.dim)
        return [Hit(rank=options.offset + i + 1, score=cosine.get(image.id), probability=None, image=image,
                    match=MatchInfo(report_rank=rank[image.id], report_score=score[image.id]))
                for i, image in enumerate(page)]

    def image_window(self, prepared: Prepared, options: SearchOptions, depth: int) -> list[int]:
        """The first `depth` images by similarity among the candidates (exact where the index is, as the
        image search is). The page shows NumPy's cosines (`cosines`), which min_score is decided by."""
        assert prepared.vector is not None
        allowed = prepared.candidates.ids if prepared.candidates is not None else None
        pairs = self.store.search(prepared.vector, depth + len(options.exclude), allowed, prepared.kind)[0]
        excluded = set(options.exclude)
        pairs = [(i, s) for i, s in pairs if i not in excluded][:depth]
        return [i for i, _ in pairs]

    def hybrid_page(self, prepared: Prepared, options: SearchOptions) -> list[Hit]:
        fusion = options.fusion
        need = options.offset + options.k
        reports, images = self.windows.read(
            lambda: report_ranking(self.repository, prepared, options.exclude, fusion.window),
            lambda: self.image_window(prepared, options, fusion.window))
        fused = fuse(reports.ids, images, fusion)
        scores = dict(zip(reports.ids, reports.scores, strict=True))
        in_windows = set(fused.ids.tolist())
        depth = fusion.window
        tail_rank: dict[int, int] = {}

        def order() -> Iterator[int]:
            nonlocal depth
            yield from fused.image_ids()
            if len(images) < fusion.window:
                return  # the image window held every candidate
            while True:  # beyond both windows: image similarity order
                ids = self.image_window(prepared, options, depth * 2)
                for rank, image_id in enumerate(ids[depth:], start=depth + 1):
                    if image_id not in in_windows:
                        tail_rank[image_id] = rank
                        yield image_id
                if len(ids) < depth * 2:
                    return
                depth *= 2

        kept = collect(self.repository, order(), need, options.group_by)
        page = kept[options.offset:need]
        cosine = cosines(self.repository, prepared.vector, [image.id for image in page], self.dim)  # one way
        empty = Fused(0, 0.0, None, None)
        ranked = {image.id: fused.get(image.id) or empty for image in page}
        return [Hit(rank=options.offset + i + 1, score=cosine.get(image.id), probability=None, image=image,
                    match=MatchInfo(image_rank=ranked[image.id].image_rank or tail_rank.get(image.id),
                                    report_rank=ranked[image.id].report_rank,
                                    report_score=scores.get(image.id), fused_score=ranked[image.id].score))
                for i, image in enumerate(page)]
