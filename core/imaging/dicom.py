"""DICOM reading: header metadata and a rendering that matches what a viewer shows.

Rendering rules (PREPROCESSING_VERSION in core.imaging.preprocess), per PS3.3 C.11 and C.7.6.3:

1. Frames: the `frames` policy picks which frames become images: "middle" (default), "first", "all",
   or "every:N" (frames 0, N, 2N...). Only those frames are decoded. Enhanced objects take rescale and
   window per frame from their Per-frame / Shared Functional Groups.
2. Colour: RGB, YBR_FULL, YBR_FULL_422 (converted to RGB by pydicom, planar configuration handled),
   PALETTE COLOR through its lookup table; scaled to 8 bits by BitsStored (or the LUT's depth).
3. Greyscale: the modality LUT (RescaleSlope/RescaleIntercept or a Modality LUT Sequence) gives
   modality units (Hounsfield for CT). Then the VOI transform, chosen by the `window` option:
   - "auto" (default): the header's first WindowCenter/WindowWidth pair with its VOILUTFunction
     (LINEAR, LINEAR_EXACT or SIGMOID), else the first VOI LUT Sequence item, else for CT a preset
     chosen from the body region (head: brain, chest: lung, abdomen/pelvis: abdomen, spine and limbs:
     bone; "mediastinum", "lung", "bone" or "brain" in a description win), else a percentile window;
   - "header": the header's window, else the percentile window;
   - a preset name (lung -600/1500, mediastinum 50/350, bone 400/1800, brain 40/80, abdomen 60/400):
     that preset for CT, "auto" for other modalities;
   - "CENTER/WIDTH" (for example "40/400"): that window for every greyscale image;
   - "percentile": stretch the given percentiles (default 0.5th..99.5th) of the modality values;
   - "ct-channels": for CT, three windows in the colour channels (core.imaging.preprocess.CT_CHANNEL_WINDOWS,
     the rendering MedSigLIP was trained with; part of the fingerprint); "auto" for other modalities.
4. MONOCHROME1 (white = low values) is inverted so that every image shows bone bright on dark.
5. Output: (H, W, 3) uint8 RGB, grey replicated into three channels.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.uid import (
    UID,
)

from core.errors import ImageError
from core.imaging.anatomy import ct_preset, region_from_text
from core.imaging.dicom_read import (
    check_has_pixels,
    check_size,
    extract_metadata,
    infer_transfer_syntax,
    integer,
    one_line,
    read_dataset,
    text,
)
from core.imaging.metadata import ImageMetadata
from core.imaging.preprocess import (
    CT_CHANNEL_WINDOWS,
    CT_CHANNELS,
    ct_channels,
    grey_to_rgb,
    percentile_window,
    reduce_pixels,
    reduction_factor,
    unit_to_uint8,
)

logger = logging.getLogger(__name__)

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0), "mediastinum": (50.0, 350.0), "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0), "abdomen": (60.0, 400.0),
}
# transfer syntax UID prefix -> the optional package that decodes it, for messages
DECODER_HINTS = {
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg (GPL-3, optional) or python-gdcm for 12-bit JPEG Extended",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg (GPL-3, optional) or python-gdcm",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg (GPL-3, optional) or python-gdcm",
    "1.2.840.10008.1.2.4.8": "pyjpegls",
    "1.2.840.10008.1.2.4.9": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.20": "pylibjpeg-openjpeg (HTJ2K)",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
}
# attributes a frame's view needs to run the LUT functions
_FRAME_BASE = ("PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
               "SamplesPerPixel", "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence",
               "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence")


@dataclass(frozen=True)
class RenderOptions:
    """How DICOM pixels become an 8-bit image. See the module docstring for each choice."""

    window: str = "auto"
    presets: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(WINDOW_PRESETS))
    percentiles: tuple[float, float] = (0.5, 99.5)
    frames: str = "middle"
    max_pixels: int = 100_000_000
    limit_setting: str = "MEDSEARCH_MAX_IMAGE_PIXELS"  # named in the refusal of a larger image
    reduce_to: int = 0  # > 0: decode at no less than this side (core.imaging.preprocess.REDUCED); 0: full resolution

    def __post_init__(self) -> None:
        check_window_option(self.window, self.presets)
        select_frames(1, self.frames)  # validates the policy


def check_window_option(window: str, presets: Mapping[str, tuple[float, float]]) -> None:
    if window in ("auto", "header", "percentile", CT_CHANNELS) or window in presets:
        return
    try:
        _, width = (float(part) for part in window.split("/"))
    except ValueError:
        raise ValueError(f"window {window!r}: expected auto, header, percentile, ct-channels, one of "
                         f"{', '.join(sorted(presets))}, or CENTER/WIDTH such as 40/400") from None
    if width <= 0:
        raise ValueError(f"window {window!r}: the width must be positive")


def select_frames(count: int, policy: str) -> list[int]:
    """Frame indices a policy selects from `count` frames."""
    if policy == "middle":
        return [count // 2]
    if policy == "first":
        return [0]
    if policy == "all":
        return list(range(count))
    if policy.startswith("frame:"):  # one given frame (previews of a recorded frame)
        try:
            index = int(policy.removeprefix("frame:"))
        except ValueError:
            index = -1
        if index >= 0:
            return [min(index, count - 1)]
    if policy.startswith("every:"):
        try:
            step = int(policy.removeprefix("every:"))
        except ValueError:
            step = 0
        if step >= 1:
            return list(range(0, count, step))
    raise ValueError(f"frames policy {policy!r}: expected middle, first, all, every:N (N >= 1) or frame:N")


def looks_like_dicom(head: bytes) -> bool:
    """True for a Part 10 file ("DICM" after the 128-byte preamble) or a bare dataset that starts
    with a file-meta (0002) or identifying (0008) group tag, little- or big-endian."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) >= 8:
        vr = head[4:6]
        explicit = vr.isalpha() and vr.isupper()
        orders: tuple[Literal["little"], Literal["big"]] = ("little", "big")
        for order in orders:
            group = int.from_bytes(head[0:2], order)
            element = int.from_bytes(head[2:4], order)
            if group in (0x0002, 0x0008) and element < 0x0100:
                # explicit VR (two upper-case letters) or implicit VR (a small 4-byte length)
                return explicit or (order == "little" and int.from_bytes(head[4:8], "little") < 0x10000)
    return False


def _decoder_hint(ts: str | None) -> str:
    if not ts:
        return ""
    for prefix, package in DECODER_HINTS.items():
        if ts.startswith(prefix):
            return f"; decodable with {package}"
    return ""


def decode_frame(ds: Dataset, index: int, frames: int, source: str) -> np.ndarray:
    """One frame's stored values (colour already converted to RGB). Only that frame is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if frames > 1:
                ds.pixel_array_options(index=index)
            return np.asarray(ds.pixel_array)
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_text = f"{UID(str(ts)).name} ({ts})" if ts else "no transfer syntax"
        message = one_line(exc)
        if "missing dependencies" in message or "plugins are missing" in message:
            message = "no installed decoder supports it"
        raise ImageError(source, f"pixel data could not be decoded, transfer syntax {ts_text}: "
                                 f"{message}{_decoder_hint(str(ts) if ts else None)}") from exc


def frame_view(ds: Dataset, index: int) -> Dataset:
    """The attributes that render frame `index`: the object's own, overridden by its Shared and then
    its Per-frame Functional Groups (enhanced CT/MR/XA store rescale and window there)."""
    view = Dataset()
    for keyword in _FRAME_BASE:
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    groups = []
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for sequence in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            items = group.get(sequence)
            if items:
                for element in items[0]:
                    if element.keyword in _FRAME_BASE:
                        setattr(view, element.keyword, element.value)
    return view


def _first_number(value: Any) -> float | None:
    try:
        number = float(value[0] if isinstance(value, MultiValue | list | tuple) else value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) else None


def header_window(view: Dataset) -> tuple[float, float] | None:
    """The first WindowCenter/WindowWidth pair of the header, if usable."""
    center, width = _first_number(view.get("WindowCenter")), _first_number(view.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    return center, width


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """VOI window to [0, 1] per PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID)."""
    x = values.astype(np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        out = (x - center) / width + 0.5
    else:  # LINEAR: the standard's half-pixel definition, needs width >= 1
        w = max(width, 1.0)
        out = (x - (center - 0.5)) / (w - 1.0) + 0.5 if w > 1 else np.where(x > center - 0.5, 1.0, 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _voi_lut_sequence(values: np.ndarray, view: Dataset) -> np.ndarray:
    item = view.VOILUTSequence[0]
    bits = int(item.LUTDescriptor[2]) or 16
    mapped = apply_voi(np.rint(values).astype(np.int64), view, index=0)
    return np.clip(np.asarray(mapped, dtype=np.float64) / (2**bits - 1), 0.0, 1.0).astype(np.float32)


def modality_lut(frame: np.ndarray, view: Dataset) -> np.ndarray:
    """Stored values to modality units (Hounsfield for CT), as float64."""
    values = apply_modality_lut(frame, view) if frame.dtype.kind in "iu" else frame
    return np.asarray(values, dtype=np.float64)


def grey_to_unit(frame: np.ndarray, view: Dataset, meta: ImageMetadata, options: RenderOptions) -> tuple[
    np.ndarray, str
]:
    """Modality LUT, VOI transform and MONOCHROME1 inversion. Returns [0, 1] values and a description
    of the window used."""
    values = modality_lut(frame, view)
    function = text(view, "VOILUTFunction") or "LINEAR"
    window = options.window
    unit: np.ndarray | None = None
    described = ""
    preset: str | None = None
    if "/" in window:
        center, width = (float(part) for part in window.split("/"))
        unit, described = apply_window(values, center, width), f"run {center:g}/{width:g}"
    elif window in options.presets and meta.modality == "CT":
        preset = window  # forced for CT; other modalities fall through to "auto"
    elif window != "percentile":  # auto, header, or a preset name on a non-CT image
        pair = header_window(view)
        if pair is not None:
            unit = apply_window(values, *pair, function=function)
            described = f"header {pair[0]:g}/{pair[1]:g} {function.upper()}"
        elif "VOILUTSequence" in view and len(view.VOILUTSequence):
            unit, described = _voi_lut_sequence(values, view), "header VOI LUT"
        elif window != "header" and meta.modality == "CT":
            region = region_from_text(meta.body_part) or meta.body_part  # "LSPINE" -> SPINE
            preset = ct_preset(region, meta.study_description, meta.series_description)
    if unit is None and preset is not None:
        center, width = options.presets[preset]
        unit, described = apply_window(values, center, width), f"preset {preset} {center:g}/{width:g}"
    if unit is None:
        low, high = options.percentiles
        unit, described = percentile_window(values, options.percentiles), f"percentile {low:g}-{high:g}"
    if text(view, "PhotometricInterpretation") == "MONOCHROME1":
        unit = 1.0 - unit
        described += " inverted (MONOCHROME1)"
    return unit, described


def _colour_to_uint8(rgb: np.ndarray, bits: int) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    if rgb.dtype.kind == "f":
        return unit_to_uint8(percentile_window(rgb.astype(np.float64), (0.0, 100.0)))
    scale = float(2**bits - 1) if bits > 0 else float(np.max(rgb) or 1)
    return unit_to_uint8(rgb.astype(np.float64) / scale)


def _reduced_modality_values(frame: np.ndarray, view: Dataset, factor: int) -> np.ndarray:
    """A frame in modality units, averaged over factor x factor boxes. A rescale is linear, so it is
    applied after averaging (on the smaller array); a modality LUT sequence before it."""
    if "ModalityLUTSequence" in view or frame.dtype.kind not in "iu":
        return reduce_pixels(modality_lut(frame, view), factor)
    slope, intercept = _first_number(view.get("RescaleSlope")), _first_number(view.get("RescaleIntercept"))
    reduced = reduce_pixels(frame, factor)
    return reduced * np.float32(1.0 if slope is None else slope) + np.float32(intercept or 0.0)


def render_frame(ds: Dataset, frame: np.ndarray, index: int, meta: ImageMetadata, options: RenderOptions,
                 source: str) -> tuple[np.ndarray, str]:
    """One decoded frame to (H, W, 3) uint8 RGB, and a description of how it was windowed."""
    samples = integer(ds, "SamplesPerPixel") or 1
    photometric = text(ds, "PhotometricInterpretation") or ("MONOCHROME2" if samples == 1 else "RGB")
    bits = integer(ds, "BitsStored") or 8
    factor = reduction_factor(frame.shape[0], frame.shape[1], options.reduce_to)
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(frame, ds)
        except Exception as exc:
            raise ImageError(source, f"palette colour lookup failed: {one_line(exc)}") from exc
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
        lut_bits = int(descriptor[2]) if descriptor else 16
        if rgb.dtype != np.uint8 and lut_bits == 16 and int(np.max(rgb, initial=0)) < 256:
            lut_bits = 8  # some writers declare 16 bits but store 8-bit entries
        return reduce_pixels(_colour_to_uint8(rgb, lut_bits), factor), "palette"
    if samples == 3 or frame.ndim == 3:
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise ImageError(source, f"unexpected colour pixel array shape {frame.shape}")
        return reduce_pixels(_colour_to_uint8(frame, bits), factor), "colour"
    if frame.ndim != 2:
        raise ImageError(source, f"unexpected greyscale pixel array shape {frame.shape}")
    if factor > 1:  # averaged in modality units, before the window: floats from here on
        frame = _reduced_modality_values(frame, frame_view(ds, index), factor)
    if options.window == CT_CHANNELS and meta.modality == "CT":
        return ct_channels(modality_lut(frame, frame_view(ds, index))), "ct-channels " + " ".join(
            f"{low:g}..{high:g}" for low, high in CT_CHANNEL_WINDOWS)
    unit, described = grey_to_unit(frame, frame_view(ds, index), meta, options)
    return grey_to_rgb(unit_to_uint8(unit)), described


def load_dicom_frames(data: bytes, source: str, options: RenderOptions) -> list[tuple[np.ndarray, ImageMetadata]]:
    """Read, check and render the frames of one DICOM file that `options.frames` selects."""
    ds = read_dataset(data, source, options.max_pixels, options.limit_setting)
    check_has_pixels(ds, source)
    frames = check_size(ds, source, options.max_pixels, options.limit_setting)
    meta = extract_metadata(ds)
    assumed = infer_transfer_syntax(ds)
    rendered = []
    for index in select_frames(frames, options.frames):
        try:
            pixels, described = render_frame(ds, decode_frame(ds, index, frames, source), index, meta, options,
                                             source)
        except ImageError as exc:
            if assumed:
                raise ImageError(source, f"{exc.reason} (the file meta has no TransferSyntaxUID; tried "
                                         f"{UID(assumed).name})") from exc
            raise
        rendered.append((pixels, replace(meta, frame_index=index, rows=int(pixels.shape[0]),
                                         columns=int(pixels.shape[1]), window=described, extra=dict(meta.extra))))
    return rendered


@dataclass(frozen=True)
class ModalityValues:
    """One frame of a greyscale image in modality units (Hounsfield units for CT)."""

    values: np.ndarray  # (rows, columns) float64
    unit: str  # "HU" for CT, else the header's RescaleType (possibly "")
    frame: int
    frames: int


def modality_values(data: bytes, source: str, options: RenderOptions, frame: int) -> ModalityValues:
    """The modality LUT (rescale or LUT sequence, per frame for enhanced objects) applied to one frame.
    ImageError for colour images, which have none."""
    ds = read_dataset(data, source, options.max_pixels, options.limit_setting)
    check_has_pixels(ds, source)
    frames = check_size(ds, source, options.max_pixels, options.limit_setting)
    infer_transfer_syntax(ds)
    index = min(max(frame, 0), frames - 1)
    photometric = text(ds, "PhotometricInterpretation") or "MONOCHROME2"
    if not photometric.startswith("MONOCHROME"):
        raise ImageError(source, f"a {photometric} image has no modality values, only colours")
    pixels = decode_frame(ds, index, frames, source)
    view = frame_view(ds, index)
    unit = "HU" if text(ds, "Modality") == "CT" else (text(view, "RescaleType") or "")
    return ModalityValues(modality_lut(pixels, view), unit, index, frames)
