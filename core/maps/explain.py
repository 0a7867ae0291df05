"""Relevance maps: where on an image the SigLIP score of an (image, query) pair is sensitive.

Two methods over the model's patch grid (rows x cols = input size / patch size):
- `gradient`: the score's gradient with respect to the input pixels times the pixels (after the
  processor's normalisation, so the mean colour is 0), summed per patch: the first-order estimate of the
  score's fall when the patch is masked. One forward and one backward pass. Chosen over gradient x
  activation of the last layer's patch tokens (`at="tokens"`, a backward through the pooling head only)
  by the deletion/insertion measurements (docs/maps.md; bench/explain_bench.py).
- `occlusion`: the score's fall when a window of patches is replaced by the processor's mean colour
  (zero after normalisation), batched; each cell gets the mean fall of the windows that cover it.
  The slower reference the fast map is checked against (tests/core/maps/test_explain.py, bench/explain_bench.py).

The score is the cosine of the image embedding with the query vector (L2-normalised); positive values
mean the patch raises it. A map says where the model's score is sensitive, not where a finding is.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import MedsearchError
from core.model.inputs import ModelInput

logger = logging.getLogger(__name__)
METHODS = ("gradient", "occlusion")


class ExplainError(MedsearchError):
    """A map cannot be computed for this model or request (the message says why and what to do)."""


@dataclass(frozen=True)
class RelevanceGrid:
    """Values on the model's patch grid (row 0 at the top), the pair's score, and what it cost."""

    values: np.ndarray  # (rows, cols) float32
    score: float
    method: str
    passes: int  # image forward passes run
    seconds: float


class Explainer:
    """Relevance maps of one loaded transformers SigLIP/CLIP model (the encoder's own, shared)."""

    def __init__(self, model: Any, model_input: ModelInput, device: str = "cpu", dtype: Any = None) -> None:
        vision = getattr(model, "vision_model", None)
        layers = getattr(getattr(vision, "encoder", None), "layers", None)
        if vision is None or not layers:
            raise ExplainError(f"{type(model).__name__} has no vision transformer layers to explain")
        config = getattr(model.config, "vision_config", model.config)
        self.patch = int(config.patch_size)
        self.input = model_input
        if model_input.height % self.patch or model_input.width % self.patch:
            raise ExplainError(f"the model input {model_input.height}x{model_input.width} is not a whole number "
                               f"of {self.patch}-pixel patches")
        self.rows, self.cols = model_input.height // self.patch, model_input.width // self.patch
        self._model, self._last = model, layers[-1]
        self._device, self._dtype = device, dtype
        self._lock = threading.Lock()  # the layer hook is per model: one explanation at a time
        self.seconds_per_image: float | None = None  # measured, for refusing work that would not finish
        if any(type(m).__name__.startswith(("DynamicQuantized", "QuantizedLinear")) for m in model.modules()):
            raise ExplainError("the model is quantized (--quantize int8): relevance maps need its float weights")
        for parameter in model.parameters():  # gradients are taken with respect to activations only
            parameter.requires_grad_(False)

    @classmethod
    def of(cls, encoder: Any) -> Explainer:
        """The explainer of an HFEncoder (core.model.encoder); ExplainError for other encoders."""
        parts = getattr(encoder, "explain_parts", None)
        if parts is None:
            raise ExplainError(f"{type(encoder).__name__} does not expose a transformers model to explain")
        return cls(*parts())

    def passes(self, method: str, window: int = 1, stride: int | None = None) -> int:
        """Image forward passes a map costs."""
        if method == "gradient":
            return 1
        stride = stride or window
        return len(_starts(self.rows, window, stride)) * len(_starts(self.cols, window, stride)) + 1

    def estimate_seconds(self, method: str, window: int = 1, stride: int | None = None) -> float | None:
        per = self.seconds_per_image
        return None if per is None else per * self.passes(method, window, stride) * (1.5 if method == "gradient" else 1)

    # -- the two methods --------------------------------------------------------------------------------

    def explain(self, model_image: np.ndarray, query: np.ndarray, method: str = "gradient", *, window: int = 1,
                stride: int | None = None, batch: int = 16) -> RelevanceGrid:
        """The map of `method` for a model-size uint8 image ((H, W) grey or (H, W, 3)) and a query vector."""
        if method == "gradient":
            return self.gradient(model_image, query)
        if method == "occlusion":
            return self.occlusion(model_image, query, window=window, stride=stride, batch=batch)
        raise ExplainError(f"method {method!r}: expected one of {', '.join(METHODS)}")

    def gradient(self, model_image: np.ndarray, query: np.ndarray, at: str = "input") -> RelevanceGrid:
        """`at` = "input": the pixels' gradient x (pixels - the mask's mean colour), summed per patch (the
        first-order change of the score when the patch is masked); "tokens": the last layer's patch tokens'
        gradient x activation."""
        import torch

        started = time.perf_counter()
        captured: dict[str, Any] = {}

        def start_graph(_module: Any, _inputs: Any, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            leaf = hidden.detach().requires_grad_(True)
            captured["tokens"] = leaf
            return (leaf, *output[1:]) if isinstance(output, tuple) else leaf

        values = self._pixels([model_image])
        cells = self.rows * self.cols
        with self._lock:
            handle = self._last.register_forward_hook(start_graph) if at == "tokens" else None
            try:
                with torch.enable_grad():
                    if at == "input":
                        values = values.detach().requires_grad_(True)
                    score = self._scores(values, query)[0]
                    leaf = captured["tokens"] if at == "tokens" else values
                    (grad,) = torch.autograd.grad(score, leaf)
            finally:
                if handle is not None:
                    handle.remove()
        if at == "tokens":
            if leaf.shape[1] < cells:
                raise ExplainError(f"the last layer has {leaf.shape[1]} tokens, fewer than the {cells} patches")
            relevance = (leaf[0, -cells:].float() * grad[0, -cells:].float()).sum(-1)
            grid = relevance.detach().cpu().numpy().reshape(self.rows, self.cols)
        else:  # masking sets a patch's normalised pixels to 0: the score changes by about -grad . pixels
            product = (leaf[0].float() * grad[0].float()).sum(0).detach().cpu().numpy()
            grid = product.reshape(self.rows, self.patch, self.cols, self.patch).sum(axis=(1, 3))
        seconds = time.perf_counter() - started
        self._measured(seconds / 1.5)
        return RelevanceGrid(grid.astype(np.float32), float(score.detach()), "gradient", 1, seconds)

    def occlusion(self, model_image: np.ndarray, query: np.ndarray, *, window: int = 1, stride: int | None = None,
                  batch: int = 16) -> RelevanceGrid:
        if window < 1 or window > max(self.rows, self.cols):
            raise ExplainError(f"occlusion window {window}: expected 1..{max(self.rows, self.cols)} patches")
        stride = stride or window
        started = time.perf_counter()
        windows = [(r, c) for r in _starts(self.rows, window, stride) for c in _starts(self.cols, window, stride)]
        masks = np.ones((len(windows), self.rows, self.cols), dtype=bool)
        for n, (r, c) in enumerate(windows):
            masks[n, r:r + window, c:c + window] = False
        scores = self.masked_scores(model_image, query, np.concatenate([np.ones((1, self.rows, self.cols), bool),
                                                                        masks]), batch=batch)
        base, falls = scores[0], scores[0] - scores[1:]
        total = np.zeros((self.rows, self.cols), dtype=np.float64)
        counts = np.zeros((self.rows, self.cols), dtype=np.float64)
        for fall, mask in zip(falls, masks, strict=True):
            total[~mask] += fall
            counts[~mask] += 1
        grid = (total / np.maximum(counts, 1)).astype(np.float32)
        return RelevanceGrid(grid, float(base), "occlusion", len(scores), time.perf_counter() - started)

    def masked_scores(self, model_image: np.ndarray, query: np.ndarray, keep: np.ndarray, *,
                      batch: int = 16) -> np.ndarray:
        """Scores of the image with the patches where `keep` (m, rows, cols) is False replaced by the
        mean colour: the occlusion map's passes, and the deletion and insertion curves' points."""
        import torch

        if keep.ndim != 3 or keep.shape[1:] != (self.rows, self.cols):
            raise ExplainError(f"masks of shape {keep.shape}: expected (m, {self.rows}, {self.cols})")
        base = self._pixels([model_image])
        out = []
        started = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(keep), batch):
                chunk = torch.from_numpy(np.ascontiguousarray(keep[start:start + batch])).to(self._device)
                pixel_mask = chunk.repeat_interleave(self.patch, 1).repeat_interleave(self.patch, 2)[:, None]
                out.append(self._scores(base * pixel_mask.to(base.dtype), query).float().cpu().numpy())
        self._measured((time.perf_counter() - started) / max(1, len(keep)))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    # -- helpers ----------------------------------------------------------------------------------------

    def _pixels(self, images: list[np.ndarray]) -> Any:
        import torch

        batch = np.empty((len(images), self.input.height, self.input.width, 3), dtype=np.uint8)
        for n, image in enumerate(images):
            if image.shape[:2] != (self.input.height, self.input.width):
                raise ExplainError(f"the image is {image.shape[1]}x{image.shape[0]}; the model takes "
                                   f"{self.input.width}x{self.input.height} (resize it with the encoder first)")
            batch[n] = image[:, :, None] if image.ndim == 2 else image
        values = self.input.normalise(torch.from_numpy(batch).to(self._device))
        return values.to(self._dtype) if self._dtype is not None else values

    def _scores(self, values: Any, query: np.ndarray) -> Any:
        import torch

        output = self._model.get_image_features(pixel_values=values)
        features = output if hasattr(output, "detach") else output.pooler_output
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        target = torch.tensor(np.asarray(query, dtype=np.float32), device=features.device)
        return features @ torch.nn.functional.normalize(target, dim=0)

    def _measured(self, seconds: float) -> None:
        old = self.seconds_per_image
        self.seconds_per_image = seconds if old is None else 0.7 * old + 0.3 * seconds


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window starts covering 0..size (the last flush with the end)."""
    if window >= size:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def occlusion_window(rows: int, cols: int, max_passes: int) -> int:
    """The smallest square window (in patches, non-overlapping) whose occlusion map takes at most
    `max_passes` passes."""
    for window in range(1, max(rows, cols) + 1):
        if math.ceil(rows / window) * math.ceil(cols / window) + 1 <= max_passes:
            return window
    return max(rows, cols)
