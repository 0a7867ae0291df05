"""PNG, JPEG (and TIFF, BMP, WebP) through Pillow, to 8-bit RGB.

- EXIF orientation is applied.
- 16-bit, 32-bit integer and float greyscale get the same percentile window as a DICOM without a
  window (never a plain clip to 8 bits, which turns most 16-bit radiographs white or black).
- Palette images go through their palette; transparency (RGBA, LA, palette with transparency) is
  composited over black, the background of radiographs.
- CMYK, YCbCr, LAB and HSV are converted to RGB by Pillow.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageError, ImageTooLargeError, NotAnImageError
from core.imaging.preprocess import grey_to_rgb, percentile_window, reduction_factor, unit_to_uint8

FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")
MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom")


def claimed_format(data: bytes, source: str) -> str | None:
    """The format the bytes' signature or the name's suffix claims, if any."""
    for magic, fmt in MAGIC.items():
        if data.startswith(magic):
            return fmt
    lowered = source.lower()
    return next((suffix.lstrip(".").upper() for suffix in IMAGE_SUFFIXES if lowered.endswith(suffix)), None)
_HIGH_DEPTH_GREY = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def load_raster(data: bytes, source: str, *, max_pixels: int, percentiles: tuple[float, float],
                limit_setting: str = "MEDSEARCH_MAX_IMAGE_PIXELS", reduce_to: int = 0) -> tuple[
    np.ndarray, str
]:
    """Decode a raster image. Returns (H, W, 3) uint8 RGB and Pillow's format name. `reduce_to` > 0:
    decoded at no less than that side (JPEG at a DCT scale, others averaged over boxes) before the
    conversion to 8-bit RGB (core.imaging.preprocess.REDUCED)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as exc:
        claimed = claimed_format(data, source)
        if claimed:  # it says it is an image: that is a failure, not a file to pass over
            raise ImageError(source, f"corrupt or unsupported {claimed} file: no decodable image") from exc
        raise NotAnImageError(source, "not a DICOM, PNG or JPEG image") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(source, f"refused by Pillow's decompression-bomb check: {exc}") from exc
    except Exception as exc:
        raise ImageError(source, f"unreadable image ({type(exc).__name__}: {exc})") from exc

    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(source, f"{width}x{height} = {width * height} pixels exceeds the limit of "
                                 f"{max_pixels} (setting {limit_setting})")
    fmt = image.format or "unknown"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            upright = ImageOps.exif_transpose(_drafted(image, reduce_to))
            pixels = to_rgb_array(_box_reduced(upright, reduce_to), percentiles)
    except ImageError:
        raise
    except Exception as exc:  # truncated files, broken streams
        raise ImageError(source, f"corrupt {fmt} image ({type(exc).__name__}: {exc})") from exc
    return pixels, fmt


def _drafted(image: Image.Image, side: int) -> Image.Image:
    """A JPEG set to decode at 1/2, 1/4 or 1/8 scale (DCT scaling), keeping both sides >= side."""
    if side > 0 and image.format == "JPEG" and image.mode in ("L", "RGB"):
        image.draft(image.mode, (side, side))
    return image


def _box_reduced(image: Image.Image, side: int) -> Image.Image:
    factor = reduction_factor(image.height, image.width, side)
    if factor > 1 and image.mode.startswith("I;16"):
        image = image.convert("I")  # the same values, in a mode Pillow can reduce
    if factor <= 1 or image.mode not in ("L", "RGB", "I", "F", "RGBA", "LA"):
        return image
    return image.reduce(factor)


def _over_black(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb_array(image: Image.Image, percentiles: tuple[float, float]) -> np.ndarray:
    """Convert any Pillow mode to an (H, W, 3) uint8 array by the rules in the module docstring."""
    mode = image.mode
    if mode in _HIGH_DEPTH_GREY:
        values = np.asarray(image).astype(np.float64)
        return grey_to_rgb(unit_to_uint8(percentile_window(values, percentiles)))
    if mode in ("1", "L"):
        return grey_to_rgb(np.asarray(image.convert("L")))
    if mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        return np.asarray(_over_black(image))
    return np.asarray(image.convert("RGB"))
