"""Stage 3: encode a batch of prepared images with the model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.encoder import Encoder
from indexer.load import Prepared


def encode_batch(encoder: Encoder, batch: Sequence[Prepared], batch_size: int) -> np.ndarray:
    """(len(batch), dim) L2-normalised float32 vectors, in batch order, `batch_size` per forward pass."""
    chunks = [encoder.encode_images([item.pixels for item in batch[start:start + batch_size]])
              for start in range(0, len(batch), batch_size)]
    return np.vstack(chunks) if chunks else np.zeros((0, encoder.dim), dtype=np.float32)
