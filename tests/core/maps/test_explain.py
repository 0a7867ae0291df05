"""Relevance maps (core.maps.explain): faithful by deletion and insertion on real DICOM files, and placed
where the marked pixels are in the file (portrait, landscape, a multi-frame file, reduced decoding)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from core.imaging.dicom import RenderOptions
from core.imaging.images import load_image_frames
from core.maps.explain import Explainer, ExplainError
from core.maps.faithfulness import curves, rank_correlation, summarise
from core.maps.geometry import overlay_pixels, placement, thumbnail_size
from core.model.encoder import HFEncoder, l2_normalise
from core.model.random_model import build_random_siglip
from indexer.sample import decodable_test_images

TEXTS = ["chest x-ray pleural effusion", "brain mri", "ct liver mass", "knee fracture"]
MARGIN = 0.02  # cosine x fraction of patches: the map's areas beat random orders' by at least this on average
WINS = 0.6  # and on at least this share of the pairs


@pytest.fixture(scope="module")
def grid_encoder(tmp_path_factory: pytest.TempPathFactory) -> HFEncoder:
    """MedSigLIP-448's input geometry (448 px, 14-px patches: 32 x 32) at a tiny width and depth."""
    return HFEncoder.load(str(build_random_siglip(tmp_path_factory.mktemp("grid") / "m", "medsiglip-grid")))


@pytest.mark.parametrize("model", ["tiny", "grid"])
def test_gradient_map_beats_random_masking_on_real_dicom(model: str, encoder: HFEncoder, grid_encoder: HFEncoder):
    chosen = encoder if model == "tiny" else grid_encoder
    explainer = Explainer.of(chosen)
    queries = chosen.encode_texts(TEXTS)
    images = decodable_test_images(20)
    assert len(images) == 20
    found, flipped = [], []
    for n, pixels in enumerate(images):
        model_image = chosen.preprocess([pixels])[0]
        grid = explainer.gradient(model_image, queries[n % len(TEXTS)])
        assert grid.values.shape == (explainer.rows, explainer.cols) and grid.passes == 1
        found.append(curves(explainer, model_image, queries[n % len(TEXTS)], grid.values, random_orders=1))
        flipped.append(curves(explainer, model_image, queries[n % len(TEXTS)], -grid.values, steps=8, random_orders=1))
    summary = summarise(found)
    assert summary.deletion_margin >= MARGIN and summary.insertion_margin >= MARGIN, summary
    assert summary.deletion_wins >= WINS and summary.insertion_wins >= WINS, summary
    worst = summarise(flipped)  # the least relevant first: the measurement tells the two apart
    assert worst.deletion_margin < 0 and worst.insertion_margin < 0, worst


def test_gradient_map_agrees_with_occlusion(encoder: HFEncoder):
    explainer = Explainer.of(encoder)
    queries = encoder.encode_texts(TEXTS)
    correlations = []
    for n, pixels in enumerate(decodable_test_images(20)):
        model_image = encoder.preprocess([pixels])[0]
        fast = explainer.gradient(model_image, queries[n % len(TEXTS)])
        slow = explainer.occlusion(model_image, queries[n % len(TEXTS)])
        assert slow.passes == explainer.rows * explainer.cols + 1
        assert abs(slow.score - fast.score) < 1e-4
        correlations.append(rank_correlation(fast.values, slow.values))
    assert np.mean(correlations) > 0.2, correlations


def marked_dicom(rows: int, cols: int, markers: list[tuple[int, int] | None], side: int) -> bytes:
    """A CT-like file of len(markers) frames, frame f with a bright square of `side` pixels centred at
    markers[f] = (y, x), on a faintly textured ground that renders (header window, linear) as the
    processor's mean grey: the colour occlusion masks with, so only the marker's masking counts."""
    rng = np.random.default_rng(rows * cols)
    frames = np.empty((len(markers), rows, cols), dtype=np.uint16)
    for f, marker in enumerate(markers):
        frames[f] = 1496 + rng.integers(0, 9, (rows, cols))
        if marker is None:
            continue
        y, x = marker
        frames[f, max(0, y - side // 2):y + side // 2, max(0, x - side // 2):x + side // 2] = 3000
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CT", rows, cols, 1
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "MONOCHROME2", 16, 16, 15
    ds.PixelRepresentation, ds.WindowCenter, ds.WindowWidth = 0, 1500, 3000
    if len(markers) > 1:
        ds.NumberOfFrames = len(markers)
    ds.PixelData = frames.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


CASES = {  # (rows, cols, markers (y, x) per frame, frame explained, reduced decoding)
    "portrait": (600, 300, [(420, 90)], 0, False),
    "landscape": (300, 700, [(60, 520)], 0, False),
    "multi-frame": (400, 400, [(80, 80), (300, 250), (200, 200)], 1, False),
    "reduced": (2000, 1800, [(1500, 400)], 0, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_occlusion_finds_a_marker_within_one_patch_of_where_it_is(case: str, grid_encoder: HFEncoder):
    rows, cols, markers, frame, reduced = CASES[case]
    explainer = Explainer.of(grid_encoder)
    side = int(1.5 * max(rows / explainer.rows, cols / explainer.cols))  # a cell and a half of the grid
    options = RenderOptions(reduce_to=grid_encoder.decode_side if reduced else 0, frames=f"frame:{frame}")
    marked = load_image_frames(marked_dicom(rows, cols, markers, side), "marked.dcm", options)[0]
    plain = load_image_frames(marked_dicom(rows, cols, [None] * len(markers), side), "plain.dcm",
                              options)[0]
    if reduced:
        assert marked.pixels.shape[0] < rows  # decoded at reduced resolution, as an index made so does
    images = grid_encoder.preprocess([marked.pixels, plain.pixels])
    vectors = grid_encoder.encode_images([marked.pixels, plain.pixels])
    query = l2_normalise((vectors[0] - vectors[1])[None])[0]  # the marker itself, as the model sees it
    found = explainer.occlusion(images[0], query)
    where = placement(explainer.input, explainer.patch, marked.pixels.shape[:2], (rows, cols))
    assert (where.width, where.height) == (cols, rows)
    row, col = np.unravel_index(int(np.argmax(found.values)), found.values.shape)
    x, y = where.centre_of(int(row), int(col))
    marker_y, marker_x = markers[frame]
    off_x = max(0.0, abs(x - marker_x) - side / 2)  # from the cell's centre to the marker's square
    off_y = max(0.0, abs(y - marker_y) - side / 2)
    assert off_x <= where.cell_width and off_y <= where.cell_height, (x, y, markers[frame], where)
    # the overlay at the preview's size is hottest over the marker too
    overlay = overlay_pixels(found.values, where, 512)
    width, height = thumbnail_size(cols, rows, 512)
    assert overlay.shape == (height, width, 4)
    hot_y, hot_x = np.unravel_index(int(np.argmax(overlay[..., 3])), overlay.shape[:2])
    assert abs((hot_x + 0.5) * cols / width - marker_x) - side / 2 <= where.cell_width
    assert abs((hot_y + 0.5) * rows / height - marker_y) - side / 2 <= where.cell_height


def test_thumbnail_size_is_pillows():
    from PIL import Image

    for width, height in [(300, 600), (700, 300), (1800, 2000), (511, 512), (40, 50), (1, 900), (3000, 7)]:
        for size in (32, 256, 512, 1024):
            picture = Image.new("L", (width, height))
            picture.thumbnail((size, size))
            assert thumbnail_size(width, height, size) == picture.size


def test_bad_requests_are_typed_errors(encoder: HFEncoder):
    explainer = Explainer.of(encoder)
    with pytest.raises(ExplainError, match="resize it"):
        explainer.gradient(np.zeros((10, 10, 3), np.uint8), np.ones(encoder.dim, np.float32))
    with pytest.raises(ExplainError, match="method"):
        explainer.explain(np.zeros((32, 32, 3), np.uint8), np.ones(encoder.dim, np.float32), "saliency")
    with pytest.raises(ExplainError, match="window"):
        explainer.occlusion(np.zeros((32, 32, 3), np.uint8), np.ones(encoder.dim, np.float32), window=99)
    with pytest.raises(ExplainError, match="does not expose"):
        Explainer.of(object())
