"""Relevance maps for the API: an indexed image against a text, an uploaded image or another indexed
image, as the model saw it when indexing (core.maps.explain), placed on the file's pixels and drawn as an
overlay at the preview's size (core.maps.geometry). Maps are cached per (image, frame, query, method,
window, model); work that would not finish within the request timeout is refused before it starts."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, replace

import numpy as np

from core.maps.explain import Explainer, ExplainError, RelevanceGrid, occlusion_window
from core.maps.geometry import Placement, placement
from core.model.encoder import Encoder
from search_api.errors import FieldError
from search_api.services.images import ImageFiles
from search_api.services.lru import LRUCache
from storage.records import StoredImage

logger = logging.getLogger(__name__)
DEFAULT_OCCLUSION_PASSES = 257  # the default window: the smallest whose map takes at most this many passes
TIMEOUT_SHARE = 0.8  # of the request timeout an explanation may be expected to take


@dataclass(frozen=True)
class ExplainQuery:
    """What the image is compared with: exactly one of a text, an uploaded image's vector, an indexed
    image's id (the vector of an upload is computed by the caller, which decodes it)."""

    kind: str  # "text" | "upload" | "image"
    key: str  # the cache key: the text, the upload's SHA-256, the image id
    vector: np.ndarray

    @classmethod
    def upload(cls, data: bytes, vector: np.ndarray) -> ExplainQuery:
        return cls("upload", hashlib.sha256(data).hexdigest(), vector)


@dataclass(frozen=True)
class Explanation:
    grid: RelevanceGrid
    placement: Placement
    frame: int
    window: int | None  # occlusion's window in patches
    cached: bool = False


class Explanations:
    def __init__(self, encoder: Encoder, files: ImageFiles, timeout_s: float, cache_size: int = 128) -> None:
        self.encoder, self.files, self.timeout_s = encoder, files, timeout_s
        self._explainer: Explainer | None = None
        self._lock = threading.Lock()
        self.cache: LRUCache[tuple[object, ...], Explanation] = LRUCache(cache_size)

    @property
    def explainer(self) -> Explainer:
        with self._lock:
            if self._explainer is None:
                try:
                    self._explainer = Explainer.of(self.encoder)
                except ExplainError as exc:
                    raise FieldError(422, ("path", "image_id"), f"relevance maps are not available: {exc}",
                                     "explain_unavailable") from None
            return self._explainer

    def explain(self, image: StoredImage, query: ExplainQuery, method: str, window: int | None = None,
                frame: int | None = None) -> Explanation:
        explainer = self.explainer
        index = self.files.frame_of(image, frame, ("body", "frame"))
        if method == "occlusion":
            window = window or occlusion_window(explainer.rows, explainer.cols, DEFAULT_OCCLUSION_PASSES)
            largest = max(explainer.rows, explainer.cols)
            if window > largest:
                raise FieldError(422, ("body", "window"), f"the model's grid is {explainer.rows} x {explainer.cols} "
                                 f"patches: a window of {window} is larger (give 1 to {largest})", "invalid_window")
        else:
            window = None
        key = (image.id, index, query.kind, query.key, method, window, self.encoder.fingerprint.key)
        made: list[bool] = []

        def compute() -> Explanation:
            made.append(True)
            return self._compute(image, index, query, method, window)

        found = self.cache.get(key, compute)
        return found if made else replace(found, cached=True)

    def _compute(self, image: StoredImage, frame: int, query: ExplainQuery, method: str,
                 window: int | None) -> Explanation:
        explainer = self.explainer
        pixels, shown = self.files.as_indexed(image, frame)
        model_image = self.encoder.preprocess([pixels])[0]
        if explainer.seconds_per_image is None and method == "occlusion":  # one pass measures the cost
            explainer.masked_scores(model_image, query.vector, np.ones((1, explainer.rows, explainer.cols), bool))
        self._check_cost(explainer, method, window or 1)
        grid = explainer.explain(model_image, query.vector, method, window=window or 1)
        logger.info("relevance map (%s, %d passes) in %.2f s", method, grid.passes, grid.seconds)
        where = placement(explainer.input, explainer.patch, (pixels.shape[0], pixels.shape[1]), shown)
        return Explanation(grid, where, frame, window)

    def _check_cost(self, explainer: Explainer, method: str, window: int) -> None:
        expected = explainer.estimate_seconds(method, window)
        budget = self.timeout_s * TIMEOUT_SHARE
        if expected is None or expected <= budget:
            return
        per = explainer.seconds_per_image or 0.0
        fits = occlusion_window(explainer.rows, explainer.cols, max(2, int(budget / per))) if per else None
        hint = f"use method=gradient, or occlusion with window={fits} or more" if method == "occlusion" and fits \
            else "use a faster machine (a GPU) or raise MEDSEARCH_REQUEST_TIMEOUT_S"
        loc = ("body", "window") if method == "occlusion" else ("body", "method")
        raise FieldError(422, loc, f"this map would take about {expected:.0f} s ({explainer.passes(method, window)} "
                         f"passes of {per:.2f} s), more than the request timeout allows ({self.timeout_s:g} s, "
                         f"MEDSEARCH_REQUEST_TIMEOUT_S): {hint}", "explanation_too_slow")
