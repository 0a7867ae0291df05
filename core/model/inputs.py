"""What a model's image processor does, split where the pixels cross processes.

`ModelInput.resize` runs in the decoding workers: an 8-bit image to the model's input size with the
processor's own resampling, still 8 bits (a grey image stays one channel). `ModelInput.normalise`
runs where the model runs (on the GPU when there is one): rescale and mean/std, in float32. For the
SigLIP family (a fixed height x width resize, no crop) the resize is the processor's own Pillow call,
so the two halves give the processor's pixel values (tests/core/model/test_model_input.py bounds the cosine
of the embeddings at 0.9999 and finds them equal); other processors (a shortest-edge resize and a
centre crop, CLIP) are run whole with rescaling and normalisation switched off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from core.errors import ModelLoadError


@dataclass(frozen=True)
class ModelInput:
    height: int
    width: int
    resample: int  # a PIL resampling filter
    rescale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    processor: Any = None  # the whole processor, for resizes this class does not reproduce (a crop)

    @property
    def decode_side(self) -> int:
        """Twice the longer side of the model's input: images are decoded at no less than this (from
        twice its size the resize to the model's input is within a few grey levels of one from full
        resolution: tests/core/model/test_model_input.py)."""
        return 2 * max(self.height, self.width)

    @classmethod
    def from_processor(cls, processor: Any) -> ModelInput:
        """Read a transformers (image) processor's settings. ModelLoadError if it cannot be split."""
        image = getattr(processor, "image_processor", processor)
        size = getattr(image, "size", None) or {}
        get = size.get if isinstance(size, dict) else lambda key, default=None: getattr(size, key, default)
        crop = getattr(image, "crop_size", None) or {}
        crop_get = crop.get if isinstance(crop, dict) else lambda key, default=None: getattr(crop, key, default)
        do_crop = bool(getattr(image, "do_center_crop", False))
        height, width = (crop_get("height"), crop_get("width")) if do_crop else (get("height"), get("width"))
        if not (height and width):
            raise ModelLoadError(f"the image processor {type(image).__name__} has no fixed output size ({size})")
        fixed = bool(getattr(image, "do_resize", True)) and get("height") and get("width") and not do_crop
        rescale = float(getattr(image, "rescale_factor", 1 / 255)) if getattr(image, "do_rescale", True) else 1.0
        normalise = getattr(image, "do_normalize", True)
        mean = tuple(float(v) for v in _three(getattr(image, "image_mean", 0.0))) if normalise else (0.0,) * 3
        std = tuple(float(v) for v in _three(getattr(image, "image_std", 1.0))) if normalise else (1.0,) * 3
        resample = int(getattr(image, "resample", Image.Resampling.BICUBIC))
        return cls(int(height), int(width), resample, rescale, mean, std,  # type: ignore[arg-type]
                   None if fixed else image)

    def resize(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (height, width) uint8 for a grey image (three equal channels that share
        memory, as core.imaging.preprocess.grey_to_rgb makes them), else (height, width, 3)."""
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"expected (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
        grey = pixels.strides[2] == 0
        if self.processor is not None:
            out = self.processor(images=[Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")],
                                 do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
            return np.ascontiguousarray(np.clip(np.rint(np.moveaxis(out, 0, -1)), 0, 255).astype(np.uint8))
        if pixels.shape[:2] == (self.height, self.width):
            return np.ascontiguousarray(pixels[:, :, 0] if grey else pixels)
        image = Image.fromarray(np.ascontiguousarray(pixels[:, :, 0]) if grey else np.ascontiguousarray(pixels),
                                mode="L" if grey else "RGB")
        return np.asarray(image.resize((self.width, self.height), resample=Image.Resampling(self.resample)))

    def normalise(self, batch: Any) -> Any:
        """A torch uint8 batch (n, height, width, 3) -> float32 (n, 3, height, width) pixel values."""
        import torch

        mean = torch.tensor(self.mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
        values = batch.permute(0, 3, 1, 2).to(torch.float32) * self.rescale
        return (values - mean) / std


def _three(value: Any) -> tuple[float, ...]:
    values = tuple(value) if isinstance(value, list | tuple) else (value,) * 3
    return values if len(values) == 3 else (values[0],) * 3


def assemble(images: list[np.ndarray], out: np.ndarray) -> np.ndarray:
    """Copy model-size images (grey or RGB) into the first rows of a preallocated (n, h, w, 3) uint8
    buffer; returns those rows (a view, no further copy)."""
    for row, image in enumerate(images):
        if image.ndim == 2:  # a channel at a time: 5x faster than broadcasting (H, W, 1) into (H, W, 3)
            for channel in range(3):
                out[row, :, :, channel] = image
        else:
            out[row] = image
    return out[:len(images)]
