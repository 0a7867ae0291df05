"""Stage 3: encode the frames that are new to the index (the only step that runs the model)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.encoder import Encoder
from indexer.load import Frame


def encode_frames(encoder: Encoder, frames: Sequence[Frame]) -> np.ndarray:
    """(len(frames), dim) L2-normalised float32, from the pixel values the load stage prepared."""
    if not frames:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return encoder.encode_pixel_values(np.stack([frame.pixel_values for frame in frames]))
