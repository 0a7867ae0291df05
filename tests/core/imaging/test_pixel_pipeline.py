"""The DICOM pixel pipeline (PS3.3 C.11, C.7.6.3): each photometric interpretation, VOI function, LUT
sequence, functional group, preset and frame policy, checked against pydicom or values by hand."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from core.errors import ImageError, NoPixelDataError
from core.imaging.dicom import RenderOptions, apply_window, frame_view, select_frames
from core.imaging.images import load_image_bytes, load_image_file, load_image_frames
from indexer.sample import pydicom_data_files
from tests.conftest import dicom_file
from tests.core.imaging.test_dicom import make_dicom


def data_file(name: str) -> Path:
    folder = pydicom_data_files()
    if folder is None or not (folder / name).exists():
        pytest.skip(f"pydicom-data with {name} is not installed")
    return folder / name


def grey(path: Path, **options: object) -> np.ndarray:
    return load_image_file(path, RenderOptions(**options)).pixels[:, :, 0]  # type: ignore[arg-type]


def to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(unit * 255), 0, 255).astype(np.uint8)


def test_signed_pixels_with_rescale():
    raw = np.array([[-2000, -1000], [0, 1000]])
    data = make_dicom(raw, signed=True, slope=2.0, intercept=-100.0, window=(0.0, 1000.0))
    expected = to_uint8(apply_window(raw * 2.0 - 100.0, 0.0, 1000.0))
    assert np.array_equal(load_image_bytes(data, "s.dcm").pixels[:, :, 0], expected)


def test_bits_stored_below_bits_allocated_ignores_high_bits():
    ds = pydicom.dcmread(io.BytesIO(make_dicom(np.zeros((2, 2)), window=(2048.0, 4096.0))))
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = np.array([[0x0FFF, 0xF000 | 0x0800], [0x0000, 0xA001]], dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    pixels = load_image_bytes(buffer.getvalue(), "12bit.dcm").pixels[:, :, 0]
    reference = pydicom.dcmread(io.BytesIO(buffer.getvalue())).pixel_array  # pydicom masks to 12 bits
    assert reference.max() <= 0x0FFF
    assert np.array_equal(pixels, to_uint8(apply_window(reference, 2048.0, 4096.0)))


def test_float_pixel_data_gets_a_percentile_window():
    ds = pydicom.dcmread(io.BytesIO(make_dicom(np.zeros((8, 8)))))
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    del ds.PixelRepresentation
    ds.FloatPixelData = np.linspace(-1.5, 2.5, 64, dtype=np.float32).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    pixels = load_image_bytes(buffer.getvalue(), "float.dcm").pixels[:, :, 0]
    assert pixels.min() == 0 and pixels.max() == 255 and np.all(np.diff(pixels.ravel().astype(int)) >= 0)


def test_multiple_window_values_use_the_first_pair():
    raw = np.arange(0, 4000, 250).reshape(4, 4)
    data = make_dicom(raw, window=(0.0, 0.0), voi_function="LINEAR")
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.WindowCenter, ds.WindowWidth = [1000, 3000], [800, 400]
    buffer = io.BytesIO()
    ds.save_as(buffer)
    pixels = load_image_bytes(buffer.getvalue(), "multi.dcm").pixels[:, :, 0]
    assert np.array_equal(pixels, to_uint8(apply_window(raw, 1000.0, 800.0)))


def test_voi_lut_sequence_matches_pydicom():
    path = data_file("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    assert "VOILUTSequence" in ds and "WindowCenter" not in ds
    expected_raw = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    expected = to_uint8(np.asarray(expected_raw, dtype=np.float64) / (2**bits - 1))
    assert np.abs(grey(path).astype(int) - expected.astype(int)).max() <= 1


def test_modality_lut_sequence_matches_pydicom():
    path = data_file("mlut_18.dcm")
    ds = pydicom.dcmread(path)
    assert "ModalityLUTSequence" in ds
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    lo, hi = np.percentile(values, (0.5, 99.5))
    expected = to_uint8(np.clip((values - lo) / (hi - lo), 0, 1))
    assert np.array_equal(grey(path), expected)


def test_planar_configuration_does_not_change_the_image():
    planar = load_image_file(data_file("color-pl.dcm")).pixels
    interleaved = load_image_file(data_file("color-px.dcm")).pixels
    assert pydicom.dcmread(data_file("color-pl.dcm")).PlanarConfiguration == 1
    assert np.array_equal(planar, interleaved)


def test_ybr_full_equals_rgb():
    rgb = load_image_file(data_file("SC_rgb.dcm")).pixels.astype(int)
    ybr = load_image_file(data_file("SC_ybr_full_uncompressed.dcm")).pixels.astype(int)
    assert pydicom.dcmread(data_file("SC_ybr_full_uncompressed.dcm")).PhotometricInterpretation == "YBR_FULL"
    # 8-bit YCbCr round trips lose a few levels; left unconverted the difference would be ~100
    assert np.abs(rgb - ybr).max() <= 8 and np.abs(rgb - ybr).mean() < 1


def test_palette_colour_matches_pydicom_lut():
    from pydicom.pixels import apply_color_lut

    path = dicom_file("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    lut = apply_color_lut(ds.pixel_array, ds)
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    expected = lut if lut.dtype == np.uint8 else to_uint8(lut / (2**bits - 1) if lut.max() > 255 else lut / 255)
    assert np.abs(load_image_file(path).pixels.astype(int) - expected.astype(int)).max() <= 1


def test_enhanced_ct_takes_rescale_and_window_from_functional_groups():
    path = data_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    assert "RescaleIntercept" not in ds and "WindowCenter" not in ds
    view = frame_view(ds, 1)
    assert float(view.RescaleIntercept) == -1024.0 and float(view.WindowCenter) == 49.0
    frame = ds.pixel_array[1]
    expected = to_uint8(apply_window(frame * float(view.RescaleSlope) - 1024.0, 49.0, 102.0))
    image = load_image_file(path)
    assert image.metadata.frame_index == 1 and image.metadata.window == "header 49/102 LINEAR"
    assert np.array_equal(image.pixels[:, :, 0], expected)


@pytest.mark.parametrize(("body_part", "description", "preset"), [
    ("HEAD", None, "brain"), (None, "CT CHEST W/O", "lung"), ("CHEST", "mediastinum soft tissue", "mediastinum"),
    (None, "CT ABDOMEN PELVIS", "abdomen"), ("LSPINE", None, "bone"),
])
def test_ct_without_window_gets_a_preset_by_body_region(body_part: str | None, description: str | None,
                                                        preset: str):
    raw = np.arange(-1000, 1000, 125).reshape(4, 4) + 1024
    attrs = {"StudyDescription": description} if description else {}
    if body_part:
        attrs["BodyPartExamined"] = body_part
    image = load_image_bytes(make_dicom(raw, slope=1.0, intercept=-1024.0, **attrs), "ct.dcm")
    center, width = RenderOptions().presets[preset]
    assert image.metadata.window == f"preset {preset} {center:g}/{width:g}"
    assert np.array_equal(image.pixels[:, :, 0], to_uint8(apply_window(raw - 1024.0, center, width)))


def test_window_option_forms():
    raw = np.arange(0, 1600, 100).reshape(4, 4)
    ct = make_dicom(raw, slope=1.0, intercept=-1024.0, window=(40.0, 400.0))
    mr = make_dicom(raw, window=(800.0, 1600.0), Modality="MR")
    assert load_image_bytes(ct, "a", RenderOptions(window="bone")).metadata.window == "preset bone 400/1800"
    assert load_image_bytes(mr, "b", RenderOptions(window="bone")).metadata.window.startswith("header 800/1600")
    explicit = load_image_bytes(ct, "c", RenderOptions(window="100/50"))
    assert np.array_equal(explicit.pixels[:, :, 0], to_uint8(apply_window(raw - 1024.0, 100.0, 50.0)))
    assert load_image_bytes(ct, "d", RenderOptions(window="percentile")).metadata.window == "percentile 0.5-99.5"
    unknown = load_image_bytes(make_dicom(raw, slope=1.0, intercept=-1024.0), "e")  # CT, no region, no window
    assert unknown.metadata.window == "percentile 0.5-99.5"
    with pytest.raises(ValueError, match="CENTER/WIDTH"):
        RenderOptions(window="wide")


def test_frame_policies():
    path = data_file("emri_small.dcm")  # 10 frames
    assert [i.metadata.frame_index for i in load_image_frames(path.read_bytes(), "e", RenderOptions())] == [5]
    every = load_image_frames(path.read_bytes(), "e", RenderOptions(frames="every:4"))
    assert [i.metadata.frame_index for i in every] == [0, 4, 8]
    everything = load_image_frames(path.read_bytes(), "e", RenderOptions(frames="all"))
    reference = pydicom.dcmread(path).pixel_array
    assert len(everything) == 10
    assert not np.array_equal(everything[0].pixels, everything[9].pixels)
    values = reference[9].astype(np.float64)
    lo, hi = np.percentile(values, (0.5, 99.5))
    expected = to_uint8(np.clip((values - lo) / (hi - lo), 0, 1))
    assert np.abs(everything[9].pixels[:, :, 0].astype(int) - expected.astype(int)).max() <= 1
    assert select_frames(3, "first") == [0]
    with pytest.raises(ValueError, match="every:N"):
        select_frames(3, "every:0")


def test_metadata_view_position_body_region_and_burned_in():
    chest = load_image_file(data_file("RG1_UNCR.dcm")).metadata
    assert chest.body_part == "CHEST"
    raw = np.zeros((4, 4))
    meta = load_image_bytes(make_dicom(raw, StudyDescription="XR KNEE LEFT 2 VIEWS", ViewPosition="AP",
                                       BurnedInAnnotation="YES", AccessionNumber="ACC1"), "k").metadata
    assert (meta.body_part, meta.view_position, meta.burned_in_annotation) == ("KNEE", "AP", True)
    assert meta.accession_number == "ACC1" and meta.extra == {"body_part_from": "description"}


@pytest.mark.parametrize(("name", "message"), [
    ("JPEG-lossy.dcm", "pylibjpeg-libjpeg"),  # 12-bit JPEG Extended: GPL decoder, optional
    ("SC_rgb_jpeg_gdcm.dcm", "pylibjpeg-libjpeg"),  # JPEG Lossless
])
def test_missing_decoder_names_the_package(name: str, message: str):
    with pytest.raises(ImageError, match=message):
        load_image_file(dicom_file(name))


@pytest.mark.parametrize(("name", "reason"), [
    ("rtdose.dcm", "RT dose"), ("liver_1frame.dcm", "segmentation"), ("waveform_ecg.dcm", "ECG"),
    ("test-SR.dcm", "SR"),
])
def test_non_images_are_skipped_with_a_reason(name: str, reason: str):
    with pytest.raises(NoPixelDataError, match=reason):
        load_image_file(dicom_file(name))


def test_frame_view_without_functional_groups_is_the_dataset():
    ds = Dataset()
    ds.RescaleSlope, ds.RescaleIntercept, ds.PhotometricInterpretation = 2, -5, "MONOCHROME2"
    view = frame_view(ds, 0)
    assert (view.RescaleSlope, view.RescaleIntercept) == (2, -5)
