"""The metadata database on a real PostgreSQL server (tests/postgres.py starts one when
MEDSEARCH_TEST_POSTGRES=1; `.ci/run` sets it after installing PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.model.encoder import HFEncoder
from core.reports import report_analyzer
from core.settings import Settings
from core.sources import open_source
from indexer.engines.runner import run_indexing
from search_api.app import build_service
from search_api.services.query import QueryPart, SearchOptions
from storage.access import AccessStore
from storage.opening import open_index
from storage.records import ImageFilter
from tests.postgres import needs_postgres

pytestmark = needs_postgres


def test_index_search_and_access_on_postgres(postgres_url: str, archive_dir: Path, encoder: HFEncoder,
                                              tiny_model_dir: Path, tmp_path: Path):
    folder = tmp_path / "db"
    with open_index(folder, create=True, database_url=postgres_url, reports=report_analyzer()) as (store, repository):
        first = run_indexing(open_source(archive_dir), store, repository, encoder, batch_size=4)
        again = run_indexing(open_source(archive_dir), store, repository, encoder)
        assert first.indexed > 10 and again.indexed == again.linked == 0
        assert store.verify() == []
        assert repository.engine.dialect.name == "postgresql"
    settings = Settings(db_dir=folder, database_url=postgres_url, model=str(tiny_model_dir), device="cpu")
    service = build_service(settings, encoder=encoder)
    try:
        hits = service.search([QueryPart(text="brain mri")], SearchOptions(k=5, filters=ImageFilter(modality=("MR",))))
        assert hits and all(h.image.metadata.modality == "MR" for h in hits)
        _ids, vectors = service.repository.get_embeddings(
            service.repository.filter_image_ids(ImageFilter(modality=("MR",))).tolist(), encoder.dim)
        best = sorted(vectors @ encoder.encode_texts(["brain mri"])[0], reverse=True)[:5]
        assert [h.score for h in hits] == pytest.approx(best, abs=1e-5)
        labelled = service.repository.filter_image_ids(ImageFilter(labels=("noise",)))
        assert len(labelled) == 1
        upload = (archive_dir / "dicom" / "CT_small.dcm").read_bytes()
        top = service.search([QueryPart(image=service.load_query_image(upload, "ct"))], SearchOptions(k=1))[0]
        assert np.isclose(top.score, 1.0, atol=1e-4)
    finally:
        service.close()
    access = AccessStore(postgres_url)
    info, key = access.create_key("pg", "clinician")
    assert access.authenticate(key) == info
    access.record(info.id, info.role, "search", "text", [1, 2])
    assert list(access.audit())[-1]["result_ids"] == [1, 2]
