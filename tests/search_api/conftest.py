from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.model.encoder import HFEncoder
from core.settings import Settings
from search_api.app import build_service, create_app
from search_api.security.auth import AccessControl


@pytest.fixture(scope="session")
def api_settings(indexed_db: Path, tiny_model_dir: Path) -> Settings:
    return Settings(db_dir=indexed_db, model=str(tiny_model_dir), device="cpu", max_upload_bytes=2 * 1024 * 1024)


def open_client(settings: Settings, encoder: HFEncoder, access: AccessControl | None = None) -> Iterator[TestClient]:
    """A test client of the real app over `settings`' index (open mode unless `access` is given)."""
    service = build_service(settings, encoder=encoder)
    app = create_app(settings, service=service, access=access or AccessControl(None, open_mode=True))
    with TestClient(app, base_url="http://localhost") as test_client:
        yield test_client
    service.close()


@pytest.fixture(scope="session")
def client(api_settings: Settings, encoder: HFEncoder) -> Iterator[TestClient]:
    yield from open_client(api_settings, encoder)


@pytest.fixture(scope="session")
def workstation(encoder: HFEncoder, tmp_path_factory: pytest.TempPathFactory):
    """The viewer corpus (tests/search_api/workstation.py), indexed once: (corpus, database folder,
    image id by corpus name)."""
    from storage.opening import open_index
    from tests.conftest import index_folder, rows_by_path
    from tests.search_api.workstation import build_corpus

    base = tmp_path_factory.mktemp("workstation")
    corpus = build_corpus(base / "archive")
    db = base / "db"
    result = index_folder(corpus.root, db, encoder, batch_size=8)
    assert result.failed == 0, result
    with open_index(db, read_only=True) as (_, repository):
        by_path = rows_by_path(repository)
    ids = {name: by_path[str(path.relative_to(corpus.root))].id for name, path in corpus.files.items()}
    return corpus, db, ids


@pytest.fixture(scope="session")
def workstation_settings(workstation, tiny_model_dir: Path) -> Settings:
    return Settings(db_dir=workstation[1], model=str(tiny_model_dir), device="cpu", max_upload_bytes=2 * 1024 * 1024)


@pytest.fixture(scope="session")
def workstation_client(workstation_settings: Settings, encoder: HFEncoder) -> Iterator[TestClient]:
    yield from open_client(workstation_settings, encoder)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for every page test."""
    from tests.search_api.browser import launch_browser

    yield from launch_browser()


@pytest.fixture(scope="session")
def report_index(encoder: HFEncoder, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    """The hand-written report corpus (tests/report_corpus.py), indexed once, plus one report that names
    a person: (database folder, corpus report name by image id)."""
    from storage.opening import open_index
    from tests.conftest import index_folder, rows_by_path
    from tests.report_corpus import build_report_archive

    base = tmp_path_factory.mktemp("reports")
    names = build_report_archive(base / "archive", {"cr/named.dcm": NAMED_REPORT})
    db = base / "db"
    result = index_folder(base / "archive", db, encoder, batch_size=8)
    assert result.failed == 0, result
    with open_index(db, read_only=True) as (_, repository):
        by_path = rows_by_path(repository)
    return db, {by_path[path].id: name for path, name in names.items()}


NAMED_REPORT = "Findings discussed with Dr Quistorp by telephone. Small left pleural effusion."


@pytest.fixture(scope="session")
def report_settings(report_index, tiny_model_dir: Path) -> Settings:
    return Settings(db_dir=report_index[0], model=str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def report_client(report_settings: Settings, encoder: HFEncoder) -> Iterator[TestClient]:
    yield from open_client(report_settings, encoder)
