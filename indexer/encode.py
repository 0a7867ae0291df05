"""Stage 3: encode a batch of prepared images with the model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.encoder import Encoder
from indexer.load import Prepared


def encode_batch(encoder: Encoder, batch: Sequence[Prepared]) -> np.ndarray:
    """(len(batch), dim) L2-normalised float32 vectors, in batch order."""
    return encoder.encode_images([item.pixels for item in batch])
