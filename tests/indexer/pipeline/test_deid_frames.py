"""De-identification at index time and multi-frame policies, through the real indexer and store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from core.deid import pseudonym
from core.imaging.dicom import RenderOptions
from core.model.encoder import HFEncoder
from core.sources import open_source
from indexer.engines.runner import run_indexing
from indexer.pipeline.load import LoadOptions
from storage.errors import StorageError
from storage.opening import open_index
from tests.conftest import dicom_file, rows_by_path

SECRET = "a-test-key-of-sufficient-length"


def small_archive(root: Path) -> Path:
    root.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "examples_ybr_color.dcm"):
        shutil.copy2(dicom_file(name), root / name)
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.AccessionNumber = "ACC-12345"
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"
    ds.save_as(root / "CT_small_second.dcm")  # the same patient again
    (root / "manifest.csv").write_text("path,patient_name,site\nCT_small.dcm,Doe^Jane,lab\n")
    return root


def test_deidentified_index_holds_no_raw_identifiers(encoder: HFEncoder, tmp_path: Path):
    archive = small_archive(tmp_path / "archive")
    raw_ct = str(pydicom.dcmread(archive / "CT_small.dcm").PatientID)
    db = tmp_path / "db"
    with open_index(db, create=True) as (store, repository):
        result = run_indexing(open_source(archive), store, repository, encoder,
                              options=LoadOptions(deid_secret=SECRET, deid_keep_columns=("site",)))
        rows = list(repository.get_images(list(range(1, 20))).values())
    assert result.indexed == 3 and result.linked == 1  # the second CT has the same pixels: one image
    sources = {s.path: s for row in rows for s in row.sources}
    by_path = {s.path: row for row in rows for s in row.sources}
    expected = pseudonym(raw_ct, SECRET, "patient")
    assert by_path["CT_small.dcm"].metadata.patient_id == expected == sources["CT_small_second.dcm"].patient_id
    assert sources["CT_small_second.dcm"].accession_number == pseudonym("ACC-12345", SECRET, "accession")
    assert sources["CT_small_second.dcm"].sop_uid != sources["CT_small.dcm"].sop_uid
    assert by_path["CT_small.dcm"].metadata.extra == {"site": "lab"}  # allow-listed; the name column is not stored
    content = b"".join(p.read_bytes() for p in db.iterdir())
    for raw in (raw_ct.encode(), b"ACC-12345", b"Doe^Jane"):
        assert raw not in content

    # one index, one setting: a plain run (or another key) into it is refused
    with open_index(db) as (store, repository), pytest.raises(StorageError, match="de-identification"):
        run_indexing(open_source(archive), store, repository, encoder)
    with open_index(db) as (store, repository), pytest.raises(StorageError, match="de-identification"):
        run_indexing(open_source(archive), store, repository, encoder,
                     options=LoadOptions(deid_secret="another-key-0123456"))


def test_without_deid_ids_are_kept(encoder: HFEncoder, tmp_path: Path):
    archive = small_archive(tmp_path / "archive")
    with open_index(tmp_path / "db", create=True) as (store, repository):
        run_indexing(open_source(archive), store, repository, encoder)
        rows = rows_by_path(repository)
    assert rows["CT_small.dcm"].metadata.patient_id == str(pydicom.dcmread(archive / "CT_small.dcm").PatientID)


def test_every_nth_frame_is_its_own_image_and_reruns_add_nothing(encoder: HFEncoder, tmp_path: Path):
    archive = small_archive(tmp_path / "archive")
    options = LoadOptions(render=RenderOptions(frames="every:10"))
    with open_index(tmp_path / "db", create=True) as (store, repository):
        first = run_indexing(open_source(archive), store, repository, encoder, batch_size=2, options=options)
        rows = repository.get_images(repository.image_ids().tolist()).values()
        frames = sorted(s.frame_index for r in rows for s in r.sources if s.path == "examples_ybr_color.dcm")
        assert frames == [0, 10, 20]  # 30 frames
        assert first.indexed == 2 + 3 == store.ntotal  # CT_small_second shares CT_small's pixels
        again = run_indexing(open_source(archive), store, repository, encoder, options=options)
        assert again.indexed == 0 and again.unchanged == 4 and store.ntotal == 5
