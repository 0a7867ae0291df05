"""The API over a real index of real DICOM files: ranks, metadata, and every documented error."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from core.model.encoder import HFEncoder
from core.model.random_model import build_random_siglip
from core.settings import Settings
from search_api.app import StartupError, build_service
from storage.opening import open_index
from storage.records import ImageRecord, Metadata, NewImage, SourceRecord
from tests.conftest import dicom_file


def all_embeddings(db: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    with open_index(db, read_only=True) as (_store, repository):
        chunks = list(repository.iter_embeddings(dim))
    return np.concatenate([c[0] for c in chunks]), np.vstack([c[1] for c in chunks])


@pytest.mark.parametrize("query", ["right pleural effusion", "chest x-ray", "brain mri with mass"])
def test_text_ranks_equal_brute_force_cosine(client: TestClient, encoder: HFEncoder, indexed_db: Path, query: str):
    k = 15
    response = client.post("/search/text", json={"query": query, "k": k})
    assert response.status_code == 200
    body = response.json()
    ids, vectors = all_embeddings(indexed_db, encoder.dim)
    cosines = vectors @ encoder.encode_texts([query])[0]
    expected_scores = np.sort(cosines)[::-1][:k]
    got_scores = [r["score"] for r in body["results"]]
    assert got_scores == pytest.approx(list(expected_scores), abs=1e-5)
    by_id = dict(zip(ids.tolist(), cosines.tolist(), strict=True))
    for result in body["results"]:  # each id's score is its own brute-force cosine
        assert result["score"] == pytest.approx(by_id[result["image_id"]], abs=1e-5)
    assert [r["rank"] for r in body["results"]] == list(range(1, k + 1))
    order = np.argsort(-cosines, kind="stable")[:k]
    distinct = np.all(np.abs(np.diff(cosines[order])) > 1e-6)
    if distinct:
        assert [r["image_id"] for r in body["results"]] == ids[order].tolist()


def test_image_query_with_indexed_dicom_returns_it_first(client: TestClient):
    path = dicom_file("CT_small.dcm")
    response = client.post("/search/image", files={"file": ("query", path.read_bytes())}, data={"k": "5"})
    assert response.status_code == 200
    top = response.json()["results"][0]
    assert top["source"]["path"] == "dicom/CT_small.dcm"
    assert top["score"] == pytest.approx(1.0, abs=1e-4)
    ds = pydicom.dcmread(path)
    meta = top["metadata"]
    assert meta["patient_id"] == ds.PatientID and meta["study_uid"] == ds.StudyInstanceUID
    assert meta["sop_uid"] == ds.SOPInstanceUID and meta["modality"] == ds.Modality
    assert meta["study_date"] == f"{ds.StudyDate[:4]}-{ds.StudyDate[4:6]}-{ds.StudyDate[6:]}"


def test_image_query_with_png_returns_it_first(client: TestClient, archive_dir: Path):
    data = (archive_dir / "photos" / "noise.png").read_bytes()
    response = client.post("/search/image", files={"file": ("noise.png", data, "image/png")})
    top = response.json()["results"][0]
    assert top["source"]["path"] == "photos/noise.png"
    assert top["metadata"]["labels"] == ["noise", "synthetic"] and top["metadata"]["patient_id"] == "P-NOISE"


def test_get_image_and_health(client: TestClient, indexed_db: Path):
    health = client.get("/health").json()
    with open_index(indexed_db, read_only=True) as (store, _repository):
        assert health["vectors"] == store.ntotal == health["images"]
    assert health["model"]["dim"] == 32 and health["model"]["random_weights"] is True
    first = client.post("/search/text", json={"query": "ct", "k": 1}).json()["results"][0]
    detail = client.get(f"/images/{first['image_id']}").json()
    assert detail["source"] == first["source"] and detail["metadata"] == first["metadata"]


def test_random_model_is_announced_everywhere(client: TestClient):
    for response in (client.get("/health"), client.post("/search/text", json={"query": "x"}),
                     client.get("/images/1")):
        assert "RANDOM" in response.json()["warning"]
    assert "RANDOM" in client.get("/").text
    assert "RANDOM" in client.get("/openapi.json").json()["info"]["description"]
    assert client.get("/docs").status_code == 200


def error_locs(response) -> list[list[str | int]]:
    return [item["loc"] for item in response.json()["detail"]]


@pytest.mark.parametrize(("payload", "loc"), [
    ({"query": ""}, ["body", "query"]),
    ({"query": "   "}, ["body", "query"]),
    ({"query": "x", "k": 0}, ["body", "k"]),
    ({"query": "x", "k": 1001}, ["body", "k"]),
    ({"query": "x", "k": "many"}, ["body", "k"]),
    ({"k": 3}, ["body", "query"]),
])
def test_text_errors_name_the_field(client: TestClient, payload: dict, loc: list[str]):
    response = client.post("/search/text", json=payload)
    assert response.status_code == 422
    assert loc in error_locs(response)


@pytest.mark.parametrize(("name", "content", "status", "kind"), [
    ("notes.txt", b"plain text, not an image at all" * 4, 422, "not_an_image"),
    ("MR_truncated.dcm", None, 422, "unreadable_image"),
    ("rtplan.dcm", None, 422, "no_pixel_data"),
    ("empty.png", b"", 422, "unreadable_image"),
    ("huge.bin", b"\0" * (2 * 1024 * 1024 + 1), 413, "too_large"),
])
def test_upload_errors_name_the_field(client: TestClient, name: str, content: bytes | None, status: int, kind: str):
    data = content if content is not None else dicom_file(name).read_bytes()
    response = client.post("/search/image", files={"file": (name, data)})
    assert response.status_code == status, response.text
    item = response.json()["detail"][0]
    assert item["loc"] == ["body", "file"] and item["type"] == kind


def test_other_request_errors(client: TestClient):
    assert ["body", "file"] in error_locs(client.post("/search/image", data={"k": "3"}))
    bad_k = client.post("/search/image", files={"file": ("a.dcm", b"x")}, data={"k": "0"})
    assert bad_k.status_code == 422 and ["body", "k"] in error_locs(bad_k)
    assert client.get("/images/999999").status_code == 404
    assert client.get("/images/abc").status_code == 422
    assert client.post("/search/text", content=b"{not json", headers={"content-type": "application/json"}
                       ).status_code == 422


def test_startup_refuses_an_index_built_with_another_model(api_settings: Settings, tmp_path: Path):
    other = build_random_siglip(tmp_path / "other", shape="tiny", seed=1)
    settings = api_settings.model_copy(update={"model": str(other)})
    settings.model_fields_set.add("model")
    with pytest.raises(StartupError, match="built with"):
        build_service(settings)
    with pytest.raises(StartupError, match="no medsearch database"):
        build_service(api_settings.model_copy(update={"db_dir": tmp_path / "missing"}))


def test_startup_warns_of_reports_missing_from_the_report_index(
        api_settings: Settings, encoder: HFEncoder, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with open_index(tmp_path / "db", create=True) as (store, _):  # no analyzer: the reports stay pending
        store.bind_model(encoder.fingerprint.to_dict())
        metadata, vector = Metadata(patient_id="P1", report_text="No effusion."), np.full(encoder.fingerprint.dim, 0.1)
        store.write([NewImage(ImageRecord(f"{i:064x}", "dicom", metadata), vector.astype(np.float32),
                              [SourceRecord("/a", f"{i}.dcm", 0, f"f{i}", 1, 1.0)]) for i in range(3)])
    with caplog.at_level(logging.WARNING, logger="search_api.app"):
        service = build_service(api_settings.model_copy(update={"db_dir": tmp_path / "db"}), encoder=encoder)
        try:
            counter = next(t for t in threading.enumerate() if t.name == "pending-reports")
            counter.join(timeout=30)
        except StopIteration:  # done already
            pass
        finally:
            service.close()
    assert "3 images' reports are not yet in the report index" in caplog.text
