"""A researcher sees nothing identifying: an archive with every kind of identifier (DICOM header fields,
manifest columns the indexer does not know, report text naming the patient, an archive location that
names a place) is indexed, and every response of every endpoint to a researcher is searched for each
of them. A clinician sees them (so the check can fail). De-identified indexes do not store them."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.model.encoder import HFEncoder
from core.settings import Settings
from core.sources import open_source
from indexer.engines.runner import run_indexing
from indexer.pipeline.load import LoadOptions
from search_api.app import build_service, create_app
from search_api.security.auth import AccessControl
from storage.access import AccessStore
from storage.opening import open_index
from tests.conftest import dicom_file

HEADER = {"PatientID": "PID-7781-XYZ", "PatientName": "Smithson^Evangeline", "PatientBirthDate": "19470311",
          "AccessionNumber": "ACC-99881", "InstitutionName": "St Elsewhere General", "PatientAge": "077Y",
          "ReferringPhysicianName": "Hibbert^Julius", "StudyDescription": "CT CHEST Smithson follow-up",
          "SeriesDescription": "AXIAL Evangeline", "StudyDate": "20240312", "PatientAddress": "12 Acacia Avenue",
          "OtherPatientIDs": "MRN-445566", "StudyInstanceUID": "1.2.826.0.1.3680043.10.1137.7.1",
          "SeriesInstanceUID": "1.2.826.0.1.3680043.10.1137.7.1.1",
          "SOPInstanceUID": "1.2.826.0.1.3680043.10.1137.7.1.1.1"}
MANIFEST = {"patient_id": "PID-PNG-5521", "dob": "1951-02-03", "nhs_number": "943 476 5919",
            "accession_no": "ACC-PNG-1", "referring_physician": "Dr Quinnell", "report": "Mrs Quigley has a nodule",
            "site": "north wing", "labels": "nodule"}
LOCATION = "SECRET-LOCATION-Zq"
DENY = [*(v for k, v in HEADER.items() if k != "PatientAge"), "2024-03-12", "Smithson", "Evangeline",
        *(v for k, v in MANIFEST.items() if k not in ("site", "labels")), "Quigley", LOCATION]


def identifiers_archive(root: Path) -> Path:
    root.mkdir(parents=True)
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    for keyword, value in HEADER.items():
        setattr(ds, keyword, value)
    ds.save_as(root / "ident.dcm")
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(root / "photo.png")
    columns = ["path", *MANIFEST]
    (root / "manifest.csv").write_text(",".join(columns) + "\n" + ",".join(
        ["photo.png", *(f'"{v}"' for v in MANIFEST.values())]) + "\n")
    return root


@pytest.fixture(scope="module")
def keyed(encoder: HFEncoder, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[TestClient, dict[str, str], Path]]:
    root = tmp_path_factory.mktemp("privacy")
    archive = identifiers_archive(root / LOCATION / "archive")
    db = root / "db"
    with open_index(db, create=True) as (store, repository):
        run_indexing(open_source(archive), store, repository, encoder)
    store = AccessStore.open(db)
    keys = {role: store.create_key(role, role)[1] for role in ("clinician", "researcher")}
    settings = Settings(db_dir=db, model=str(tiny_model_dir), device="cpu",
                        researcher_fields=["modality", "patient_age", "labels", "extra.site"])
    service = build_service(settings, encoder=encoder)
    access = AccessControl(store, pseudonym_secret=store.pseudonym_secret(),
                           researcher_fields=settings.researcher_fields)
    with TestClient(create_app(settings, service=service, access=access), base_url="http://localhost") as client:
        yield client, keys, archive
    service.close()


def every_response(client: TestClient, key: str, archive: Path) -> dict[str, str]:
    headers = {"X-API-Key": key}
    upload = (archive / "ident.dcm").read_bytes()
    texts = {}
    found = client.post("/search/text", json={"query": "ct", "k": 50}, headers=headers)
    texts["search/text"] = found.text
    ids = [r["image_id"] for r in found.json()["results"]]
    assert len(ids) == 2
    texts["search/image"] = client.post("/search/image", files={"file": ("scan.dcm", upload)}, headers=headers).text
    texts["search/similar"] = client.post("/search/similar", json={"image_id": ids[0]}, headers=headers).text
    texts["search"] = client.post("/search", json={"parts": [{"image_id": ids[1]}, {"text": "ct"}]},
                                  headers=headers).text
    texts["search/batch"] = client.post("/search/batch", json={"queries": [{"parts": [{"text": "x"}]}]},
                                        headers=headers).text
    texts["search grouped"] = client.post("/search/text", json={"query": "ct", "group_by": "patient"},
                                          headers=headers).text
    texts["classify"] = client.post("/classify", files={"file": ("scan.dcm", upload)},
                                    data={"labels": "nodule, normal"}, headers=headers).text
    texts["facets"] = client.post("/search/text", json={"query": "ct", "facets": True}, headers=headers).text
    for form in ("csv", "json"):
        texts[f"export {form}"] = client.post(f"/search/text?format={form}", json={"query": "ct", "k": 50},
                                              headers=headers).text
    texts["whoami"] = client.get("/whoami", headers=headers).text
    texts["search/filter"] = client.post("/search/filter", json={"k": 50}, headers=headers).text
    for image_id in ids:
        texts[f"images/{image_id}"] = client.get(f"/images/{image_id}", headers=headers).text
        for part in ("study", "series"):
            texts[f"images/{image_id}/{part}"] = client.get(f"/images/{image_id}/{part}", headers=headers).text
        texts[f"images/{image_id}/classify"] = client.post(f"/images/{image_id}/classify", json={
            "labels": ["nodule", "normal"]}, headers=headers).text
        texts[f"images/{image_id}/file"] = client.get(f"/images/{image_id}/file", headers=headers).text
        texts[f"images/{image_id}/summary"] = client.get(f"/images/{image_id}/summary", headers=headers).text
        explained = client.post(f"/images/{image_id}/explain", data={"text": "ct"}, headers=headers)
        assert explained.status_code == 200, explained.text  # researchers see the map, as they see previews
        texts[f"images/{image_id}/explain"] = explained.text
        preview = client.get(f"/images/{image_id}/preview", headers=headers)
        assert preview.status_code == 200 and preview.headers["cache-control"] == "no-store"
    texts["health"] = client.get("/health").text
    texts["unknown image"] = client.get("/images/999999", headers=headers).text
    return texts


def test_a_researcher_sees_no_identifier_in_any_response(keyed):
    client, keys, archive = keyed
    for endpoint, text in every_response(client, keys["researcher"], archive).items():
        leaked = [value for value in DENY if value in text]
        assert leaked == [], f"{endpoint} shows {leaked} to a researcher"
    shown = client.post("/search/text", json={"query": "ct"}, headers={"X-API-Key": keys["researcher"]}).json()
    photo = next(r for r in shown["results"] if r["metadata"]["labels"] == ["nodule"])
    assert photo["metadata"]["extra"] == {"site": "north wing"}  # allow-listed with extra.site
    assert photo["metadata"]["patient_id"].startswith("anon-") and photo["source"]["path"] == "photo.png"
    dicom = next(r for r in shown["results"] if r["kind"] == "dicom")
    assert dicom["metadata"]["modality"] == "CT" and dicom["metadata"]["patient_age"] == 77
    assert dicom["metadata"]["study_uid"].startswith("anon-") and dicom["source"]["archive"].startswith("anon-")
    again = client.get(f"/images/{dicom['image_id']}", headers={"X-API-Key": keys["researcher"]}).json()
    assert again["metadata"]["study_uid"] == dicom["metadata"]["study_uid"]  # stable pseudonyms


def test_a_researcher_gets_no_file_no_hidden_facet_and_pseudonymous_studies(keyed):
    client, keys, _ = keyed
    headers = {"X-API-Key": keys["researcher"]}
    found = client.post("/search/text", json={"query": "ct", "k": 50, "facets": True}, headers=headers).json()
    assert set(found["facets"]) == {"modality"}  # sex, body part and year are not in this allow-list
    dicom = next(r for r in found["results"] if r["kind"] == "dicom")
    refused = client.get(f"/images/{dicom['image_id']}/file", headers=headers)
    assert refused.status_code == 403 and refused.json()["detail"][0]["type"] == "forbidden"
    study = client.get(f"/images/{dicom['image_id']}/study", headers=headers).json()
    assert study["study_uid"] == dicom["metadata"]["study_uid"] and study["description"] is None
    assert study["study_date"] is None and study["series"][0]["description"] is None
    series = client.get(f"/images/{dicom['image_id']}/series", headers=headers).json()
    assert series["series_uid"].startswith("anon-") and series["description"] is None
    exported = client.post("/search/text?format=csv", json={"query": "ct", "k": 50}, headers=headers)
    assert exported.headers["content-type"].startswith("text/csv") and "attachment" in exported.headers[
        "content-disposition"]
    header, *rows = exported.text.splitlines()
    assert len(rows) == 2 and "anon-" in exported.text and "report_text" in header
    clinician = client.get(f"/images/{dicom['image_id']}/file", headers={"X-API-Key": keys["clinician"]})
    assert clinician.status_code == 200 and clinician.content == (keyed[2] / "ident.dcm").read_bytes()


def test_a_clinician_sees_them(keyed):
    client, keys, archive = keyed
    everything = "\n".join(every_response(client, keys["clinician"], archive).values())
    assert all(value in everything for value in ("PID-7781-XYZ", "ACC-99881", "2024-03-12", HEADER["StudyInstanceUID"],
                                                 "Mrs Quigley has a nodule", "1951-02-03", LOCATION))
    assert "CT CHEST Smithson follow-up" in everything  # the study view's description


def test_researchers_filter_only_on_what_they_see(keyed):
    client, keys, _ = keyed
    headers = {"X-API-Key": keys["researcher"]}
    dated = client.post("/search/text", json={"query": "ct", "filters": {"study_date_from": "2024-03-12"}},
                        headers=headers)
    assert dated.status_code == 403 and dated.json()["detail"][0]["loc"] == ["body", "filters", "study_date_from"]
    described = client.post("/search/text", json={"query": "ct", "filters": {"description": "smith"}}, headers=headers)
    assert described.status_code == 403
    assert client.post("/search/text", json={"query": "ct", "filters": {"modality": ["CT"]}},
                       headers=headers).status_code == 200


def test_no_error_body_carries_a_path(keyed, encoder: HFEncoder, tiny_model_dir: Path, tmp_path: Path):
    _, _, archive = keyed
    moved = shutil.copytree(archive, tmp_path / LOCATION)
    db = tmp_path / "db"
    with open_index(db, create=True) as (store, repository):
        run_indexing(open_source(moved), store, repository, encoder)
    (moved / "ident.dcm").unlink()
    settings = Settings(db_dir=db, model=str(tiny_model_dir), device="cpu")
    service = build_service(settings, encoder=encoder)
    app = create_app(settings, service=service, access=AccessControl(None, open_mode=True))
    with TestClient(app, base_url="http://localhost") as client:
        ids = [r["image_id"] for r in client.post("/search/text", json={"query": "x"}).json()["results"]]
        answers = [client.get(f"/images/{i}/preview") for i in ids]
    service.close()
    gone = [a for a in answers if a.status_code == 404]
    assert len(gone) == 1 and gone[0].json()["detail"][0]["type"] == "source_unreadable"
    assert LOCATION not in gone[0].text and "ident.dcm" not in gone[0].text


def test_health_names_the_model_without_its_path(keyed, tiny_model_dir: Path):
    client, _, _ = keyed
    health = client.get("/health")
    assert health.json()["model"]["name"] == tiny_model_dir.name and str(tiny_model_dir.parent) not in health.text


@pytest.mark.parametrize("keep_reports", [False, True])
def test_a_deidentified_index_stores_only_what_is_allowed(encoder: HFEncoder, tmp_path: Path, keep_reports: bool):
    archive = identifiers_archive(tmp_path / "archive")
    db = tmp_path / "db"
    options = LoadOptions(deid_secret="a-key-of-sufficient-length", deid_keep_columns=("site",),
                          deid_keep_reports=keep_reports)
    with open_index(db, create=True) as (store, repository):
        run_indexing(open_source(archive), store, repository, encoder, options=options)
    with sqlite3.connect(db / "medsearch.sqlite") as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    stored = b"".join(p.read_bytes() for p in db.iterdir() if p.name.startswith("medsearch.sqlite"))
    for value in ("PID-7781-XYZ", "PID-PNG-5521", "ACC-99881", "ACC-PNG-1", "1951-02-03", "943 476 5919",
                  "Dr Quinnell", "Smithson^Evangeline", "19470311", "12 Acacia Avenue", "Hibbert"):
        assert value.encode() not in stored, value
    assert b"north wing" in stored  # allow-listed with MEDSEARCH_DEID_KEEP_COLUMNS
    assert (b"Mrs Quigley has a nodule" in stored) == keep_reports
