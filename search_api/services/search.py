"""Searching: build a query vector, search within the filters, count and facet the matches, attach stored
records; classify an upload or an indexed image. The encoder, the store and the repository are built at
the entry point and handed in; this class only combines them (reading files back: search_api/services/images.py)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from core.imaging.images import LoadedImage
from core.model.encoder import Encoder, l2_normalise
from core.reports import ReportAnalyzer
from search_api.errors import UnknownImageError
from search_api.services.cutoff import scoring
from search_api.services.explaining import Explanations
from search_api.services.fusion import Windows
from search_api.services.images import ImageFiles
from search_api.services.listing import ordered_page
from search_api.services.lru import LRUCache
from search_api.services.probing import check_label, load_probe, probe_candidates
from search_api.services.query import (
    Candidates,
    Hit,
    Matches,
    Prepared,
    QueryPart,
    ReportPlan,
    SearchOptions,
    new_group,
    probability_of,
    query_kind,
)
from search_api.services.reports import ReportSearch, plan_report_query, report_ids
from storage.probe_cache import ProbeScores
from storage.records import StoredImage
from storage.sql.probes import Probe
from storage.sql.repository import Repository
from storage.store import Store

logger = logging.getLogger(__name__)


POST_FILTER_MIN = 50_000  # vectors from which a broad filter is checked on the nearest images (not listed)
POST_FILTER_SHARE = 0.01  # "broad": the filters let at least this share of the images through


class SearchService:
    def __init__(self, encoder: Encoder, store: Store, repository: Repository, files: ImageFiles, *,
                 reports: ReportAnalyzer | None = None, device: str = "cpu", text_cache_size: int = 1024,
                 review_min_probability: float = 0.5, review_max_entropy: float = 0.85,
                 viewer_url_template: str | None = None, request_timeout_s: float = 60.0,
                 count_limit: int = 20_000) -> None:
        self.encoder = encoder
        self.store = store
        self.repository = repository
        self.reports = reports  # None: no report search (text queries compare with images only)
        self.window_pool = ThreadPoolExecutor(2, thread_name_prefix="medsearch-image-window")  # hybrid queries'
        self.report_search = ReportSearch(store, repository, encoder.dim, Windows(self.window_pool))
        self.probe_scores = ProbeScores(store, repository)  # kept up to date from the index's id journal
        self.files = files
        self.explanations = Explanations(encoder, files, request_timeout_s)
        self.device = device
        self.viewer_url_template = viewer_url_template
        self.text_cache: LRUCache[str, np.ndarray] = LRUCache(text_cache_size)
        self.review_min_probability = review_min_probability
        self.review_max_entropy = review_max_entropy
        self.count_limit = count_limit  # facets and group totals count this many matching images at most
        self.post_filter_min = POST_FILTER_MIN  # from this many vectors, broad filters are checked on the nearest

    def close(self) -> None:
        self.window_pool.shutdown(wait=True)
        try:
            self.store.close()
        finally:
            self.repository.close()

    # -- query vectors --------------------------------------------------------------------------------
    def load_query_image(self, data: bytes, source: str) -> LoadedImage:
        """Decode an uploaded image exactly as the indexer does. Raises core's ImageError family."""
        return self.files.decode_upload(data, source)

    def text_vector(self, text: str) -> np.ndarray:
        """The text tower's embedding, from the LRU cache when the same text was asked before."""
        return self.text_cache.get(text, lambda: self.encoder.encode_texts([text])[0])

    def image_vector(self, image_id: int) -> np.ndarray:
        if (stored := self.store.vector_of(image_id)) is None:
            raise UnknownImageError(image_id)
        return stored

    def query_vector(self, parts: Sequence[QueryPart]) -> np.ndarray:
        """The normalised weighted sum of the parts' embeddings. Raises UnknownImageError."""
        total = np.zeros(self.encoder.dim, dtype=np.float32)
        for part in parts:
            if part.text is not None:
                vector = self.text_vector(part.text)
            elif part.image_id is not None:
                vector = self.image_vector(part.image_id)
            elif part.image is not None:
                vector = self.encoder.encode_images([part.image.pixels])[0]
            else:
                continue
            total += np.float32(part.weight) * vector
        return l2_normalise(total[None, :])

    def probability(self, cosine: float) -> float | None:
        scale, bias = getattr(self.encoder, "logit_scale", None), getattr(self.encoder, "logit_bias", None)
        return None if scale is None or bias is None else 1.0 / (1.0 + math.exp(-(scale * cosine + bias)))

    # -- search ---------------------------------------------------------------------------------------
    def probe(self, name: str, loc: tuple[str | int, ...] = ("body", "probe")) -> Probe:
        """A stored probe of the model in use (FieldError 404 / 409 otherwise)."""
        manifest = self.store.manifest
        return load_probe(self.repository, manifest.fingerprint_key if manifest else None, name, loc)

    def _candidates(self, options: SearchOptions) -> Candidates | None:
        """The ids the filters, the probe and the exclusions allow; None: every image."""
        allowed = None if options.filters.empty else self.repository.filter_image_ids(options.filters)
        scores = None
        if options.probe is not None:
            probe = self.probe(options.probe.name, ("body", "filters", "probe", "name"))
            check_label(probe, options.probe.label, ("body", "filters", "probe", "label"))
            found = probe_candidates(self.probe_scores, probe, options.probe, allowed)
            allowed, scores = found.ids, found.probability
        if allowed is not None and options.exclude:
            keep = ~np.isin(allowed, np.asarray(options.exclude, dtype=np.int64))
            allowed, scores = allowed[keep], scores[keep] if scores is not None else None
        return None if allowed is None else Candidates(allowed, scores)

    def has_reports(self) -> bool:
        """Whether report search can answer: an analyzer, and an index holding reports."""
        return self.reports is not None and self.repository.has_reports()

    def plan_reports(self, text: str, assertions: tuple[str, ...] | None,
                     loc: tuple[str | int, ...] = ("body", "query")) -> ReportPlan:
        """The report query of a text (FieldError 422 for one report search cannot take)."""
        assert self.reports is not None, "report search needs the report analyzer"
        return plan_report_query(self.reports, text, assertions, loc)

    def prepare(self, parts: Sequence[QueryPart], options: SearchOptions, report: ReportPlan | None = None
                ) -> Prepared:
        """The query vector and the candidates; for report and hybrid searches the report query (`report`,
        from plan_reports), and its matches among the candidates where the page or its total needs them
        all (report mode; an assertion filter, which is a condition on the candidates). There,
        `min_score` is a condition on the candidates (their cosine), applied before ranking."""
        share = self._broad_filter_share(parts, options, report)
        if share is not None:  # the nearest images are checked against the filters: see _broad_filter_share
            return Prepared(self.query_vector(parts), None, kind=query_kind(parts), checked=options.filters,
                            share=share)
        prepared = Prepared(self.query_vector(parts) if parts else None, self._candidates(options),
                            kind=query_kind(parts))
        if options.mode == "image" or report is None:
            return prepared
        if options.min_score is not None and prepared.vector is not None:
            prepared = replace(prepared, candidates=scoring(self.store, self.repository, prepared, options))
        prepared = replace(prepared, report=report)
        if options.mode == "hybrid" and options.assertions is None:
            return prepared  # ranked from the report index's best matches: the whole match set is not needed
        prepared = replace(prepared, report_ids=report_ids(self.repository, prepared, options.exclude))
        if options.assertions is not None:  # a filter: only images whose reports state the findings so
            assert prepared.report_ids is not None
            keep = None if prepared.candidates is None else np.isin(prepared.candidates.ids, prepared.report_ids)
            probability = None if prepared.candidates is None or prepared.candidates.probability is None or \
                keep is None else prepared.candidates.probability[keep]
            prepared = replace(prepared, candidates=Candidates(prepared.report_ids, None) if keep is None else
                               Candidates(prepared.candidates.ids[keep], probability))  # type: ignore[union-attr]
        return prepared

    def _broad_filter_share(self, parts: Sequence[QueryPart], options: SearchOptions, report: ReportPlan | None
                            ) -> float | None:
        """Where the filters let through a large share of a large index (estimated on a sample of rows),
        listing every image they allow costs the whole table per request: the nearest images are checked
        instead, as many more as the share calls for, until a page is found. The same results: an exact
        index's nearest, or the same inverted lists an IVF index probes with the filters inside, filtered.
        None: list the allowed images (a small index, a selective filter, or a search that needs them all)."""
        if (not parts or options.filters.empty or options.probe is not None or options.min_score is not None
                or options.order != "relevance" or (report is not None and options.mode != "image")
                or self.store.index_kind not in ("flat", "ivf") or self.store.ntotal < self.post_filter_min):
            return None
        share = self.repository.filter_share(options.filters)
        return share if share is not None and share >= POST_FILTER_SHARE else None

    def page(self, parts: Sequence[QueryPart], options: SearchOptions, facets: Sequence[str] = (),
             report: ReportPlan | None = None) -> tuple[list[Hit], Matches]:
        """One page of results and its total (and facets): the query encoded and the filters' (and a
        probe's, and the report query's) candidates computed once for both."""
        prepared = self.prepare(parts, options, report)
        return self.with_studies(self.search(parts, options, prepared)), self.matches(parts, options, facets, prepared)

    def with_studies(self, hits: list[Hit]) -> list[Hit]:
        """The hits with the size of each one's study (its patient's images and series with that UID)."""
        studies = self.repository.study_counts([(hit.image.metadata.patient_id, hit.image.metadata.study_uid)
                                                for hit in hits if hit.image.metadata.study_uid])
        return [replace(hit, study=studies.get((hit.image.metadata.patient_id, hit.image.metadata.study_uid or ""),
                                               (None, None))) for hit in hits]

    def search(self, parts: Sequence[QueryPart], options: SearchOptions, prepared: Prepared | None = None
               ) -> list[Hit]:
        prepared = prepared or self.prepare(parts, options)
        if prepared.report is not None and options.mode == "report" and options.order != "relevance":
            assert prepared.report_ids is not None  # the reports' matches, in the order asked
            prepared = replace(prepared, candidates=Candidates(prepared.report_ids, None))
        if options.order != "relevance" or not parts:
            return self._search_ordered(prepared, options)
        if prepared.report is not None and options.mode == "report":
            return self.report_search.report_page(prepared, options)
        if prepared.report is not None and options.mode == "hybrid":
            return [replace(hit, probability=self._calibrated(parts, hit.score)) for hit in
                    self.report_search.hybrid_page(prepared, options)]
        vector = prepared.vector
        assert vector is not None  # parts were given
        candidates = prepared.candidates
        allowed = None if candidates is None else candidates.ids
        need = options.offset + options.k
        fetch = need * (4 if options.group_by else 1) + len(options.exclude)
        fetch = int(fetch / prepared.share * 1.5) + 10 if prepared.checked is not None else fetch
        while True:
            pairs = self.store.search(vector, fetch, allowed, prepared.kind)[0]
            exhausted = len(pairs) < fetch
            if prepared.checked is not None:
                passing = self.repository.matching_among(prepared.checked, [i for i, _ in pairs])
                pairs = [(i, score) for i, score in pairs if i in passing]
            kept = self._collect(pairs, options)
            if len(kept) >= need or exhausted or (
                    options.min_score is not None and pairs and pairs[-1][1] < options.min_score):
                break
            fetch *= 2
        return [Hit(rank=options.offset + i + 1, score=score, probability=self._calibrated(parts, score), image=image,
                    probe_probability=probability_of(candidates, image.id))
                for i, (score, image) in enumerate(kept[options.offset:need])]

    def _calibrated(self, parts: Sequence[QueryPart], score: float | None) -> float | None:
        """SigLIP's probability, for a single text query (its calibration is for text against images)."""
        single_text = len(parts) == 1 and parts[0].text is not None and parts[0].weight > 0
        return self.probability(score) if single_text and score is not None else None

    def _search_ordered(self, prepared: Prepared, options: SearchOptions) -> list[Hit]:
        return ordered_page(self.store, self.repository, self.encoder.dim, prepared, options)

    def matches(self, parts: Sequence[QueryPart], options: SearchOptions, facets: Sequence[str] = (),
                prepared: Prepared | None = None) -> Matches:
        """How many results there are to page through (images, or studies/patients when grouped) and the
        facet counts of the matching images: every image the filters allow, or with a cutoff those the
        search finds scoring at least it."""
        prepared = prepared or self.prepare(parts, options)
        candidates = prepared.candidates
        among = candidates.ids if candidates is not None and options.probe is not None else None
        if prepared.report is not None:  # the candidates are already min_score's
            among = prepared.report_ids if options.mode == "report" else candidates.ids if candidates else None
        elif options.min_score is not None and prepared.vector is not None:
            among = self.store.ids_scoring(prepared.vector, options.min_score,
                                           None if candidates is None else candidates.ids, prepared.kind)
            if options.exclude:
                among = np.setdiff1d(among, np.asarray(options.exclude, dtype=np.int64))
        counted = among if among is not None else candidates.ids if candidates is not None else None
        listed = True  # the images are counted exactly (else: counting stopped after count_limit)
        if counted is not None:
            images = len(counted)
        elif options.filters.empty:
            images = max(0, self.store.ntotal - len(set(options.exclude)))
        elif prepared.checked is not None:  # a broad filter: counted over the first count_limit images by id
            images, listed = self.repository.count_matching_within(options.filters, options.exclude,
                                                                   self.count_limit)
        else:
            images = self.repository.count_matching(options.filters, options.exclude)
        capped = not listed or images > self.count_limit  # groups and facets of the first count_limit images
        limit = self.count_limit if capped else None
        total = images if not options.group_by else self.repository.count_groups(
            options.filters, options.group_by, options.exclude, counted, limit)
        counts = self.repository.facets(options.filters, facets, options.exclude, counted, limit) if facets else None
        return Matches(total, counts, total_at_least=not listed or (capped and bool(options.group_by)),
                       facets_counted=self.count_limit if capped and facets else None)

    def _collect(self, pairs: list[tuple[int, float]], options: SearchOptions) -> list[tuple[float, StoredImage]]:
        excluded = set(options.exclude)
        floor = -2.0 if options.min_score is None else options.min_score
        pairs = [(i, s) for i, s in pairs if i not in excluded and s >= floor]
        images = self.repository.get_images([image_id for image_id, _ in pairs])
        kept: list[tuple[float, StoredImage]] = []
        groups: set[str] = set()
        for image_id, score in pairs:
            image = images.get(image_id)
            # deleted between the vector search and the row fetch, or its study / patient shown already
            if image is not None and image.sources and new_group(image, options.group_by, groups):
                kept.append((score, image))
        return kept

    def get_image(self, image_id: int) -> StoredImage | None:
        """The image with at least one source, or None."""
        image = self.repository.get_images([image_id]).get(image_id)
        return image if image is not None and image.sources else None

    def require_image(self, image_id: int) -> StoredImage:
        image = self.get_image(image_id)
        if image is None:
            raise UnknownImageError(image_id, loc=("path", "image_id"))
        return image
