"""The API picks up finished runs and new index generations without a restart."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.model.encoder import HFEncoder
from core.model.random_model import build_random_siglip
from core.settings import Settings
from core.sources import open_source
from indexer.engines.runner import run_indexing
from search_api.app import create_app
from search_api.security.auth import AccessControl
from storage.layout import current_generation, finish_generation, start_generation
from storage.opening import open_index
from tests.conftest import dicom_file


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the API did not pick up the change"
        time.sleep(0.2)


def test_api_serves_a_finished_run_without_restart(encoder: HFEncoder, tiny_model_dir: Path, tmp_path: Path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    shutil.copy2(dicom_file("CT_small.dcm"), first / "ct.dcm")
    shutil.copy2(dicom_file("MR_small.dcm"), second / "mr.dcm")
    db = tmp_path / "db"
    with open_index(db, create=True) as (store, repository):
        run_indexing(open_source(first), store, repository, encoder)
    settings = Settings(db_dir=db, model=str(tiny_model_dir), device="cpu")
    app = create_app(settings, access=AccessControl(None, open_mode=True))
    with TestClient(app, base_url="http://localhost") as client:
        app_holder = client.app.state.services
        app_holder.refresh_seconds = 0.1
        assert client.get("/health").json()["vectors"] == 1
        with open_index(db) as (store, repository):  # an indexing run while the API serves
            run_indexing(open_source(second), store, repository, encoder)
        wait_for(lambda: client.get("/health").json()["vectors"] == 2)
        upload = dicom_file("MR_small.dcm").read_bytes()
        top = client.post("/search/image", files={"file": ("mr", upload)}).json()["results"][0]
        assert top["source"]["path"] == "mr.dcm"


def test_new_generation_switches_model_atomically(encoder: HFEncoder, tiny_model_dir: Path, tmp_path: Path):
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy2(dicom_file("CT_small.dcm"), archive / "ct.dcm")
    db = tmp_path / "db"
    with open_index(db, create=True) as (store, repository):
        run_indexing(open_source(archive), store, repository, encoder)
    other_model = build_random_siglip(tmp_path / "other-model", seed=3)
    other = HFEncoder.load(str(other_model), device="cpu")
    settings = Settings(db_dir=db, device="cpu")  # no --model: each generation's own
    app = create_app(settings, access=AccessControl(None, open_mode=True))
    with TestClient(app, base_url="http://localhost") as client:
        client.app.state.services.refresh_seconds = 0.1
        before = client.get("/health").json()["model"]["fingerprint"]
        assert before == encoder.fingerprint.key
        folder = start_generation(db)
        with open_index(folder, create=True, generation=False) as (store, repository):
            run_indexing(open_source(archive), store, repository, other)
        time.sleep(0.3)
        assert client.get("/health").json()["model"]["fingerprint"] == before  # not finished: not served
        finish_generation(db, folder)
        assert current_generation(db) == folder
        wait_for(lambda: client.get("/health").json()["model"]["fingerprint"] == other.fingerprint.key)
        assert client.post("/search/text", json={"query": "ct"}).json()["results"][0]["source"]["path"] == "ct.dcm"


def test_second_writer_is_refused(tmp_path: Path):
    from storage.errors import StorageError

    with open_index(tmp_path / "db", create=True), pytest.raises(StorageError, match="another medsearch"):
        open_index(tmp_path / "db")
    with open_index(tmp_path / "db", read_only=True):  # readers are never blocked
        pass
