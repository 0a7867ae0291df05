"""Each role on each endpoint, researcher redaction, the audit log, headers, limits and the key CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from core.model.encoder import HFEncoder
from core.settings import Settings
from search_api.app import build_service, create_app
from search_api.security.auth import AccessControl
from storage.access import AccessStore
from tests.conftest import dicom_file

CT = dicom_file("CT_small.dcm").read_bytes()


@pytest.fixture(scope="module")
def keyed(api_settings: Settings, encoder: HFEncoder, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[TestClient, dict[str, str], AccessStore]]:
    store = AccessStore.open(tmp_path_factory.mktemp("access"))
    keys = {role: store.create_key(f"{role} test", role)[1] for role in ("admin", "clinician", "researcher")}
    revoked_info, keys["revoked"] = store.create_key("gone", "clinician")
    store.revoke(revoked_info.id)
    settings = api_settings.model_copy(update={"auth_failure_limit": 10_000})  # the limit has its own test
    service = build_service(settings, encoder=encoder)
    access = AccessControl(store=store, pseudonym_secret=store.pseudonym_secret())
    with TestClient(create_app(settings, service=service, access=access), base_url="http://localhost") as client:
        yield client, keys, store
    service.close()


def call(client: TestClient, endpoint: str, key: str | None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if endpoint == "search/text":
        return client.post("/search/text", json={"query": "ct", "k": 3}, headers=headers)
    if endpoint == "search/image":
        return client.post("/search/image", files={"file": ("ct", CT)}, headers=headers)
    if endpoint == "search/similar":
        return client.post("/search/similar", json={"image_id": 1, "k": 3}, headers=headers)
    if endpoint == "search":
        return client.post("/search", json={"parts": [{"text": "ct"}]}, headers=headers)
    if endpoint == "search/batch":
        return client.post("/search/batch", json={"queries": [{"parts": [{"text": "ct"}]}]}, headers=headers)
    if endpoint == "classify":
        return client.post("/classify", files={"file": ("ct", CT)}, data={"labels": "a, b"}, headers=headers)
    if endpoint == "audit":
        return client.get("/audit", headers=headers)
    return client.get(f"/{endpoint}", headers=headers)


PROTECTED = ["search/text", "search/image", "search/similar", "search", "search/batch", "classify", "images/1",
             "images/1/preview", "images/1/study", "images/1/series", "images/1/values", "whoami"]
PUBLIC = ["health", "", "presets", "openapi.json", "docs"]


@pytest.mark.parametrize("endpoint", [*PROTECTED, "audit"])
def test_no_bad_or_revoked_key_is_401(keyed, endpoint: str):
    client, keys, _ = keyed
    for key in (None, "msk_nothere_xyz", "not-a-key", keys["revoked"], keys["clinician"] + "x"):
        response = call(client, endpoint, key)
        assert response.status_code == 401, (endpoint, key, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["detail"][0]["loc"] == ["header", "authorization"]


@pytest.mark.parametrize("endpoint", PROTECTED)
@pytest.mark.parametrize("role", ["admin", "clinician", "researcher"])
def test_every_role_may_search_view_and_preview(keyed, endpoint: str, role: str):
    client, keys, _ = keyed
    assert call(client, endpoint, keys[role]).status_code == 200
    assert client.get(f"/{endpoint}" if endpoint.startswith("images") else "/health",
                      headers={"X-API-Key": keys[role]}).status_code == 200


@pytest.mark.parametrize(("role", "status"), [("admin", 200), ("clinician", 403), ("researcher", 403)])
def test_only_admins_read_the_audit_log(keyed, role: str, status: int):
    client, keys, _ = keyed
    response = call(client, "audit", keys[role])
    assert response.status_code == status
    if status == 403:
        assert response.json()["detail"][0]["type"] == "forbidden"


@pytest.mark.parametrize("endpoint", PUBLIC)
def test_public_endpoints_need_no_key_and_carry_no_patient_data(keyed, endpoint: str):
    client, _, _ = keyed
    response = call(client, endpoint, None)
    assert response.status_code == 200
    assert "1CT1" not in response.text  # CT_small's patient ID


def test_researchers_see_pseudonyms_clinicians_see_identifiers(keyed):
    client, keys, _ = keyed
    raw = str(pydicom.dcmread(dicom_file("CT_small.dcm")).PatientID)
    as_clinician = client.post("/search/image", files={"file": ("ct", CT)}, headers={"X-API-Key": keys["clinician"]})
    as_researcher = client.post("/search/image", files={"file": ("ct", CT)}, headers={"X-API-Key": keys["researcher"]})
    clinician_top, researcher_top = as_clinician.json()["results"][0], as_researcher.json()["results"][0]
    assert clinician_top["metadata"]["patient_id"] == raw
    assert researcher_top["image_id"] == clinician_top["image_id"]
    hashed = researcher_top["metadata"]["patient_id"]
    assert hashed.startswith("anon-") and raw not in as_researcher.text
    assert all(s["patient_id"] == hashed for s in researcher_top["sources"])
    again = client.get(f"/images/{researcher_top['image_id']}", headers={"X-API-Key": keys["researcher"]}).json()
    assert again["metadata"]["patient_id"] == hashed  # stable: one patient's cases still group together
    noise = client.post("/search/text", json={"query": "x", "k": 50, "filters": {"labels": ["noise"]}},
                        headers={"X-API-Key": keys["researcher"]}).json()["results"][0]
    assert noise["metadata"].get("report_text") is None


@pytest.mark.parametrize(("role", "status"), [("admin", 200), ("clinician", 200), ("researcher", 403)])
def test_downloads_and_exports_are_audited_and_never_a_researchers_file(keyed, archive_dir: Path, role: str,
                                                                       status: int):
    client, keys, _ = keyed
    headers = {"X-API-Key": keys[role]}
    download = client.get("/images/1/file", headers=headers)
    assert download.status_code == status
    if status == 200:
        source = client.get("/images/1", headers=headers).json()["source"]["path"]
        assert download.content == (archive_dir / source).read_bytes()
        assert "attachment" in download.headers["content-disposition"]
    exported = client.post("/search/text?format=json", json={"query": "ct", "k": 3}, headers=headers)
    assert exported.status_code == 200 and len(exported.json()["results"]) == 3
    records = client.get("/audit", headers={"X-API-Key": keys["admin"]}).json()
    mine = [r for r in records if r["role"] == role and r["action"] != "view"][-2:]
    assert [(r["action"], r["status"]) for r in mine] == [("download", status), ("export", 200)]
    assert mine[0]["result_ids"] == [1] and len(mine[1]["result_ids"]) == 3


def test_audit_records_who_did_what_without_query_content(keyed, tmp_path: Path):
    client, keys, store = keyed
    secret_query = "a very particular query text 7f3a"
    client.post("/search/text", json={"query": secret_query, "k": 2}, headers={"X-API-Key": keys["clinician"]})
    client.get("/images/1/preview", headers={"X-API-Key": keys["researcher"]})
    records = client.get("/audit", headers={"X-API-Key": keys["admin"]}).json()
    search, preview = records[-2], records[-1]
    assert (search["action"], search["query_kind"], search["role"], len(search["result_ids"])) == (
        "search", "text", "clinician", 2)
    assert (preview["action"], preview["result_ids"], preview["role"]) == ("preview", [1], "researcher")
    assert search["key_id"] != preview["key_id"]
    database = Path(str(store._engine.url.database)).read_bytes()
    assert secret_query.encode() not in database


def test_headers_cors_and_timeouts(keyed, api_settings: Settings, encoder: HFEncoder):
    client, keys, _ = keyed
    page = client.get("/")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self';" in policy and "unsafe-inline" not in policy
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    answer = call(client, "search/text", keys["clinician"])
    assert answer.headers["cache-control"] == "no-store"
    cross = client.get("/health", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in cross.headers  # CORS closed by default
    slow = api_settings.model_copy(update={"request_timeout_s": 1e-6})
    service = build_service(slow, encoder=encoder)
    app = create_app(slow, service=service, access=AccessControl(None, open_mode=True))
    with TestClient(app, base_url="http://localhost") as fast_fail:
        response = fast_fail.post("/search/text", json={"query": "ct"})
        assert response.status_code == 503 and response.json()["detail"][0]["type"] == "timeout"
        assert response.headers["x-frame-options"] == "DENY" and response.headers["cache-control"] == "no-store"
    service.close()


def run_api(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "search_api.cli", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_keys_cli_and_serve_refusals(indexed_db: Path, tmp_path: Path):
    db = tmp_path / "db"
    db.mkdir()
    for item in indexed_db.iterdir():
        if item.is_file() and not item.name.startswith("."):
            (db / item.name).write_bytes(item.read_bytes())
    refused = run_api("serve", "--db", str(db), "--port", "1")
    assert refused.returncode == 2 and "keys create" in refused.stderr
    wide_open = run_api("serve", "--db", str(db), "--host", "0.0.0.0", "--open")
    assert wide_open.returncode == 2 and "refused" in wide_open.stderr
    created = run_api("keys", "create", "--db", str(db), "--role", "researcher", "--name", "study team")
    assert created.returncode == 0
    plain = created.stdout.strip().splitlines()[-1]
    assert plain.startswith("msk_") and plain.encode() not in (db / "access.sqlite").read_bytes()
    listed = run_api("keys", "list", "--db", str(db))
    key_id = plain.split("_")[1]
    assert key_id in listed.stdout and "researcher" in listed.stdout and plain not in listed.stdout
    assert run_api("keys", "revoke", "--db", str(db), key_id).returncode == 0
    assert "revoked" in run_api("keys", "list", "--db", str(db)).stdout
    assert run_api("keys", "revoke", "--db", str(db), key_id).returncode == 1
    store = AccessStore.open(db)
    store.record("k1", "clinician", "search", "text", [3, 4])
    exported = run_api("audit", "--db", str(db))
    assert json.loads(exported.stdout.splitlines()[-1])["result_ids"] == [3, 4]
    as_csv = run_api("audit", "--db", str(db), "--format", "csv")
    assert as_csv.stdout.splitlines()[0].startswith("id,at,key_id") and "3 4" in as_csv.stdout


def test_plain_logs_carry_no_patient_data_or_queries(keyed, caplog: pytest.LogCaptureFixture):
    import logging

    client, keys, _ = keyed
    raw = str(pydicom.dcmread(dicom_file("CT_small.dcm")).PatientID)
    query = "secret words of a radiologist 91c2"
    with caplog.at_level(logging.DEBUG):
        client.post("/search/text", json={"query": query}, headers={"X-API-Key": keys["clinician"]})
        client.post("/search/image", files={"file": ("patient-upload.dcm", CT)}, headers={"X-API-Key": keys["admin"]})
        client.post("/search/text", json={"query": ""}, headers={"X-API-Key": keys["clinician"]})  # a 422
        client.get("/images/1", headers={"X-API-Key": keys["researcher"]})
    assert caplog.records, "expected some log records to inspect"
    assert raw not in caplog.text and query not in caplog.text and "patient-upload" not in caplog.text
