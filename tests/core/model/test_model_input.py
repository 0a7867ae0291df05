"""The split image processor (core.model.inputs) against the processor run whole (the path before it),
and decoding at the model's input size against full resolution, on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.imaging.dicom import RenderOptions
from core.imaging.images import load_image_file, load_image_frames
from core.model.encoder import HFEncoder
from core.model.inputs import ModelInput, assemble
from indexer.sample import pydicom_data_files
from tests.conftest import available, dicom_file

try:  # transformers >= 5 without torchvision
    from transformers import CLIPImageProcessorPil as ClipProcessor
    from transformers import SiglipImageProcessorPil as SiglipProcessor
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import CLIPImageProcessor as ClipProcessor  # type: ignore[assignment]
    from transformers import SiglipImageProcessor as SiglipProcessor  # type: ignore[assignment]

SMALL = ["CT_small.dcm", "MR_small.dcm", "US1_J2KR.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm",
         "MR-SIEMENS-DICOM-WithOverlays.dcm"]
LARGE = ["RG1_UNCR.dcm", "RG3_UNCR.dcm", "MR2_UNCR.dcm", "RG1_J2KR.dcm", "OBXXXX1A.dcm", "693_UNCR.dcm"]
PROCESSORS = {  # the shapes of the models medsearch is used with
    "base 224 bicubic": lambda: SiglipProcessor(size={"height": 224, "width": 224}, resample=3),
    "medsiglip 448 bilinear": lambda: SiglipProcessor(size={"height": 448, "width": 448}, resample=2),
    "medsiglip 448 bicubic": lambda: SiglipProcessor(size={"height": 448, "width": 448}, resample=3),
    "clip 224 crop": lambda: ClipProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
}


def large_files() -> list[Path]:
    folder = pydicom_data_files()
    if folder is None:
        pytest.skip("pydicom-data is not installed")
    return [folder / name for name in LARGE if (folder / name).exists()]


def real_images() -> list[np.ndarray]:
    paths = [dicom_file(name) for name in available(SMALL)]
    folder = pydicom_data_files()
    paths += [folder / name for name in ("RG1_UNCR.dcm", "US1_UNCR.dcm") if folder and (folder / name).exists()]
    return [load_image_file(path).pixels for path in paths]


def split_path(model_input: ModelInput, images: list[np.ndarray]) -> np.ndarray:
    resized = [model_input.resize(image) for image in images]
    batch = assemble(resized, np.empty((len(images), model_input.height, model_input.width, 3), dtype=np.uint8))
    return model_input.normalise(torch.from_numpy(batch)).numpy()


def whole_path(processor, images: list[np.ndarray]) -> np.ndarray:
    pil = [Image.fromarray(np.ascontiguousarray(image), mode="RGB") for image in images]
    return np.asarray(processor(images=pil, return_tensors="np")["pixel_values"], dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("shape", sorted(PROCESSORS))
def test_the_split_processor_gives_the_whole_processors_pixel_values(shape):
    processor = PROCESSORS[shape]()
    images = real_images()
    new, old = split_path(ModelInput.from_processor(processor), images), whole_path(processor, images)
    assert new.shape == old.shape
    assert cosines(new, old).min() >= 0.9999
    assert np.abs(new - old).max() < 1e-5  # the same 8-bit resize; only float rounding differs


def test_a_grey_image_crosses_as_one_channel_and_is_the_same(tiny_model_dir):
    model_input = ModelInput.from_processor(PROCESSORS["medsiglip 448 bilinear"]())
    grey = load_image_file(dicom_file("CT_small.dcm")).pixels
    assert grey.strides[2] == 0  # the three channels of a rendered grey image share memory
    one = model_input.resize(grey)
    three = model_input.resize(np.ascontiguousarray(grey))  # the same pixels as a plain RGB array
    assert one.shape == (448, 448) and three.shape == (448, 448, 3) and one.nbytes * 3 == three.nbytes
    assert np.array_equal(np.repeat(one[:, :, None], 3, axis=2), three)


def test_the_tiny_models_embeddings_match_the_whole_processor_path(encoder: HFEncoder, tiny_model_dir):
    from transformers import AutoModel, AutoProcessor

    images = real_images()
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModel.from_pretrained(tiny_model_dir).eval()
    with torch.inference_mode():
        output = model.get_image_features(pixel_values=torch.from_numpy(whole_path(processor, images)))
    old = (output if hasattr(output, "detach") else output.pooler_output).numpy()
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    assert cosines(encoder.encode_images(images), old).min() >= 0.9999


# Decoding at no less than twice the model's side, then resizing, against resizing the full-resolution
# rendering: measured on these files, mean |difference| <= 0.8 grey levels and the 99th percentile <= 6
# (RG1 at 224 px, a 8x reduction); the bounds below leave room for decoder versions.
MEAN_LEVELS, P99_LEVELS = 1.5, 10


@pytest.mark.parametrize("shape", ["base 224 bicubic", "medsiglip 448 bilinear"])
def test_decoding_at_the_model_size_stays_within_tolerance_of_full_resolution(shape):
    model_input = ModelInput.from_processor(PROCESSORS[shape]())
    reduced_some = False
    for path in large_files():
        data = path.read_bytes()
        full = load_image_frames(data, path.name, RenderOptions())[0].pixels
        reduced = load_image_frames(data, path.name, RenderOptions(reduce_to=model_input.decode_side))[0].pixels
        reduced_some |= reduced.shape != full.shape
        assert min(reduced.shape[:2]) >= min(model_input.decode_side, *full.shape[:2])
        diff = np.abs(model_input.resize(full).astype(float) - model_input.resize(reduced).astype(float))
        assert diff.mean() <= MEAN_LEVELS and np.percentile(diff, 99) <= P99_LEVELS, (path.name, diff.mean())
    assert reduced_some  # the check above compared reduced decodes, not only images too small to reduce


def test_a_jpeg_is_decoded_at_a_dct_scale_within_tolerance(tmp_path):
    model_input = ModelInput.from_processor(PROCESSORS["base 224 bicubic"]())
    radiograph = load_image_file(large_files()[0]).pixels  # a real CR, saved as the JPEG a PACS export makes
    path = tmp_path / "cr.jpg"
    Image.fromarray(np.ascontiguousarray(radiograph[:, :, 0]), mode="L").save(path, quality=92)
    full = load_image_file(path).pixels
    reduced = load_image_file(path, RenderOptions(reduce_to=model_input.decode_side)).pixels
    assert reduced.shape[0] < full.shape[0] / 3  # decoded at 1/4 scale: both sides stay >= 448
    assert min(reduced.shape[:2]) >= model_input.decode_side
    diff = np.abs(model_input.resize(full).astype(float) - model_input.resize(reduced).astype(float))
    assert diff.mean() <= MEAN_LEVELS and np.percentile(diff, 99) <= P99_LEVELS


def test_the_tiny_models_embeddings_of_reduced_decodes_stay_close(encoder: HFEncoder):
    """A random 32-px model, the strictest case (8-16x reductions, no training that makes it smooth):
    measured min cosine 0.989 (RG3 at 32 px); the pixel tolerances above are the product's bound."""
    full, reduced = [], []
    for path in large_files():
        data = path.read_bytes()
        full.append(load_image_frames(data, path.name, RenderOptions())[0].pixels)
        reduced.append(load_image_frames(data, path.name, RenderOptions(reduce_to=encoder.decode_side))[0].pixels)
    assert cosines(encoder.encode_images(full), encoder.encode_images(reduced)).min() >= 0.98
