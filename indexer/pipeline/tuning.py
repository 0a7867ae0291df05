"""The text queries an index build tunes its search effort on: the shipped query phrases
(core/reports/query_phrases.py) encoded by the index's own text encoder, so that `build-index` and a run that
grows the index choose an effort for text queries as well as for image queries (storage/vectors/build.py)."""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from core.reports.query_phrases import query_phrases

logger = logging.getLogger(__name__)

TEXT_QUERIES = 400  # half tune the effort, half measure the recall it reaches


class TextEncoder(Protocol):
    def encode_texts(self, texts: list[str]) -> np.ndarray: ...


def text_tuning_queries(encoder: TextEncoder, count: int = TEXT_QUERIES, batch: int = 64) -> np.ndarray:
    """(count, dim) float32, rows L2-normalised: the query phrases as the model embeds them."""
    phrases = query_phrases(count)
    logger.info("encoding %d query phrases to tune the index for text queries", len(phrases))
    return np.vstack([encoder.encode_texts(phrases[i:i + batch]) for i in range(0, len(phrases), batch)])
