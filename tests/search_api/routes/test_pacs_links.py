"""Results indexed from a real PACS (Orthanc) link back to it: the instance's WADO-RS URL and the study
in the PACS viewer; previews are fetched from the PACS; researchers get no links."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import requests
from fastapi.testclient import TestClient

from core.model.encoder import HFEncoder
from core.settings import Settings
from core.sources.dicomweb import DicomWebArchive
from core.sources.dicomweb_locations import DicomWebConfig
from indexer.engines.runner import run_indexing
from search_api.app import build_service, create_app
from search_api.security.auth import AccessControl
from storage.access import AccessStore
from storage.opening import open_index
from tests.indexer.pipeline.test_dicomweb import synthetic_study
from tests.pacs import PASSWORD, USER, Orthanc

VIEWER = "https://viewer.example.org/ohif/viewer?StudyInstanceUIDs={study_uid}&series={series_uid}"


def pacs_settings(orthanc: Orthanc, db: Path, tiny_model_dir: Path) -> Settings:
    for seed in range(2):
        for data in synthetic_study(date(2024, 4, 1), instances=2, seed=seed):
            orthanc.upload(data)
    settings = Settings(db_dir=db, model=str(tiny_model_dir), device="cpu", dicomweb_username=USER,
                        dicomweb_password=PASSWORD, viewer_url_template=VIEWER, dicomweb_retries=1,
                        dicomweb_backoff_s=0.1)
    return settings


def index_pacs(settings: Settings, orthanc: Orthanc, encoder: HFEncoder) -> None:
    archive = DicomWebArchive("dicomweb+" + orthanc.dicomweb, settings.dicomweb_config())
    with open_index(settings.db_dir, create=True) as (store, repository):
        assert run_indexing(archive, store, repository, encoder).indexed == 4


@pytest.fixture
def keyed(orthanc: Orthanc, encoder: HFEncoder, tiny_model_dir: Path, tmp_path: Path
          ) -> Iterator[tuple[TestClient, dict[str, str], Orthanc]]:
    settings = pacs_settings(orthanc, tmp_path / "db", tiny_model_dir)
    index_pacs(settings, orthanc, encoder)
    access_store = AccessStore.open(tmp_path / "db")
    keys = {role: access_store.create_key(role, role)[1] for role in ("clinician", "researcher")}
    service = build_service(settings, encoder=encoder)
    access = AccessControl(store=access_store, pseudonym_secret=access_store.pseudonym_secret())
    with TestClient(create_app(settings, service=service, access=access), base_url="http://localhost") as client:
        yield client, keys, orthanc
    service.close()


def test_results_link_to_the_pacs_and_previews_come_from_it(keyed):
    client, keys, orthanc = keyed
    clinician = {"Authorization": f"Bearer {keys['clinician']}"}
    body = client.post("/search/text", json={"query": "ct", "k": 10}, headers=clinician).json()
    assert len(body["results"]) == 4
    held = {f"studies/{a}/series/{b}/instances/{c}" for a, b, c in orthanc.instances()}
    for result in body["results"]:
        source = result["source"]
        assert source["archive"] == "dicomweb+" + orthanc.dicomweb and source["path"] in held
        assert source["url"] == f"{orthanc.dicomweb}/{source['path']}"
        assert source["viewer_url"] == VIEWER.format(study_uid=source["study_uid"], series_uid=source["series_uid"])
        assert source["study_uid"] == source["path"].split("/")[1]
        assert source["sop_uid"] == source["path"].split("/")[5]
    # the link really is the instance: fetched from the PACS, it is the image's own SOP instance
    first = body["results"][0]["source"]
    fetched = requests.get(first["url"], auth=(USER, PASSWORD), timeout=30,
                                         headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert fetched.ok and first["sop_uid"].encode() in fetched.content

    image_id = body["results"][0]["image_id"]
    one = client.get(f"/images/{image_id}", headers=clinician).json()
    assert one["sources"][0]["viewer_url"].startswith("https://viewer.example.org/")
    preview = client.get(f"/images/{image_id}/preview?size=64", headers=clinician)
    assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")

    researcher = {"Authorization": f"Bearer {keys['researcher']}"}
    redacted = client.post("/search/text", json={"query": "ct", "k": 10}, headers=researcher).json()
    assert all(r["source"]["url"] is None and r["source"]["viewer_url"] is None for r in redacted["results"])
    assert client.get(f"/images/{image_id}", headers=researcher).json()["sources"][0]["url"] is None

    # the PACS goes away: a preview not yet rendered says so, the rest of the API works
    other = body["results"][1]["image_id"]
    orthanc.stop()
    failed = client.get(f"/images/{other}/preview?size=64", headers=clinician)
    assert failed.status_code in (404, 409, 502, 503) and "cannot be read" in failed.text
    assert client.get(f"/images/{other}", headers=clinician).status_code == 200


def test_viewer_template_is_checked():
    with pytest.raises(ValueError, match="unknown placeholder"):
        Settings(viewer_url_template="https://v.example/?s={study}")
    with pytest.raises(ValueError, match="http"):
        Settings(viewer_url_template="javascript:alert(1)//{study_uid}")
    assert DicomWebConfig(token="secret-token").__repr__().count("secret") == 0
