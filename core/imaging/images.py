"""Load any supported image (DICOM recognised by content, PNG, JPEG...) into 8-bit RGB plus metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import ImageError
from core.imaging.dicom import RenderOptions, load_dicom_frames, looks_like_dicom
from core.imaging.metadata import ImageMetadata
from core.imaging.raster import load_raster


@dataclass
class LoadedImage:
    """An image ready for the encoder: (H, W, 3) uint8 RGB pixels, what it is, and its metadata."""

    pixels: np.ndarray
    kind: str  # "dicom", "png", "jpeg", ...
    metadata: ImageMetadata = field(default_factory=ImageMetadata)


def load_image_frames(data: bytes, source: str, options: RenderOptions | None = None) -> list[LoadedImage]:
    """Decode `data` into one image per selected frame (one for PNG/JPEG and single-frame DICOM).
    `source` (a path or an upload field) names the input in every error raised.

    Raises NotAnImageError for bytes that are no image, NoPixelDataError for DICOM objects without
    pixels, ImageTooLargeError above the pixel limit, ImageError for anything else unreadable.
    """
    options = options or RenderOptions()
    if not data:
        raise ImageError(source, "empty file (0 bytes)")
    if looks_like_dicom(data[:256]):
        return [LoadedImage(pixels=pixels, kind="dicom", metadata=meta)
                for pixels, meta in load_dicom_frames(data, source, options)]
    pixels, fmt = load_raster(data, source, max_pixels=options.max_pixels, percentiles=options.percentiles,
                              limit_setting=options.limit_setting, reduce_to=options.reduce_to)
    meta = ImageMetadata(rows=int(pixels.shape[0]), columns=int(pixels.shape[1]), frames=1, frame_index=0)
    return [LoadedImage(pixels=pixels, kind=fmt.lower(), metadata=meta)]


def load_image_bytes(data: bytes, source: str, options: RenderOptions | None = None) -> LoadedImage:
    """One image: the frame the options select first (the middle frame by default)."""
    return load_image_frames(data, source, options)[0]


def load_image_file(path: str | Path, options: RenderOptions | None = None) -> LoadedImage:
    """Read and decode a file from disk."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(source, f"cannot read file: {exc.strerror or exc}") from exc
    return load_image_bytes(data, source, options)
