"""Searching: encode the query, look up the nearest vectors, attach their stored metadata.

The encoder and the store are built at the entry point and handed in; this class only combines them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.dicom import RenderOptions
from core.encoder import Encoder
from core.images import LoadedImage, load_image_bytes
from storage.store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    image: dict[str, Any]


class SearchService:
    def __init__(self, encoder: Encoder, store: Store, *, render: RenderOptions, device: str = "cpu") -> None:
        self.encoder = encoder
        self.store = store
        self.render = render
        self.device = device

    def load_query_image(self, data: bytes, source: str) -> LoadedImage:
        """Decode an uploaded image exactly as the indexer does. Raises core's ImageError family."""
        return load_image_bytes(data, source, self.render)

    def search_text(self, query: str, k: int) -> list[Hit]:
        return self._search(self.encoder.encode_texts([query]), k)

    def search_image(self, image: LoadedImage, k: int) -> list[Hit]:
        return self._search(self.encoder.encode_images([image.pixels]), k)

    def _search(self, vector: np.ndarray, k: int) -> list[Hit]:
        pairs = self.store.search(vector, k)[0]
        rows = self.store.repository.get_images([image_id for image_id, _ in pairs])
        hits: list[Hit] = []
        for image_id, score in pairs:
            row = rows.get(image_id)
            if row is None or not row["sources"]:  # deleted between the vector search and the row fetch
                continue
            hits.append(Hit(rank=len(hits) + 1, score=score, image=row))
        return hits

    def get_image(self, image_id: int) -> dict[str, Any] | None:
        return self.store.repository.get_images([image_id]).get(image_id)
