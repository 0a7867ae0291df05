"""Where the model runs: the device, what waits for it (vectors copied back without blocking) and how
many images a forward pass takes there."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import ModelLoadError

CPU_BATCH = 16  # images a forward pass on a CPU (larger batches gain nothing there: bench/indexing_throughput.py)
MAX_BATCH = 512


def choose_device(requested: str) -> str:
    """'auto' picks CUDA, then Apple MPS, then CPU. An explicit device that is absent is an error."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but torch sees no CUDA GPU "
                             f"(torch {torch.__version__}; docs/install.md says how to install a CUDA build)")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("--device mps was asked for but this torch has no MPS support")
    return requested



def batch_size_for(free_bytes: int, per_image_bytes: float, headroom: float = 0.7, cap: int = MAX_BATCH) -> int:
    """The largest power of two up to `cap` whose activations (`per_image_bytes` each, measured) fit in
    `headroom` of the free device memory; at least 1."""
    size = 1
    while size * 2 <= cap and size * 2 * per_image_bytes <= headroom * free_bytes:
        size *= 2
    return size


class CudaPending:
    """Vectors normalised on the GPU and copied into pinned host memory without waiting; `result()`
    waits for that copy (and so for the forward pass and the batch's upload before it)."""

    def __init__(self, features: Any, dim: int) -> None:
        import torch

        if features.ndim != 2 or features.shape[1] != dim:
            raise ModelLoadError(f"model returned embeddings of shape {tuple(features.shape)}, expected (n, {dim})")
        unit = torch.nn.functional.normalize(features.float(), dim=1, eps=1e-12)
        self._host = torch.empty(unit.shape, dtype=torch.float32, pin_memory=True)
        self._host.copy_(unit, non_blocking=True)
        self._done = torch.cuda.Event()
        self._done.record()

    def result(self) -> np.ndarray:
        self._done.synchronize()
        return self._host.numpy()
