"""Reading DICOM: the dataset (a deflated one inflated only as far as its header allows), the header
attributes medsearch stores, and the checks made before any pixel is decoded (is it an image at all,
is it within the pixel limit)."""

from __future__ import annotations

import io
import warnings
import zlib
from datetime import date, datetime
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from core.errors import ImageError, ImageTooLargeError, NoPixelDataError
from core.imaging.anatomy import region_from_text
from core.imaging.metadata import ImageMetadata

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# objects whose pixel data is not a picture of the patient: skipped with a reason
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a segmentation mask (SEG), not an image",
    "1.2.840.10008.5.1.4.1.1.66.5": "a surface segmentation, not an image",
    "1.2.840.10008.5.1.4.1.1.481.2": "an RT dose grid, not an image",
    "1.2.840.10008.5.1.4.1.1.30": "a parametric map, not an image",
}
# inflated first, to read the header (Rows, Columns, frames) before inflating the pixels
_HEADER_BYTES = 1024 * 1024
_SLACK = 16 * 1024 * 1024  # elements after the pixel data, padding


def _declared_pixel_bytes(meta: FileMetaDataset, head: bytes, source: str, max_pixels: int, setting: str) -> int | None:
    """Bytes the pixel data of a dataset needs by its header (None when the header cannot be read from
    `head`); ImageTooLargeError when it declares more pixels than allowed."""
    stream = pydicom.filebase.DicomBytesIO()
    stream.write(b"\0" * 128 + b"DICM")
    plain = FileMetaDataset(meta)
    plain.TransferSyntaxUID = ExplicitVRLittleEndian
    pydicom.filewriter.write_file_meta_info(stream, plain, enforce_standard=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(io.BytesIO(bytes(stream.getvalue()) + head), force=True, stop_before_pixels=True)
        rows, cols = int(header.Rows), int(header.Columns)
        frames = integer(header, "NumberOfFrames") or 1
        samples, bits = integer(header, "SamplesPerPixel") or 1, integer(header, "BitsAllocated") or 16
    except Exception:
        return None
    if rows * cols * frames > max_pixels:
        raise ImageTooLargeError(source, f"{cols}x{rows}x{frames} = {rows * cols * frames} pixels exceeds the limit "
                                 f"of {max_pixels} (setting {setting}): refused before inflating the pixel data")
    return rows * cols * frames * samples * max(1, (bits + 7) // 8)


def inflate_deflated(data: bytes, source: str, max_pixels: int, setting: str = "MEDSEARCH_MAX_IMAGE_PIXELS") -> bytes:
    """A Deflated Explicit VR Little Endian file rewritten as plain Explicit VR Little Endian, inflating
    its header first and then only as many bytes as the pixels it declares need: a decompression bomb
    is refused (ImageTooLargeError) there instead of filling memory. Other files are returned as they are."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return data
    stream = io.BytesIO(data)
    stream.seek(132)
    try:
        meta = pydicom.filereader._read_file_meta_info(stream)
    except Exception:  # an unreadable file meta: the normal reader says what is wrong
        return data
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return data
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        head = inflater.decompress(data[stream.tell():], _HEADER_BYTES)
        declared = _declared_pixel_bytes(meta, head, source, max_pixels, setting)
        cap = (declared if declared is not None else max_pixels * 8) + _HEADER_BYTES + _SLACK
        rest = inflater.decompress(inflater.unconsumed_tail, cap - len(head) + 1) if inflater.unconsumed_tail else b""
    except zlib.error as exc:
        raise ImageError(source, f"corrupt deflated DICOM data: {exc}") from exc
    if len(head) + len(rest) > cap:
        raise ImageTooLargeError(source, f"deflated DICOM data inflates beyond {cap} bytes, more than its header "
                                 "declares: refused before inflating further")
    plain = FileMetaDataset(meta)
    plain.TransferSyntaxUID = ExplicitVRLittleEndian
    out = pydicom.filebase.DicomBytesIO()
    out.write(data[:132])
    pydicom.filewriter.write_file_meta_info(out, plain, enforce_standard=False)
    return bytes(out.getvalue()) + head + rest


def read_dataset(data: bytes, source: str, max_pixels: int = 100_000_000,
                 setting: str = "MEDSEARCH_MAX_IMAGE_PIXELS") -> Dataset:
    """Parse DICOM bytes (with or without preamble and file meta) or raise ImageError naming `source`.
    Deflated data is inflated only as far as `max_pixels` pixels can need."""
    data = inflate_deflated(data, source, max_pixels, setting)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(data), force=True)
    except InvalidDicomError as exc:
        raise ImageError(source, f"not a valid DICOM file: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on corrupt input
        raise ImageError(source, f"unreadable DICOM ({type(exc).__name__}: {one_line(exc)})") from exc


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # an unparseable value (invalid VR) reads as absent
        return None
    if value is None:
        return None
    if isinstance(value, MultiValue):
        value = "\\".join(str(v) for v in value)
    result = str(value).strip()
    return result or None


def integer(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None


def _date(ds: Dataset, keyword: str) -> date | None:
    value = text(ds, keyword)
    if not value:
        return None
    try:
        return datetime.strptime(value[:8], "%Y%m%d").date()
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
    """Header attributes medsearch stores. Patient names and birth dates are never stored (the birth
    date is read only to compute the age at the study)."""
    study_date = _date(ds, "StudyDate") or _date(ds, "SeriesDate") or _date(ds, "AcquisitionDate")
    age = parse_age(text(ds, "PatientAge"))
    birth = _date(ds, "PatientBirthDate")
    if age is None and birth is not None and study_date is not None and study_date >= birth:
        age = round((study_date - birth).days / 365.25, 3)
    sex = text(ds, "PatientSex")
    body_part = text(ds, "BodyPartExamined")
    extra: dict[str, Any] = {}
    if body_part is None:
        body_part = region_from_text(text(ds, "StudyDescription"), text(ds, "SeriesDescription"),
                                     text(ds, "ProtocolName"))
        if body_part:
            extra["body_part_from"] = "description"
    burned = text(ds, "BurnedInAnnotation")
    return ImageMetadata(
        patient_id=text(ds, "PatientID"),
        patient_sex=sex.upper() if sex else None,
        patient_age=age,
        study_uid=text(ds, "StudyInstanceUID"),
        series_uid=text(ds, "SeriesInstanceUID"),
        sop_uid=text(ds, "SOPInstanceUID"),
        accession_number=text(ds, "AccessionNumber"),
        modality=text(ds, "Modality"),
        body_part=body_part.upper() if body_part else None,
        view_position=text(ds, "ViewPosition"),
        study_date=study_date,
        study_description=text(ds, "StudyDescription"),
        series_description=text(ds, "SeriesDescription"),
        manufacturer=text(ds, "Manufacturer"),
        instance_number=integer(ds, "InstanceNumber"),
        rows=integer(ds, "Rows"),
        columns=integer(ds, "Columns"),
        frames=integer(ds, "NumberOfFrames") or (1 if "Rows" in ds else None),
        burned_in_annotation=None if burned is None else burned.upper() == "YES",
        extra=extra,
    )


def _sop_class_name(ds: Dataset) -> str:
    uid = text(ds, "SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return UID(str(uid)).name if uid else "unknown SOP class"


def check_has_pixels(ds: Dataset, source: str) -> None:
    """Objects that are not images are skipped (NoPixelDataError); an image object whose pixels are
    missing (a truncated or header-only file) is a failure (ImageError)."""
    media_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise NoPixelDataError(source, "DICOMDIR (a directory of other files), no image of its own")
    sop_class = text(ds, "SOPClassUID") or media_class
    if sop_class in NON_IMAGE_SOP_CLASSES:
        raise NoPixelDataError(source, NON_IMAGE_SOP_CLASSES[sop_class])
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        sop_class = _sop_class_name(ds)
        if "Image Storage" in sop_class or "Rows" in ds:
            raise ImageError(source, f"{sop_class} object without pixel data: truncated or header-only file")
        raise NoPixelDataError(source, f"no pixel data ({sop_class})")


def check_size(ds: Dataset, source: str, max_pixels: int, setting: str = "MEDSEARCH_MAX_IMAGE_PIXELS") -> int:
    """Refuse oversized images before decoding. Returns the number of frames."""
    rows, cols = integer(ds, "Rows"), integer(ds, "Columns")
    if not rows or not cols:
        raise ImageError(source, "pixel data without valid Rows/Columns")
    frames = integer(ds, "NumberOfFrames") or 1
    total = rows * cols * frames
    if total > max_pixels:
        raise ImageTooLargeError(
            source, f"{cols}x{rows}x{frames} = {total} pixels exceeds the limit of {max_pixels} "
            f"(setting {setting})"
        )
    return frames


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
