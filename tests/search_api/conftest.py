from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.encoder import HFEncoder
from core.settings import Settings
from search_api.app import build_service, create_app
from search_api.auth import AccessControl


@pytest.fixture(scope="session")
def api_settings(indexed_db: Path, tiny_model_dir: Path) -> Settings:
    return Settings(db_dir=indexed_db, model=str(tiny_model_dir), device="cpu", max_upload_bytes=2 * 1024 * 1024)


@pytest.fixture(scope="session")
def client(api_settings: Settings, encoder: HFEncoder) -> Iterator[TestClient]:
    service = build_service(api_settings, encoder=encoder)
    app = create_app(api_settings, service=service, access=AccessControl(None, open_mode=True))
    with TestClient(app, base_url="http://localhost") as test_client:
        yield test_client
    service.close()
