"""Shared fixtures: a tiny random SigLIP built at test time (no download), real DICOM files from pydicom,
and an archive indexed once per session."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.model.encoder import HFEncoder
from core.model.random_model import build_random_siglip
from core.reports import report_analyzer
from core.sources import open_source
from indexer.engines.runner import run_indexing
from indexer.pipeline.result import RunResult
from indexer.sample import pydicom_test_files
from storage.opening import open_index
from storage.records import StoredImage
from tests.pacs import orthanc, proxy  # noqa: F401 (fixtures: a real Orthanc PACS, a proxy in front)
from tests.postgres import postgres_server, postgres_url  # noqa: F401 (fixtures: a real PostgreSQL)
from tests.ray_cluster import ray_cluster  # noqa: F401 (fixture: a real Ray cluster on loopback)

# Real DICOM files from pydicom's test data that decode with the installed (non-GPL) decoders,
# covering CT, MR, US, NM, RGB, palette, YBR, big-endian, deflate, RLE, JPEG, JPEG-LS, JPEG 2000
# and multi-frame.
GOOD_DICOM = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm", "SC_rgb_rle.dcm",
    "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_small_odd_jpeg.dcm", "image_dfl.dcm", "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm", "examples_palette.dcm", "examples_ybr_color.dcm", "ExplVR_BigEnd.dcm",
    "SC_rgb_rle_2frame.dcm", "JPEGLSNearLossless_16.dcm", "693_J2KI.dcm", "examples_rgb_color.dcm",
]
# name -> what the indexer must say about it
BAD_DICOM = {
    "MR_truncated.dcm": "failed",  # pixel data shorter than the header says
    "rtplan.dcm": "skipped",  # an RT plan: no image
    "reportsi.dcm": "skipped",  # a structured report: no image
    "priv_SQ.dcm": "failed",  # an MR image object whose pixel data is missing
    "rtdose.dcm": "skipped",  # an RT dose grid
    "liver_1frame.dcm": "skipped",  # a segmentation mask
}


def rows_by_path(repository) -> dict[str, StoredImage]:
    """Every stored image, keyed by each of its sources' paths."""
    images = repository.get_images(repository.image_ids().tolist())
    return {source.path: image for image in images.values() for source in image.sources}


def index_folder(path: Path, db: Path, encoder: HFEncoder, **options) -> RunResult:
    """Index an archive into the database folder `db` (created if missing), as a library caller does (with
    the report analyzer, as the entry points open it)."""
    with open_index(db, create=True, reports=report_analyzer()) as (store, repository):
        return run_indexing(open_source(path), store, repository, encoder, **options)


def dicom_file(name: str) -> Path:
    path = pydicom_test_files() / name
    if not path.exists():
        pytest.skip(f"{name} is not in this pydicom's test files")
    return path


def available(names: list[str]) -> list[str]:
    return [n for n in names if (pydicom_test_files() / n).exists()]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_siglip(tmp_path_factory.mktemp("model") / "tiny-siglip", shape="tiny")


@pytest.fixture(scope="session")
def encoder(tiny_model_dir: Path) -> HFEncoder:
    return HFEncoder.load(str(tiny_model_dir), device="cpu")


def make_archive(root: Path) -> Path:
    """A folder archive: real DICOM files (one without suffix), PNG/JPEG with a manifest, bad files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dicom").mkdir()
    for name in available(GOOD_DICOM) + available(list(BAD_DICOM)):
        shutil.copy2(pydicom_test_files() / name, root / "dicom" / name)
    shutil.copy2(pydicom_test_files() / "MR_small.dcm", root / "dicom" / "MR_small_no_suffix")
    (root / "photos").mkdir()
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "photos" / "noise.png")
    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    Image.fromarray(gradient).save(root / "photos" / "gradient.jpg", quality=95)
    (root / "notes.txt").write_text("not an image\n")
    (root / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "empty.dcm").write_bytes(b"")
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient_id", "labels", "report", "site"])
        writer.writerow(["photos/noise.png", "P-NOISE", "noise;synthetic", "Random noise test image.", "lab A"])
        writer.writerow(["photos/gradient.jpg", "P-GRAD", "gradient", "A horizontal gradient.", "lab B"])
    return root


@pytest.fixture(scope="session")
def archive_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_archive(tmp_path_factory.mktemp("archive") / "archive")


@pytest.fixture(scope="session")
def indexed_db(archive_dir: Path, encoder: HFEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's archive, indexed once (copy it before changing it)."""
    db = tmp_path_factory.mktemp("api") / "db"
    index_folder(archive_dir, db, encoder, batch_size=8)
    return db
