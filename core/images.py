"""Load any supported image (DICOM recognised by content, PNG, JPEG...) into 8-bit RGB plus metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.dicom import load_dicom, looks_like_dicom
from core.errors import ImageError
from core.metadata import ImageMetadata
from core.raster import load_raster

DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_PERCENTILES = (0.5, 99.5)


@dataclass
class LoadedImage:
    """An image ready for the encoder: (H, W, 3) uint8 RGB pixels, what it is, and its metadata."""

    pixels: np.ndarray
    kind: str  # "dicom", "png", "jpeg", ...
    metadata: ImageMetadata = field(default_factory=ImageMetadata)


def load_image_bytes(
    data: bytes,
    source: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> LoadedImage:
    """Decode `data`. `source` (a path or an upload field) names the input in every error raised.

    Raises NotAnImageError for bytes that are no image, NoPixelDataError for DICOM objects without
    pixels, ImageTooLargeError above `max_pixels`, ImageError for anything else unreadable.
    """
    if not data:
        raise ImageError(source, "empty file (0 bytes)")
    if looks_like_dicom(data[:256]):
        pixels, meta = load_dicom(data, source, max_pixels=max_pixels, percentiles=percentiles)
        return LoadedImage(pixels=pixels, kind="dicom", metadata=meta)
    pixels, fmt = load_raster(data, source, max_pixels=max_pixels, percentiles=percentiles)
    meta = ImageMetadata(rows=int(pixels.shape[0]), columns=int(pixels.shape[1]), frames=1)
    return LoadedImage(pixels=pixels, kind=fmt.lower(), metadata=meta)


def load_image_file(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> LoadedImage:
    """Read and decode a file from disk."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(source, f"cannot read file: {exc.strerror or exc}") from exc
    return load_image_bytes(data, source, max_pixels=max_pixels, percentiles=percentiles)
