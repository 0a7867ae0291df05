"""Searching: build a query vector, search within the filters, count and facet the matches, attach stored
records; classify an upload or an indexed image. The encoder, the store and the repository are built at
the entry point and handed in; this class only combines them (reading files back: search_api/images.py)."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from core.encoder import Encoder, l2_normalise
from core.images import LoadedImage
from core.sources.dicomweb import instance_url, viewer_url
from search_api.errors import UnknownImageError
from search_api.images import ImageFiles
from search_api.lru import LRUCache
from storage.records import ImageFilter, StoredImage, StoredSource
from storage.repository import Repository
from storage.store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryPart:
    """One weighted part of a query: a text, an indexed image, or an uploaded image."""

    weight: float = 1.0
    text: str | None = None
    image_id: int | None = None
    image: LoadedImage | None = None


@dataclass(frozen=True)
class SearchOptions:
    k: int = 10
    offset: int = 0
    filters: ImageFilter = field(default_factory=ImageFilter)
    min_score: float | None = None
    group_by: str | None = None  # "study" or "patient": the best image of each
    exclude: tuple[int, ...] = ()  # image ids left out (the query image of "more like this")


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    probability: float | None  # SigLIP's calibrated probability, for single text queries
    image: StoredImage


@dataclass(frozen=True)
class Matches:
    total: int
    facets: dict[str, dict[str, int]] | None  # field -> value -> images


@dataclass(frozen=True)
class SourceLinks:
    """Back-references of a source: its WADO-RS URL (PACS only) and its study in a viewer."""

    url: str | None
    viewer_url: str | None


@dataclass(frozen=True)
class LabelScore:
    label: str
    cosine: float
    probability: float  # sigmoid(scale * cos + bias): SigLIP's per-label probability
    softmax: float  # share among the candidate labels


@dataclass(frozen=True)
class Classification:
    labels: list[LabelScore]
    entropy: float  # normalised to [0, 1] by log(number of labels)
    requires_human_review: bool
    review_reasons: list[str]
    neighbour_votes: list[tuple[str, int, float]]  # label, count, frequency among the neighbours
    neighbours: int


class SearchService:
    def __init__(self, encoder: Encoder, store: Store, repository: Repository, files: ImageFiles, *,
                 device: str = "cpu", text_cache_size: int = 1024, review_min_probability: float = 0.5,
                 review_max_entropy: float = 0.85, viewer_url_template: str | None = None) -> None:
        self.encoder = encoder
        self.store = store
        self.repository = repository
        self.files = files
        self.device = device
        self.viewer_url_template = viewer_url_template
        self.text_cache: LRUCache[str, np.ndarray] = LRUCache(text_cache_size)
        self.review_min_probability = review_min_probability
        self.review_max_entropy = review_max_entropy

    def close(self) -> None:
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
        stored = self.store.vector_of(image_id)
        if stored is None:
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
        if scale is None or bias is None:
            return None
        return 1.0 / (1.0 + math.exp(-(scale * cosine + bias)))

    # -- search ---------------------------------------------------------------------------------------
    def _allowed(self, options: SearchOptions) -> np.ndarray | None:
        allowed = None if options.filters.empty else self.repository.filter_image_ids(options.filters)
        if allowed is not None and options.exclude:
            allowed = np.setdiff1d(allowed, np.asarray(options.exclude, dtype=np.int64))
        return allowed

    def search(self, parts: Sequence[QueryPart], options: SearchOptions) -> list[Hit]:
        vector = self.query_vector(parts)
        calibrated = len(parts) == 1 and parts[0].text is not None and parts[0].weight > 0
        allowed = self._allowed(options)
        need = options.offset + options.k
        fetch = need * (4 if options.group_by else 1) + len(options.exclude)
        while True:
            pairs = self.store.search(vector, fetch, allowed)[0]
            exhausted = len(pairs) < fetch
            kept = self._collect(pairs, options)
            if len(kept) >= need or exhausted or (
                    options.min_score is not None and pairs and pairs[-1][1] < options.min_score):
                break
            fetch *= 2
        return [Hit(rank=options.offset + i + 1, score=score,
                    probability=self.probability(score) if calibrated else None, image=image)
                for i, (score, image) in enumerate(kept[options.offset:need])]

    def matches(self, parts: Sequence[QueryPart], options: SearchOptions, facets: Sequence[str] = ()) -> Matches:
        """How many results there are to page through (images, or studies/patients when grouped) and the
        facet counts of the matching images: every image the filters allow, or with a cutoff those the
        search finds scoring at least it."""
        among = None
        if options.min_score is not None:
            among = self.store.ids_scoring(self.query_vector(parts), options.min_score, self._allowed(options))
            if options.exclude:
                among = np.setdiff1d(among, np.asarray(options.exclude, dtype=np.int64))
        if options.group_by:
            total = self.repository.count_groups(options.filters, options.group_by, options.exclude, among)
        elif among is not None:
            total = len(among)
        elif options.filters.empty:
            total = max(0, self.store.ntotal - len(set(options.exclude)))
        else:
            total = self.repository.count_matching(options.filters, options.exclude)
        counts = self.repository.facets(options.filters, facets, options.exclude, among) if facets else None
        return Matches(total, counts)

    def _collect(self, pairs: list[tuple[int, float]], options: SearchOptions) -> list[tuple[float, StoredImage]]:
        excluded = set(options.exclude)
        floor = -2.0 if options.min_score is None else options.min_score
        pairs = [(i, s) for i, s in pairs if i not in excluded and s >= floor]
        images = self.repository.get_images([image_id for image_id, _ in pairs])
        kept: list[tuple[float, StoredImage]] = []
        groups: set[str] = set()
        for image_id, score in pairs:
            image = images.get(image_id)
            if image is None or not image.sources:  # deleted between the vector search and the row fetch
                continue
            if options.group_by:
                meta = image.metadata
                key = (meta.study_uid if options.group_by == "study" else meta.patient_id) or f"image:{image_id}"
                if key in groups:
                    continue
                groups.add(key)
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

    def links(self, source: StoredSource) -> SourceLinks:
        """Back-references of a source: a PACS instance's WADO-RS URL, and the study in the viewer of
        MEDSEARCH_VIEWER_URL_TEMPLATE for every source with a Study Instance UID."""
        identifiers = {"study_uid": source.study_uid, "series_uid": source.series_uid, "sop_uid": source.sop_uid}
        return SourceLinks(instance_url(source.archive, source.path),
                           viewer_url(self.viewer_url_template, source.archive, identifiers))

    # -- zero-shot classification ---------------------------------------------------------------------
    def classify(self, image: LoadedImage | int, prompts: dict[str, str], neighbours: int = 10) -> Classification:
        """SigLIP semantics for an upload or an indexed image (by id): each label's own sigmoid
        probability, the softmax across the labels, its entropy, and the labels of the nearest indexed
        cases (an indexed image itself left out)."""
        own = image if isinstance(image, int) else None
        vector = self.image_vector(image) if isinstance(image, int) else self.encoder.encode_images([image.pixels])[0]
        texts = np.stack([self.text_vector(prompt) for prompt in prompts.values()])
        cosines = texts @ vector
        scale = getattr(self.encoder, "logit_scale", None) or 1.0
        bias = getattr(self.encoder, "logit_bias", None) or 0.0
        logits = scale * cosines + bias
        sigmoid = 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max())
        softmax = shifted / shifted.sum()
        entropy = float(-(softmax * np.log(np.clip(softmax, 1e-12, 1))).sum() / math.log(len(softmax))) if (
            len(softmax) > 1) else 0.0
        scores = sorted((LabelScore(label, float(c), float(p), float(s)) for label, c, p, s in
                         zip(prompts, cosines, sigmoid, softmax, strict=True)), key=lambda x: -x.probability)
        reasons = []
        if scores[0].probability < self.review_min_probability:
            reasons.append(f"top probability {scores[0].probability:.2f} < {self.review_min_probability}")
        if entropy > self.review_max_entropy:
            reasons.append(f"normalised entropy {entropy:.2f} > {self.review_max_entropy}")
        votes: Counter[str] = Counter()
        found = self.store.search(vector[None, :], neighbours + (own is not None))[0] if neighbours else []
        nearest = [image_id for image_id, _ in found if image_id != own][:neighbours]
        neighbour_images = self.repository.get_images(nearest)
        for neighbour in neighbour_images.values():
            votes.update(set(neighbour.metadata.labels))
        counted = len(neighbour_images)
        return Classification(scores, entropy, bool(reasons), reasons,
                              [(label, n, n / counted) for label, n in votes.most_common()], counted)
