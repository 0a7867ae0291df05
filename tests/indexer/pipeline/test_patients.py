"""One patient per result, removals that leave no trace and stick: the same pixels under two patients
and two studies (a DICOM, a PNG rendered from it with another patient in the manifest, a copy in the
same study and one in another study), indexed and searched as users do, then removed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.imaging.dicom import RenderOptions
from core.imaging.images import load_image_file
from core.model.encoder import HFEncoder
from core.model.inputs import ModelInput
from core.settings import Settings
from search_api.app import build_service, create_app
from search_api.security.auth import AccessControl
from storage.opening import open_index
from storage.reports.records import ReportMatch
from tests.conftest import dicom_file
from tests.indexer.cli.test_cli import run_cli

CT = pydicom.dcmread(dicom_file("CT_small.dcm"))
OTHER_STUDY = CT.StudyInstanceUID + ".99"
# a report naming a person: its words are in the report index too (raw, and as the index's stems)
CT_REPORT = "Discussed with Dr Quillfeather. Xanthoria pattern of pleural effusion."
REPORT_TRACES = ["Quillfeather", "quillfeath", "Xanthoria", "xanthoria"]


def cross_patient_archive(root: Path, decode_side: int) -> Path:
    """`decode_side`: the model's (core.model.inputs); the PNG holds the DICOM's pixels rendered at it, as
    a run renders them, so that it is the same pixels under another patient."""
    (root / "dicom").mkdir(parents=True)
    (root / "images").mkdir()
    shutil.copy2(dicom_file("CT_small.dcm"), root / "dicom" / "ct.dcm")
    shutil.copy2(dicom_file("CT_small.dcm"), root / "dicom" / "ct-copy.dcm")  # the same file twice: one image
    later = pydicom.dcmread(dicom_file("CT_small.dcm"))
    later.StudyInstanceUID, later.SOPInstanceUID = OTHER_STUDY, CT.SOPInstanceUID + ".99"
    later.save_as(root / "dicom" / "ct-later-study.dcm")  # the same pixels in another study of the patient
    shutil.copy2(dicom_file("MR_small.dcm"), root / "dicom" / "mr.dcm")
    rendered = load_image_file(dicom_file("CT_small.dcm"), RenderOptions(reduce_to=decode_side)).pixels
    Image.fromarray(np.ascontiguousarray(rendered)).save(root / "images" / "ct.png")
    (root / "manifest.csv").write_text("path,patient_id,labels,report\n"
                                       "images/ct.png,SAMPLE-PNG-1,head,Report of SAMPLE-PNG-1.\n"
                                       f"dicom/ct.dcm,,,{CT_REPORT}\n"
                                       f"dicom/ct-copy.dcm,,,{CT_REPORT}\n"
                                       f"dicom/ct-later-study.dcm,,,{CT_REPORT}\n")
    return root


def identifiers_in(folder: Path, values: list[str]) -> list[str]:
    """Which values appear in any database or index file of the folder (SQLite, its WAL, FAISS)."""
    blobs = b"".join(path.read_bytes() for path in folder.iterdir()
                     if path.is_file() and path.name.startswith(("medsearch.sqlite", "index.faiss")))
    return [value for value in values if value.encode() in blobs]


@pytest.fixture
def indexed(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, Path]:
    from transformers import AutoProcessor

    side = ModelInput.from_processor(AutoProcessor.from_pretrained(tiny_model_dir)).decode_side
    archive, db = cross_patient_archive(tmp_path / "archive", side), tmp_path / "db"
    done = run_cli("run", str(archive), "--db", str(db), "--model", str(tiny_model_dir), "--no-progress")
    assert done.returncode == 0, done.stderr
    # four images of CT_small's pixels and MR_small's, yet the model ran on two distinct pixel contents
    assert "indexed 4 new images (2 encoded), 1 more sources" in done.stdout
    return archive, db


def test_same_pixels_under_two_patients_are_two_results(indexed, encoder: HFEncoder, tiny_model_dir: Path):
    _, db = indexed
    settings = Settings(db_dir=db, model=str(tiny_model_dir), device="cpu")
    service = build_service(settings, encoder=encoder)
    app = create_app(settings, service=service, access=AccessControl(None, open_mode=True))
    with TestClient(app, base_url="http://localhost") as client:
        found = client.post("/search/image", files={"file": ("q", dicom_file("CT_small.dcm").read_bytes())},
                            data={"k": 4}).json()["results"]
    service.close()
    same = [r for r in found if r["score"] > 0.9999]
    assert len(same) == 3 and len({r["image_id"] for r in same}) == 3
    cases = {(r["metadata"]["patient_id"], r["metadata"]["study_uid"]): r for r in same}
    assert set(cases) == {(CT.PatientID, CT.StudyInstanceUID), (CT.PatientID, OTHER_STUDY), ("SAMPLE-PNG-1", None)}
    for result in same:  # a result never mixes patients or studies: every source is the result's own case
        assert all((s["patient_id"], s["study_uid"]) == (result["metadata"]["patient_id"],
                                                         result["metadata"]["study_uid"]) for s in result["sources"])
    assert sorted(s["path"] for s in cases[(CT.PatientID, CT.StudyInstanceUID)]["sources"]) == [
        "dicom/ct-copy.dcm", "dicom/ct.dcm"]  # exact duplicates within one study stay one result
    png = cases[("SAMPLE-PNG-1", None)]
    assert png["metadata"]["report_text"] == "Report of SAMPLE-PNG-1." and png["metadata"]["study_date"] is None
    assert png["metadata"]["labels"] == ["head"] and png["kind"] == "png"


def test_removing_a_patient_leaves_no_trace_and_sticks(indexed, tiny_model_dir: Path):
    archive, db = indexed
    traces = [CT.PatientID, CT.StudyInstanceUID, OTHER_STUDY, CT.SOPInstanceUID, CT.SeriesInstanceUID,
              "dicom/ct.dcm", "ct-copy.dcm", "ct-later-study.dcm", *REPORT_TRACES]
    assert identifiers_in(db, traces) == traces
    with open_index(db, read_only=True) as (_, repository):  # the report index finds the report's words
        assert len(repository.report_matches(ReportMatch(words=("quillfeath",)))) == 2

    preview = run_cli("remove", "--db", str(db), "--patient", CT.PatientID, "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert "would remove" in preview.stdout and "3 sources, 2 images" in preview.stdout
    assert f"patient {CT.PatientID}: 2 images" in preview.stdout
    assert f"study {CT.StudyInstanceUID}: 1 images" in preview.stdout
    assert f"study {OTHER_STUDY}: 1 images" in preview.stdout
    assert identifiers_in(db, traces) == traces  # a dry run changes nothing
    asked = run_cli("remove", "--db", str(db), "--patient", CT.PatientID)  # no --yes, no answer: nothing done
    assert asked.returncode != 0 and identifiers_in(db, traces) == traces

    removed = run_cli("remove", "--db", str(db), "--patient", CT.PatientID, "--yes", "--note", "request 17")
    assert removed.returncode == 0, removed.stderr
    assert "removed 3 sources and 2 images" in removed.stdout
    assert identifiers_in(db, traces) == []  # not in the rows, the freed pages, the WAL or the index file
    with open_index(db, read_only=True) as (store, repository):
        images = repository.get_images(repository.image_ids().tolist())
        assert {image.metadata.patient_id for image in images.values()} == {"SAMPLE-PNG-1", "MR_small"} or \
            CT.PatientID not in {image.metadata.patient_id for image in images.values()}
        assert store.ntotal == len(images) == 2 and store.verify() == []
        assert repository.report_matches(ReportMatch(words=("quillfeath",))) == []
        assert len(repository.report_matches(ReportMatch(words=("sampl", "png")))) == 1  # another's report stays

    rerun = run_cli("run", str(archive), "--db", str(db), "--model", str(tiny_model_dir), "--no-progress")
    assert rerun.returncode == 0, rerun.stderr
    assert "indexed 0 new images" in rerun.stdout and "skipped 3" in rerun.stdout
    assert identifiers_in(db, [CT.PatientID, CT.StudyInstanceUID, OTHER_STUDY, CT.SOPInstanceUID]) == []
    listed = run_cli("exclusions", "--db", str(db))
    assert listed.returncode == 0 and "patient" in listed.stdout and "request 17" in listed.stdout
    assert CT.PatientID not in listed.stdout
    number = re.search(r"^\s*(\d+) patient", listed.stdout, re.MULTILINE)
    assert number is not None

    lifted = run_cli("exclusions", "--db", str(db), "--lift", number.group(1))
    assert lifted.returncode == 0 and "lifted" in lifted.stdout
    back = run_cli("run", str(archive), "--db", str(db), "--model", str(tiny_model_dir), "--no-progress")
    assert "indexed 2 new images (0 encoded), 1 more sources" in back.stdout, back.stdout


def test_removing_a_study_keeps_the_patients_other_studies(indexed):
    _, db = indexed
    removed = run_cli("remove", "--db", str(db), "--study", OTHER_STUDY, "--yes")
    assert removed.returncode == 0 and "removed 1 sources and 1 images" in removed.stdout
    assert identifiers_in(db, [OTHER_STUDY, "ct-later-study.dcm"]) == []
    assert identifiers_in(db, [CT.PatientID, CT.StudyInstanceUID]) == [CT.PatientID, CT.StudyInstanceUID]
    assert "nothing matches" in run_cli("remove", "--db", str(db), "--study", OTHER_STUDY, "--yes").stdout
