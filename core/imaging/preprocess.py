"""From decoded pixels to the model processor's input.

Loading (core.imaging.images) turns every file into 8-bit RGB the way a viewer shows it; the model's own
processor then resizes and normalises. Any change to the rendering rules bumps PREPROCESSING_VERSION,
which is part of the model fingerprint, so vectors rendered differently are never mixed in one index.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# 2: modality LUT (per frame for enhanced objects), header VOI window (LINEAR / LINEAR_EXACT /
#    SIGMOID) or VOI LUT, else CT presets by body region, else a percentile window; MONOCHROME1
#    inverted; grey replicated to RGB (core/imaging/dicom.py has the full rules).
PREPROCESSING_VERSION = "2"

# The CT rendering MedSigLIP's and MedGemma's image encoder was trained with: three windows in the colour
# channels, red wide -1024..1024 HU, green soft tissue -135..215 HU, blue brain 0..80 HU, each clipped,
# scaled to 0..255 in float32 and rounded. Source: Google-Health/medgemma (Apache-2.0),
# notebooks/high_dimensional_ct_hugging_face.ipynb, "Define windowing for CT images". Chosen with
# `--window ct-channels`; it is part of the fingerprint (preprocessing version "2+ct-channels").
CT_CHANNELS = "ct-channels"
CT_CHANNEL_WINDOWS = ((-1024.0, 1024.0), (-135.0, 215.0), (0.0, 80.0))
MODEL_RENDERINGS = (CT_CHANNELS,)  # renderings that change what the model sees beyond a window choice
# Decoding at the model's input size: a frame more than twice the model's input is averaged over boxes of
# the largest whole factor that keeps both sides at least twice the model's input side (a JPEG decoded
# at that DCT scale) before its window is applied; the rendered pixels (and their hash) are that size. Indexes
# made since medsearch 0.19 record it ("2+reduced"); an index without it keeps full-resolution rendering.
REDUCED = "reduced"


def ct_channels(hounsfield: np.ndarray) -> np.ndarray:
    """(H, W) Hounsfield units -> (H, W, 3) uint8, one window per channel, as MedGemma's pipeline does."""
    channels = []
    for low, high in CT_CHANNEL_WINDOWS:
        scaled = np.clip(hounsfield, low, high).astype(np.float32)
        scaled -= np.float32(low)
        scaled /= np.float32(high - low)
        scaled *= np.float32(255.0)
        channels.append(np.round(scaled, 0).astype(np.uint8))
    return np.stack(channels, axis=-1)


def rendering_of(window: str, reduced: bool = True) -> str:
    """The rendering of a run: the model rendering a window option asks for, and REDUCED when frames are
    decoded at the model's input size ("" for the full-resolution standard rendering)."""
    return "+".join([*([window] if window in MODEL_RENDERINGS else []), *([REDUCED] if reduced else [])])


def model_window(rendering: str) -> str:
    """The window a rendering forces (ct-channels), or ""."""
    return next((part for part in rendering.split("+") if part in MODEL_RENDERINGS), "")


def is_reduced(rendering: str) -> bool:
    return REDUCED in rendering.split("+")


def reduction_factor(height: int, width: int, side: int) -> int:
    """The largest whole factor that keeps both sides at least `side` (1: none; also for side 0)."""
    return max(1, min(height // side, width // side)) if side > 0 else 1


def reduce_pixels(values: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) numbers as float32, or (H, W, 3) uint8, averaged over factor x factor boxes (Pillow's
    reduce: the boxes at the far edges average what they hold)."""
    if factor <= 1:
        return values
    if values.ndim == 2:  # frombuffer: Pillow reads the float32 array in place instead of copying it
        floats = np.ascontiguousarray(values, dtype=np.float32)
        image = Image.frombuffer("F", (floats.shape[1], floats.shape[0]), floats, "raw", "F", 0, 1)
        return np.asarray(image.reduce(factor))
    return np.asarray(Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8), mode="RGB").reduce(factor))


def preprocessing_version(rendering: str = "") -> str:
    """The fingerprint's preprocessing version of a rendering: "2", or "2+ct-channels"."""
    return f"{PREPROCESSING_VERSION}+{rendering}" if rendering else PREPROCESSING_VERSION


def rendering_from_version(version: str) -> str:
    """The rendering an index's recorded preprocessing version names ("" for the standard one)."""
    return version.split("+", 1)[1] if "+" in version else ""


def grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """An (H, W) uint8 image as (H, W, 3) whose three channels share the grey values' memory (a
    read-only view: nothing is copied, and core.model.inputs resizes it as one channel)."""
    return np.broadcast_to(grey[:, :, None], (*grey.shape, 3))


def unit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map floats in [0, 1] to uint8 with rounding, clipping anything outside."""
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def percentile_window(values: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Stretch the given lower/upper percentiles of `values` to [0, 1] (the documented fallback window)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:  # a flat image: keep it flat, mid-grey if non-zero
        return np.where(values > lo, 1.0, 0.0).astype(np.float32) if lo == 0 else np.full(
            values.shape, 0.5, dtype=np.float32
        )
    out = (values.astype(np.float64) - lo) / (hi - lo)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0).astype(np.float32)
