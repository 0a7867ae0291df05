"""The indexing pipeline on real DICOM files with the tiny SigLIP, into a real SQLite + FAISS store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom

from core.imaging.images import load_image_file
from core.model.encoder import HFEncoder
from core.reports import report_analyzer
from core.sources import open_source
from indexer.engines.runner import run_indexing
from storage.opening import open_index
from tests.conftest import BAD_DICOM, GOOD_DICOM, available, dicom_file, rows_by_path


def index(archive: Path, db: Path, encoder: HFEncoder, batch_size: int = 4):
    with open_index(db, create=True, reports=report_analyzer()) as (store, repository):
        result = run_indexing(open_source(archive), store, repository, encoder, batch_size=batch_size)
        ntotal = store.ntotal
    return result, ntotal, open_index(db, read_only=True).repository


def test_indexes_good_files_and_records_bad_ones(archive_dir: Path, encoder: HFEncoder, tmp_path: Path):
    result, ntotal, repo = index(archive_dir, tmp_path / "db", encoder)
    good = available(GOOD_DICOM)
    # good DICOM + the suffix-less copy + two PNG/JPEG, each a source; identical pixels one image
    assert result.indexed + result.linked == len(good) + 1 + 2 == repo.count_sources()
    assert result.indexed == ntotal == len(set(rows_by_path(repo)[p].pixel_sha256 for p in rows_by_path(repo)))
    by_path = {issue.path: issue for issue in result.issues}
    for name, kind in BAD_DICOM.items():
        assert by_path[f"dicom/{name}"].kind == kind
        assert name in by_path[f"dicom/{name}"].reason
    assert by_path["notes.txt"].kind == "skipped" and "not a DICOM" in by_path["notes.txt"].reason
    assert by_path["photos/broken.png"].kind == "failed"
    assert by_path["empty.dcm"].kind == "failed" and "empty" in by_path["empty.dcm"].reason
    assert result.failed == sum(1 for i in result.issues if i.kind == "failed")
    stored = repo.run_issues(result.run_id)
    assert {i.path for i in stored} == set(by_path)
    runs = repo.list_runs()
    assert runs[-1].status == "completed" and runs[-1].indexed == result.indexed


def test_metadata_equals_dicom_header_and_manifest(archive_dir: Path, encoder: HFEncoder, tmp_path: Path):
    _, _, repo = index(archive_dir, tmp_path / "db", encoder)
    rows = rows_by_path(repo)
    for name in available(GOOD_DICOM)[:8]:
        ds = pydicom.dcmread(archive_dir / "dicom" / name, force=True)
        row = rows[f"dicom/{name}"]
        assert row.metadata.sop_uid == ds.SOPInstanceUID
        assert row.metadata.study_uid == ds.get("StudyInstanceUID")
        assert row.metadata.modality == ds.get("Modality")
        assert row.metadata.patient_id == (str(ds.get("PatientID")).strip() or None if ds.get("PatientID") else None)
    noise = rows["photos/noise.png"]
    assert noise.metadata.patient_id == "P-NOISE" and noise.metadata.labels == ["noise", "synthetic"]
    assert noise.metadata.report_text == "Random noise test image." and noise.metadata.extra == {"site": "lab A"}
    assert rows["dicom/MR_small_no_suffix"].kind == "dicom"


def test_stored_vectors_equal_the_encoder_on_the_same_file(archive_dir: Path, encoder: HFEncoder, tmp_path: Path):
    _, _, repo = index(archive_dir, tmp_path / "db", encoder, batch_size=5)
    image_id = rows_by_path(repo)["dicom/CT_small.dcm"].id
    _, stored = repo.get_embeddings([image_id], encoder.dim)
    direct = encoder.encode_images([load_image_file(archive_dir / "dicom" / "CT_small.dcm").pixels])
    assert np.allclose(stored, direct, atol=1e-5)


def test_rerun_adds_nothing_and_changed_file_is_replaced(archive_dir: Path, encoder: HFEncoder, tmp_path: Path):
    copy = tmp_path / "archive"
    shutil.copytree(archive_dir, copy)
    _first, n1, repo = index(copy, tmp_path / "db", encoder)
    sources = repo.count_sources()
    second, n2, _ = index(copy, tmp_path / "db", encoder)
    assert second.indexed == second.linked == 0 and n2 == n1
    assert second.unchanged == len(list(copy.rglob("*.*"))) + 1 - 1  # every file but manifest.csv (+no suffix)
    shutil.copy2(copy / "dicom" / "CT_small.dcm", copy / "photos" / "new.dcm")  # a duplicate: linked
    shutil.copy2(copy / "photos" / "gradient.jpg", copy / "photos" / "noise.png")  # changed content
    third, n3, repo = index(copy, tmp_path / "db", encoder)
    # noise.png now has gradient.jpg's pixels, but its manifest row names another patient: a result of its
    # own (with a copy of the vector, nothing encoded), never one image carrying both patients
    assert third.indexed == 1 and third.linked == 1
    assert n3 == n1 and repo.count_sources() == sources + 1  # the old noise image is gone, the new one is there
    noise, gradient = rows_by_path(repo)["photos/noise.png"], rows_by_path(repo)["photos/gradient.jpg"]
    assert noise.id != gradient.id and noise.pixel_sha256 == gradient.pixel_sha256
    assert (noise.metadata.patient_id, gradient.metadata.patient_id) == ("P-NOISE", "P-GRAD")
    _, vectors = repo.get_embeddings([noise.id, gradient.id], 32)
    assert np.array_equal(vectors[0], vectors[1])


def test_touched_but_identical_files_are_not_decoded_again(archive_dir: Path, encoder: HFEncoder, tmp_path: Path):
    copy = tmp_path / "archive"
    shutil.copytree(archive_dir, copy)
    index(copy, tmp_path / "db", encoder)
    for path in (copy / "dicom").iterdir():
        os.utime(path, (1_000_000_000, 1_000_000_000))  # new mtime, same bytes
    again, _, _repo = index(copy, tmp_path / "db", encoder)
    assert again.indexed == again.linked == 0 and again.failed == again.skipped == 0
    third, _, _ = index(copy, tmp_path / "db", encoder)  # the new mtimes were recorded
    assert third.unchanged == again.unchanged


def test_moved_files_and_prune(archive_dir: Path, encoder: HFEncoder, tmp_path: Path):
    copy = tmp_path / "archive"
    shutil.copytree(archive_dir, copy)
    _, n1, _repo = index(copy, tmp_path / "db", encoder)
    (copy / "moved").mkdir()
    shutil.move(copy / "dicom" / "CT_small.dcm", copy / "moved" / "ct.dcm")
    with open_index(tmp_path / "db") as (store, repository):
        moved = run_indexing(open_source(copy), store, repository, encoder, prune=True)
        rows = rows_by_path(repository)
        assert moved.indexed == 0 and moved.linked == 1 and moved.pruned == 1
        assert "dicom/CT_small.dcm" not in rows and "moved/ct.dcm" in rows
        assert store.ntotal == n1 and store.verify() == []


def test_workers_give_the_same_result(archive_dir: Path, encoder: HFEncoder, tmp_path: Path):
    with open_index(tmp_path / "db0", create=True, reports=report_analyzer()) as (store, repository):
        inline = run_indexing(open_source(archive_dir), store, repository, encoder, workers=0)
        inline_rows = rows_by_path(repository)
    with open_index(tmp_path / "db1", create=True, reports=report_analyzer()) as (store, repository):
        pooled = run_indexing(open_source(archive_dir), store, repository, encoder, workers=1, batch_size=3)
        pooled_rows = rows_by_path(repository)
        _, vectors = repository.get_embeddings([pooled_rows["dicom/CT_small.dcm"].id], encoder.dim)
    assert (inline.indexed, inline.linked, inline.failed) == (pooled.indexed, pooled.linked, pooled.failed)
    def hashes(rows: dict) -> dict:
        return {path: row.pixel_sha256 for path, row in rows.items()}

    assert hashes(inline_rows) == hashes(pooled_rows)
    direct = encoder.encode_images([load_image_file(archive_dir / "dicom" / "CT_small.dcm").pixels])
    assert np.allclose(vectors, direct, atol=1e-5)


def test_zip_and_folder_give_the_same_vectors(archive_dir: Path, encoder: HFEncoder, tmp_path: Path):
    zipped = Path(shutil.make_archive(str(tmp_path / "archive"), "zip", archive_dir))
    result, ntotal, _ = index(zipped, tmp_path / "db", encoder)
    folder_result, _, _ = index(archive_dir, tmp_path / "db2", encoder)
    assert result.indexed == folder_result.indexed == ntotal
    assert result.linked == folder_result.linked


def test_a_changed_header_over_the_same_pixels_updates_the_image(encoder: HFEncoder, tmp_path: Path):
    """The file is read again, its pixels are already indexed in the same case: the image is kept (same
    id, nothing encoded) and reads as the new header."""
    archive = tmp_path / "archive"
    archive.mkdir()
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.save_as(archive / "ct.dcm")
    index(archive, tmp_path / "db", encoder)
    repo = open_index(tmp_path / "db", read_only=True).repository
    [image_id] = repo.image_ids().tolist()
    ds.StudyDescription = "CORRECTED DESCRIPTION"
    ds.save_as(archive / "ct.dcm")
    again, ntotal, repo = index(archive, tmp_path / "db", encoder)
    assert (again.indexed, again.encoded, again.linked, again.failed) == (0, 0, 1, 0) and ntotal == 1
    image = repo.get_images([image_id])[image_id]
    assert image.metadata.study_description == "CORRECTED DESCRIPTION" and len(image.sources) == 1
