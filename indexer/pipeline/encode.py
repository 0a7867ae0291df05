"""Stage 3: encode the frames that are new to the index (the only step that runs the model).

Frames arrive as uint8 at the model's input size (core.model.inputs); each batch is copied once, into
one of two preallocated buffers (pinned memory on CUDA), and handed to the encoder, which normalises it
on the device and returns before the vectors are ready there: the caller writes the previous batch
meanwhile (indexer/pipeline/write.py). A buffer is refilled only after the batch it held is finished.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.model.encoder import Encoder, Pending, Ready
from core.model.inputs import assemble
from indexer.pipeline.load import Frame


class _Chunks:
    def __init__(self, parts: list[Pending], dim: int) -> None:
        self._parts, self._dim = parts, dim

    def result(self) -> np.ndarray:
        vectors = [part.result() for part in self._parts]
        return np.vstack(vectors) if vectors else np.zeros((0, self._dim), dtype=np.float32)


class BatchEncoder:
    """Frames -> pending vectors, `batch_size` frames a forward pass, through two alternating buffers."""

    def __init__(self, encoder: Encoder, batch_size: int) -> None:
        self.encoder = encoder
        self.batch_size = max(1, batch_size)
        self._buffers: list[np.ndarray] = []
        self._users: list[Pending | None] = [None, None]  # what each buffer was last handed to
        self._turn = 0

    def _buffer(self) -> np.ndarray:
        if not self._buffers:
            self._buffers = [self.encoder.input_buffer(self.batch_size) for _ in range(2)]
        turn, self._turn = self._turn, 1 - self._turn
        user = self._users[turn]
        if user is not None:
            user.result()  # the batch it held is uploaded (and encoded) before it is overwritten
        return self._buffers[turn]

    def start(self, frames: Sequence[Frame]) -> Pending:
        parts: list[Pending] = []
        for first in range(0, len(frames), self.batch_size):
            buffer = self._buffer()
            part = self.encoder.start_encoding(assemble([f.pixels for f in frames[first:first + self.batch_size]],
                                                        buffer))
            self._users[1 - self._turn] = part
            parts.append(part)
        return parts[0] if len(parts) == 1 else _Chunks(parts, self.encoder.dim)

    def encode(self, frames: Sequence[Frame]) -> np.ndarray:
        return self.start(frames).result()


def given_vectors(frames: Sequence[Frame]) -> Pending:
    """The vectors of frames encoded elsewhere (the Ray engine's actors)."""
    return Ready(np.stack([frame.vector for frame in frames]))  # type: ignore[misc]
