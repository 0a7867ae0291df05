"""The CT rendering MedSigLIP was trained with (`--window ct-channels`): three windows in the colour
channels, checked against hand-computed windows on real CT; part of the fingerprint; an index built
with it is served with it (an uploaded query is rendered the same way) and never mixed with vectors of
the standard rendering."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from core.imaging.dicom import RenderOptions, load_dicom_frames
from core.model.encoder import HFEncoder, describe_model
from indexer.sample import pydicom_data_files
from tests.conftest import dicom_file

WINDOWS = [(-1024, 1024), (-135, 215), (0, 80)]  # red wide, green soft tissue, blue brain (MedGemma's CT notebook)


def real_ct() -> list[Path]:
    found = [dicom_file("CT_small.dcm")]
    data = pydicom_data_files()
    if data is not None and (data / "693_UNCI.dcm").exists():
        found.append(data / "693_UNCI.dcm")
    return found


@pytest.mark.parametrize("path", real_ct(), ids=lambda p: p.name)
def test_each_channel_is_its_window_computed_by_hand(path: Path):
    ds = pydicom.dcmread(path)
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    pixels, meta = load_dicom_frames(path.read_bytes(), path.name, RenderOptions(window="ct-channels"))[0]
    assert pixels.shape == (*hu.shape, 3) and pixels.dtype == np.uint8
    for channel, (low, high) in enumerate(WINDOWS):
        expected = np.round((np.clip(hu, low, high) - low) / (high - low) * 255).astype(np.uint8)
        assert np.array_equal(pixels[..., channel], expected), f"channel {channel}"
    assert meta.window == "ct-channels -1024..1024 -135..215 0..80"
    # the channels differ (a single window would repeat one grey in all three)
    assert len({pixels[..., c].tobytes() for c in range(3)}) == 3


def test_other_modalities_render_as_auto():
    data = dicom_file("MR_small.dcm").read_bytes()
    channels = load_dicom_frames(data, "mr", RenderOptions(window="ct-channels"))[0]
    auto = load_dicom_frames(data, "mr", RenderOptions(window="auto"))[0]
    assert np.array_equal(channels[0], auto[0]) and channels[1].window == auto[1].window


def test_the_rendering_is_part_of_the_fingerprint(tiny_model_dir: Path, encoder: HFEncoder):
    standard = describe_model(str(tiny_model_dir))
    channels = describe_model(str(tiny_model_dir), rendering="ct-channels")
    assert channels.preprocessing_version == standard.preprocessing_version + "+ct-channels"
    assert channels.key != standard.key
    assert encoder.for_rendering("ct-channels").fingerprint == channels
    assert encoder.for_rendering("").fingerprint == standard == encoder.fingerprint


def test_an_index_built_with_it_is_served_with_it_and_not_mixed(tiny_model_dir: Path, tmp_path: Path):
    from fastapi.testclient import TestClient

    from core.settings import Settings
    from search_api.app import build_service, create_app
    from search_api.security.auth import AccessControl
    from storage.opening import open_index
    from tests.indexer.cli.test_cli import run_cli

    archive = tmp_path / "archive"
    archive.mkdir()
    for path in real_ct():
        shutil.copy2(path, archive / path.name)
    shutil.copy2(dicom_file("MR_small.dcm"), archive / "mr.dcm")
    db = tmp_path / "db"
    done = run_cli("run", str(archive), "--db", str(db), "--model", str(tiny_model_dir), "--window", "ct-channels",
                   "--no-progress")
    assert done.returncode == 0, done.stderr
    with open_index(db, read_only=True) as (store, _):
        assert store.manifest is not None and "ct-channels" in store.manifest.preprocessing_version.split("+")
    service = build_service(Settings(db_dir=db, model=str(tiny_model_dir)))  # loads the model as the index says
    with TestClient(create_app(Settings(db_dir=db), service=service, access=AccessControl(None, open_mode=True)),
                    base_url="http://localhost") as client:
        found = client.post("/search/image", files={"file": ("q.dcm", real_ct()[0].read_bytes())}).json()
        top = found["results"][0]
        assert top["source"]["path"] == real_ct()[0].name and top["score"] == pytest.approx(1.0, abs=1e-5)
        assert top["metadata"]["window"].startswith("ct-channels")
    service.close()
    shutil.copy2(dicom_file("MR_small_RLE.dcm"), archive / "new.dcm")  # a new file: the run loads the model
    standard = run_cli("run", str(archive), "--db", str(db), "--model", str(tiny_model_dir), "--no-progress")
    assert standard.returncode == 2 and "--new-generation" in standard.stderr
