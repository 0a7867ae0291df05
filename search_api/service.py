"""Searching: build a query vector, search within the filters, attach stored metadata; classify.

The encoder and the store are built at the entry point and handed in; this class only combines them.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

import numpy as np
from PIL import Image

from core.dicom import RenderOptions
from core.encoder import Encoder, l2_normalise
from core.errors import ImageError, MedsearchError
from core.images import LoadedImage, load_image_bytes, load_image_frames
from core.sources import Source, SourceOptions, open_source
from core.sources.dicomweb import DicomWebConfig, instance_url, is_dicomweb, viewer_url
from search_api.errors import PreviewError, UnknownImageError
from storage.records import ImageFilter, StoredImage, StoredSource
from storage.repository import Repository
from storage.store import Store

logger = logging.getLogger(__name__)
K = TypeVar("K")
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: K, make: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = make()
        with self._lock:
            if self.size > 0:
                self._items[key] = value
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return value


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
class SourceLinks:
    """Back-references of a source indexed from a PACS (None for files)."""

    url: str | None  # the instance's WADO-RS URL
    viewer_url: str | None  # its study in the PACS viewer, when a template is configured


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
    def __init__(self, encoder: Encoder, store: Store, repository: Repository, *, render: RenderOptions,
                 device: str = "cpu",
                 text_cache_size: int = 1024, preview_cache_size: int = 256,
                 review_min_probability: float = 0.5, review_max_entropy: float = 0.85,
                 viewer_url_template: str | None = None, dicomweb: DicomWebConfig | None = None,
                 max_upload_pixels: int | None = None, decode_slots: int = 2) -> None:
        self.viewer_url_template = viewer_url_template
        self.dicomweb = dicomweb
        self._archives: dict[str, Source] = {}
        self._archives_lock = threading.Lock()
        self.encoder = encoder
        self.store = store
        self.repository = repository
        self.render = render
        upload_limit = min(render.max_pixels, max_upload_pixels or render.max_pixels)
        self.upload_render = replace(render, max_pixels=upload_limit, limit_setting="MEDSEARCH_MAX_UPLOAD_PIXELS")
        # decoding costs ~34 bytes per pixel at its peak: at most this many decodes (uploads, previews) at once
        self._decode_slots = threading.BoundedSemaphore(decode_slots)
        self.device = device
        self.text_cache: LRUCache[str, np.ndarray] = LRUCache(text_cache_size)
        self.preview_cache: LRUCache[tuple[int, int], bytes] = LRUCache(preview_cache_size)
        self.review_min_probability = review_min_probability
        self.review_max_entropy = review_max_entropy

    def close(self) -> None:
        try:
            self.store.close()
        finally:
            self.repository.close()

    # -- query vectors --------------------------------------------------------------------------------
    def load_query_image(self, data: bytes, source: str) -> LoadedImage:
        """Decode an uploaded image exactly as the indexer does, within the upload pixel limit and the
        decode slots. Raises core's ImageError family."""
        with self._decode_slots:
            return load_image_bytes(data, source, self.upload_render)

    def text_vector(self, text: str) -> np.ndarray:
        """The text tower's embedding, from the LRU cache when the same text was asked before."""
        return self.text_cache.get(text, lambda: self.encoder.encode_texts([text])[0])

    def query_vector(self, parts: Sequence[QueryPart]) -> np.ndarray:
        """The normalised weighted sum of the parts' embeddings. Raises UnknownImageError."""
        total = np.zeros(self.encoder.dim, dtype=np.float32)
        for part in parts:
            if part.text is not None:
                vector = self.text_vector(part.text)
            elif part.image_id is not None:
                stored = self.store.vector_of(part.image_id)
                if stored is None:
                    raise UnknownImageError(part.image_id)
                vector = stored
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
    def search(self, parts: Sequence[QueryPart], options: SearchOptions) -> list[Hit]:
        vector = self.query_vector(parts)
        calibrated = len(parts) == 1 and parts[0].text is not None and parts[0].weight > 0
        allowed = None if options.filters.empty else self.repository.filter_image_ids(options.filters)
        if allowed is not None and options.exclude:
            allowed = np.setdiff1d(allowed, np.asarray(options.exclude, dtype=np.int64))
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
                    probability=self.probability(score) if calibrated else None, image=row)
                for i, (score, row) in enumerate(kept[options.offset:need])]

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

    def links(self, source: StoredSource) -> SourceLinks:
        """Back-references of a source indexed from a PACS: the instance's WADO-RS URL and the study in
        the PACS viewer (when a viewer URL template is configured)."""
        identifiers = {"study_uid": source.study_uid, "series_uid": source.series_uid, "sop_uid": source.sop_uid}
        return SourceLinks(instance_url(source.archive, source.path),
                           viewer_url(self.viewer_url_template, source.archive, identifiers))

    def _archive(self, key: str) -> Source:
        """The archive a source was recorded from; a PACS is opened once (it keeps its connections),
        files afresh each time (a zip may have been replaced)."""
        options = SourceOptions(dicomweb=self.dicomweb)
        if not is_dicomweb(key):
            return open_source(key, options)
        with self._archives_lock:
            if key not in self._archives:
                self._archives[key] = open_source(key, options)
            return self._archives[key]

    # -- zero-shot classification ---------------------------------------------------------------------
    def classify(self, image: LoadedImage, prompts: dict[str, str], neighbours: int = 10) -> Classification:
        """SigLIP semantics: each label's own sigmoid probability, plus the softmax across the labels,
        its entropy, and the labels of the nearest indexed cases."""
        vector = self.encoder.encode_images([image.pixels])[0]
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
        found = self.store.search(vector[None, :], neighbours)[0] if neighbours else []
        neighbour_images = self.repository.get_images([image_id for image_id, _ in found])
        for neighbour in neighbour_images.values():
            votes.update(set(neighbour.metadata.labels))
        counted = len(neighbour_images)
        return Classification(scores, entropy, bool(reasons), reasons,
                              [(label, n, n / counted) for label, n in votes.most_common()], counted)

    # -- previews -------------------------------------------------------------------------------------
    def preview(self, image_id: int, size: int) -> bytes:
        """PNG of the image's first recorded source, rendered as for indexing, at most `size` pixels a
        side. The file is the one recorded for this id, never one named by a request."""
        return self.preview_cache.get((image_id, size), lambda: self._render_preview(image_id, size))

    def _render_preview(self, image_id: int, size: int) -> bytes:
        image = self.get_image(image_id)
        if image is None:
            raise UnknownImageError(image_id, loc=("path", "image_id"))
        source = image.sources[0]
        try:
            data = self._archive(source.archive).read(source.path)
            options = replace(self.render, frames=f"frame:{source.frame_index}")
            with self._decode_slots:
                pixels = load_image_frames(data, source.path, options)[0].pixels
        except (OSError, MedsearchError, ImageError) as exc:
            logger.warning("preview of image %d: its file cannot be read any more (%s)", image_id,
                           type(exc).__name__)
            raise PreviewError(f"the file recorded for image {image_id} cannot be read any more",
                               ("path", "image_id")) from exc
        picture = Image.fromarray(pixels)
        picture.thumbnail((size, size))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", optimize=False)
        return buffer.getvalue()
