"""DICOM reading: header metadata and a rendering that matches what a viewer shows.

Rendering rules (PREPROCESSING_VERSION 1):

1. Multi-frame objects: the middle frame is encoded (its index is recorded).
2. Colour (RGB, YBR_* converted to RGB by pydicom, PALETTE COLOR through its LUT) is scaled to 8 bits
   by BitsStored.
3. Greyscale: the modality LUT (RescaleSlope/RescaleIntercept, or a Modality LUT Sequence) gives
   modality units (Hounsfield for CT); then the VOI transform from the header: the first
   WindowCenter/WindowWidth pair with its VOILUTFunction (LINEAR, LINEAR_EXACT or SIGMOID, PS3.3
   C.11.2.1.2), or the first VOI LUT Sequence item. When the header has no usable window the fallback
   window stretches the 0.5th..99.5th percentiles of the modality values (configurable).
4. MONOCHROME1 (white = low values) is inverted so that every image shows bone bright on dark.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from datetime import date, datetime
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from core.errors import ImageError, ImageTooLargeError, NoPixelDataError
from core.metadata import ImageMetadata
from core.preprocess import grey_to_rgb, percentile_window, unit_to_uint8

logger = logging.getLogger(__name__)

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


def looks_like_dicom(head: bytes) -> bool:
    """True for a Part 10 file ("DICM" after the 128-byte preamble) or a bare little-endian dataset
    that starts with a file-meta (0002) or identifying (0008) group tag."""
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


def read_dataset(data: bytes, source: str) -> Dataset:
    """Parse DICOM bytes (with or without preamble and file meta) or raise ImageError naming `source`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(data), force=True)
    except InvalidDicomError as exc:
        raise ImageError(source, f"not a valid DICOM file: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on corrupt input
        raise ImageError(source, f"unreadable DICOM ({type(exc).__name__}: {exc})") from exc


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _date(ds: Dataset, keyword: str) -> date | None:
    text = _text(ds, keyword)
    if not text:
        return None
    try:
        return datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def parse_age(age: str | None) -> float | None:
    """DICOM AS value ("045Y", "006M", "003W", "010D") to years."""
    if not age or len(age) < 2:
        return None
    unit = age[-1].upper()
    try:
        number = float(age[:-1])
    except ValueError:
        return None
    per_year = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}.get(unit)
    return round(number / per_year, 3) if per_year else None


def extract_metadata(ds: Dataset) -> ImageMetadata:
    """Header attributes medsearch stores. Patient names are never read."""
    study_date = _date(ds, "StudyDate")
    age = parse_age(_text(ds, "PatientAge"))
    birth = _date(ds, "PatientBirthDate")
    if age is None and birth is not None and study_date is not None and study_date >= birth:
        age = round((study_date - birth).days / 365.25, 3)
    sex = _text(ds, "PatientSex")
    return ImageMetadata(
        patient_id=_text(ds, "PatientID"),
        patient_sex=sex.upper() if sex else None,
        patient_age=age,
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"),
        accession_number=_text(ds, "AccessionNumber"),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        study_date=study_date,
        study_description=_text(ds, "StudyDescription"),
        series_description=_text(ds, "SeriesDescription"),
        manufacturer=_text(ds, "Manufacturer"),
        instance_number=_int(ds, "InstanceNumber"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        frames=_int(ds, "NumberOfFrames") or (1 if "Rows" in ds else None),
    )


def _sop_class_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID") or getattr(ds.get("file_meta", Dataset()), "MediaStorageSOPClassUID", None)
    return UID(str(uid)).name if uid else "unknown SOP class"


def check_has_pixels(ds: Dataset, source: str) -> None:
    """Objects that are not images are skipped (NoPixelDataError); an image object whose pixels are
    missing (a truncated or header-only file) is a failure (ImageError)."""
    media_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise NoPixelDataError(source, "DICOMDIR (a directory of other files), no image of its own")
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        sop_class = _sop_class_name(ds)
        if "Image Storage" in sop_class or "Rows" in ds:
            raise ImageError(source, f"{sop_class} object without pixel data: truncated or header-only file")
        raise NoPixelDataError(source, f"no pixel data ({sop_class})")


def infer_transfer_syntax(ds: Dataset) -> str | None:
    """Files without a TransferSyntaxUID in their file meta: take it from the encoding pydicom read the
    dataset with (native pixel data only). Returns the UID assumed, or None if nothing was missing."""
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None and "TransferSyntaxUID" in file_meta:
        return None
    encoding = getattr(ds, "original_encoding", (None, None))
    uid = {(True, True): ImplicitVRLittleEndian, (False, True): ExplicitVRLittleEndian,
           (False, False): ExplicitVRBigEndian}.get(tuple(encoding))
    if uid is None:
        return None
    if file_meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid
    return str(uid)


def check_size(ds: Dataset, source: str, max_pixels: int) -> None:
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if not rows or not cols:
        raise ImageError(source, "pixel data without valid Rows/Columns")
    frames = _int(ds, "NumberOfFrames") or 1
    total = rows * cols * frames
    if total > max_pixels:
        raise ImageTooLargeError(
            source, f"{cols}x{rows}x{frames} = {total} pixels exceeds the limit of {max_pixels} "
            "(setting MEDSEARCH_MAX_IMAGE_PIXELS)"
        )


def _window_values(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
    except (TypeError, ValueError, IndexError):
        return None
    if not (math.isfinite(c) and math.isfinite(w)) or w <= 0:
        return None
    return c, w


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


def _grey_to_unit(frame: np.ndarray, ds: Dataset, percentiles: tuple[float, float]) -> np.ndarray:
    values = apply_modality_lut(frame, ds) if frame.dtype.kind in "iu" else frame.astype(np.float64)
    window = _window_values(ds)
    if window is not None:
        unit = apply_window(values, *window, function=_text(ds, "VOILUTFunction") or "LINEAR")
    elif "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        item = ds.VOILUTSequence[0]
        lut_bits = int(item.LUTDescriptor[2]) or 16
        mapped = apply_voi(np.asarray(values).astype(np.int64), ds, index=0)
        unit = np.clip(np.asarray(mapped, dtype=np.float64) / (2**lut_bits - 1), 0.0, 1.0).astype(np.float32)
    else:
        unit = percentile_window(np.asarray(values, dtype=np.float64), percentiles)
    if _text(ds, "PhotometricInterpretation") == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


def _colour_to_uint8(rgb: np.ndarray, bits: int) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    scale = float(2**bits - 1) if bits > 0 else float(np.max(rgb) or 1)
    return unit_to_uint8(rgb.astype(np.float64) / scale)


def render(ds: Dataset, source: str, percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[np.ndarray, int]:
    """Decode the pixels of `ds` into (H, W, 3) uint8 RGB. Returns the pixels and the frame index used."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = ds.pixel_array
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_text = f"{UID(str(ts)).name} ({ts})" if ts else "unknown transfer syntax"
        detail = " ".join(str(exc).split())  # pydicom's messages span lines; ours are one line
        raise ImageError(source, f"pixel data could not be decoded, transfer syntax {ts_text}: {detail}") from exc

    frames = _int(ds, "NumberOfFrames") or 1
    samples = _int(ds, "SamplesPerPixel") or 1
    frame_index = 0
    if frames > 1 and array.ndim == (3 if samples == 1 else 4):
        frame_index = frames // 2
        array = array[frame_index]
    photometric = _text(ds, "PhotometricInterpretation") or ("MONOCHROME2" if samples == 1 else "RGB")
    bits = _int(ds, "BitsStored") or 8

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(array, ds)
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2]) if (
            "RedPaletteColorLookupTableDescriptor" in ds
        ) else 16
        pixels = _colour_to_uint8(rgb, lut_bits)
    elif samples == 3 or array.ndim == 3:
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ImageError(source, f"unexpected colour pixel array shape {array.shape}")
        pixels = _colour_to_uint8(array, bits)
    else:
        if array.ndim != 2:
            raise ImageError(source, f"unexpected greyscale pixel array shape {array.shape}")
        pixels = grey_to_rgb(unit_to_uint8(_grey_to_unit(array, ds, percentiles)))
    return pixels, frame_index


def load_dicom(data: bytes, source: str, *, max_pixels: int, percentiles: tuple[float, float]) -> tuple[
    np.ndarray, ImageMetadata
]:
    """Read, check and render one DICOM file."""
    ds = read_dataset(data, source)
    check_has_pixels(ds, source)
    check_size(ds, source, max_pixels)
    meta = extract_metadata(ds)
    assumed = infer_transfer_syntax(ds)
    try:
        pixels, frame_index = render(ds, source, percentiles)
    except ImageError as exc:
        if assumed:
            raise ImageError(source, f"{exc.reason} (the file meta has no TransferSyntaxUID; tried "
                             f"{UID(assumed).name})") from exc
        raise
    meta.frame_index = frame_index
    meta.rows, meta.columns = int(pixels.shape[0]), int(pixels.shape[1])
    return pixels, meta


def header_summary(ds: Dataset) -> dict[str, Any]:
    """Non-identifying header facts, safe for logs."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return {"modality": _text(ds, "Modality"), "transfer_syntax": str(ts) if ts else None,
            "photometric": _text(ds, "PhotometricInterpretation")}
