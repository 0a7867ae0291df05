"""DICOM rendering checked against pydicom's own LUT functions and values computed by hand."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from core.errors import ImageError, ImageTooLargeError, NoPixelDataError
from core.imaging.dicom import RenderOptions, apply_window, looks_like_dicom
from core.imaging.dicom_read import extract_metadata, parse_age
from core.imaging.images import load_image_bytes, load_image_file
from tests.conftest import dicom_file


def make_dicom(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", signed: bool = False,
               slope: float | None = None, intercept: float | None = None, window: tuple[float, float] | None = None,
               voi_function: str | None = None, **attrs: object) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function:
        ds.VOILUTFunction = voi_function
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def expected_from_pydicom(data: bytes) -> np.ndarray:
    """pydicom's modality + VOI LUT output, scaled to 8 bits over the output range it documents:
    [0, 2**BitsStored - 1] (unsigned), passed through the rescale when the header has one."""
    ds = pydicom.dcmread(io.BytesIO(data))
    arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    y_min, y_max = 0.0, float(2 ** ds.BitsStored - 1)
    if "RescaleSlope" in ds:
        y_min = y_min * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        y_max = y_max * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return np.clip(np.rint((arr - y_min) / (y_max - y_min) * 255), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_matches_pydicom(function: str):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4096, (16, 16))
    data = make_dicom(raw, slope=1.0, intercept=-1024.0, window=(40.0, 400.0), voi_function=function)
    rendered = load_image_bytes(data, "t.dcm").pixels
    expected = expected_from_pydicom(data)
    assert rendered.shape == (16, 16, 3)
    assert np.array_equal(rendered[:, :, 0], rendered[:, :, 2])
    assert np.abs(rendered[:, :, 0].astype(int) - expected.astype(int)).max() <= 1


def test_linear_window_by_hand():
    # centre 100, width 200 (LINEAR): <= -0.5 -> 0, > 198.5 -> 1, 99.5 -> 0.5
    values = np.array([-100.0, -0.5, 99.5, 198.5, 300.0])
    out = apply_window(values, 100.0, 200.0, "LINEAR")
    assert out[0] == 0 and out[1] == 0 and out[-1] == 1
    assert out[2] == pytest.approx(0.5)


def test_monochrome1_is_inverted():
    raw = np.array([[0, 1000], [2000, 4000]])
    mono2 = load_image_bytes(make_dicom(raw, window=(2000.0, 4000.0)), "m2.dcm").pixels[:, :, 0]
    mono1 = load_image_bytes(make_dicom(raw, window=(2000.0, 4000.0), photometric="MONOCHROME1"),
                             "m1.dcm").pixels[:, :, 0]
    assert np.array_equal(mono1.astype(int), 255 - mono2.astype(int))
    assert mono1[0, 0] == 255 and mono1[1, 1] == 0  # low values white in MONOCHROME1


def test_modality_lut_then_window_in_hounsfield():
    # raw 1024 with intercept -1024 is 0 HU: window 0/100 puts it at mid grey
    raw = np.full((4, 4), 1024)
    pixels = load_image_bytes(make_dicom(raw, slope=1.0, intercept=-1024.0, window=(0.0, 100.0),
                                         voi_function="LINEAR_EXACT"), "hu.dcm").pixels
    assert int(pixels[0, 0, 0]) in (127, 128)


def test_fallback_window_uses_percentiles_when_header_has_none():
    raw = np.arange(100 * 100).reshape(100, 100) % 1000
    pixels = load_image_bytes(make_dicom(raw), "nowin.dcm").pixels[:, :, 0]
    assert pixels.min() == 0 and pixels.max() == 255
    # a single outlier does not squash the rest of the range
    raw2 = raw.copy()
    raw2[0, 0] = 60000
    pixels2 = load_image_bytes(make_dicom(raw2), "outlier.dcm").pixels[:, :, 0]
    assert pixels2[50, 50] == pytest.approx(pixels[50, 50], abs=3)


def test_real_mr_uses_header_window():
    path = dicom_file("MR_small.dcm")  # WindowCenter 600, WindowWidth 1600
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds)
    expected = np.clip(np.rint(apply_window(values, 600.0, 1600.0) * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(load_image_file(path).pixels[:, :, 0], expected)


def test_real_ct_without_window_uses_percentile_fallback():
    path = dicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert "WindowCenter" not in ds
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    lo, hi = np.percentile(hu, (0.5, 99.5))
    expected = np.clip(np.rint(np.clip((hu - lo) / (hi - lo), 0, 1) * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(load_image_file(path).pixels[:, :, 0], expected)


def test_real_monochrome1_radiograph_is_inverted():
    from indexer.sample import pydicom_data_files

    folder = pydicom_data_files()
    if folder is None or not (folder / "RG3_UNCR.dcm").exists():
        pytest.skip("pydicom-data is not installed")
    ds = pydicom.dcmread(folder / "RG3_UNCR.dcm")  # MONOCHROME1, window 550/1024
    window = apply_window(apply_modality_lut(ds.pixel_array, ds), 550.0, 1024.0)
    expected = np.clip(np.rint((1.0 - window) * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(load_image_file(folder / "RG3_UNCR.dcm").pixels[:, :, 0], expected)


def test_real_metadata_equals_header():
    path = dicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    meta = load_image_file(path).metadata
    assert meta.patient_id == ds.PatientID
    assert meta.study_uid == ds.StudyInstanceUID
    assert meta.series_uid == ds.SeriesInstanceUID
    assert meta.sop_uid == ds.SOPInstanceUID
    assert meta.modality == "CT"
    assert (meta.rows, meta.columns) == (ds.Rows, ds.Columns)
    assert meta.study_date is not None and meta.study_date.strftime("%Y%m%d") == ds.StudyDate


def test_multiframe_encodes_middle_frame():
    path = dicom_file("examples_ybr_color.dcm")
    loaded = load_image_file(path)
    assert loaded.metadata.frames == 30 and loaded.metadata.frame_index == 15


@pytest.mark.parametrize("name", ["SC_rgb_rle.dcm", "SC_ybr_full_422_uncompressed.dcm", "examples_palette.dcm"])
def test_colour_images_stay_colour(name: str):
    pixels = load_image_file(dicom_file(name)).pixels
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    assert not np.array_equal(pixels[:, :, 0], pixels[:, :, 1])


def test_ybr_converted_to_rgb_like_the_rgb_original():
    rgb = load_image_file(dicom_file("SC_rgb_rle.dcm")).pixels.astype(int)
    ybr = load_image_file(dicom_file("SC_ybr_full_422_uncompressed.dcm")).pixels.astype(int)
    assert np.abs(rgb - ybr).mean() < 8


def test_patient_age_from_as_and_birth_date():
    assert parse_age("045Y") == 45.0
    assert parse_age("006M") == 0.5
    assert parse_age("bad") is None
    ds = Dataset()
    ds.StudyDate, ds.PatientBirthDate = "20200101", "19900101"
    assert extract_metadata(ds).patient_age == pytest.approx(30.0, abs=0.01)


def test_no_pixel_data_is_its_own_error():
    with pytest.raises(NoPixelDataError, match="RT Plan"):
        load_image_file(dicom_file("rtplan.dcm"))


def test_truncated_file_names_the_file():
    with pytest.raises(ImageError, match="MR_truncated.dcm"):
        load_image_file(dicom_file("MR_truncated.dcm"))


def test_size_limit_refuses_before_decoding():
    data = make_dicom(np.zeros((64, 64)))
    with pytest.raises(ImageTooLargeError, match="limit of 1000"):
        load_image_bytes(data, "big.dcm", RenderOptions(max_pixels=1000))


def test_dicom_recognised_by_content():
    data = make_dicom(np.zeros((4, 4)))
    assert looks_like_dicom(data[:256])
    assert not looks_like_dicom(b"hello world, this is text" * 20)
    assert load_image_bytes(data, "no_suffix").kind == "dicom"


def test_image_object_without_pixels_is_a_failure_not_a_skip():
    with pytest.raises(ImageError, match="MR Image Storage object without pixel data") as caught:
        load_image_file(dicom_file("priv_SQ.dcm"))
    assert not isinstance(caught.value, NoPixelDataError)


def test_missing_transfer_syntax_is_inferred_from_the_encoding():
    from indexer.sample import pydicom_data_files

    folder = pydicom_data_files()
    if folder is None or not (folder / "OT-PAL-8-face.dcm").exists():
        pytest.skip("pydicom-data is not installed")
    ds = pydicom.dcmread(folder / "OT-PAL-8-face.dcm", force=True)
    assert "TransferSyntaxUID" not in ds.file_meta
    pixels = load_image_file(folder / "OT-PAL-8-face.dcm").pixels
    assert pixels.shape == (480, 640, 3)
    assert not np.array_equal(pixels[:, :, 0], pixels[:, :, 2])  # the palette gave colour
