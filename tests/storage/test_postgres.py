"""The metadata database on a real PostgreSQL server, which this module starts itself (a throwaway
cluster on a free loopback port) when MEDSEARCH_TEST_POSTGRES=1; `.ci/run` sets it after installing
PostgreSQL."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.encoder import HFEncoder
from core.settings import Settings
from indexer.runner import run_indexing
from indexer.scan import open_archive
from search_api.app import build_service
from search_api.service import QueryPart, SearchOptions
from storage.access import AccessStore
from storage.repository import ImageFilter
from storage.store import Store

pytestmark = pytest.mark.skipif(os.environ.get("MEDSEARCH_TEST_POSTGRES") != "1",
                                reason="set MEDSEARCH_TEST_POSTGRES=1 to test against a real PostgreSQL (README)")


def run_as_postgres(*args: str) -> None:
    command = list(args) if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        pytest.fail("MEDSEARCH_TEST_POSTGRES=1 but PostgreSQL is not installed (apt-get install postgresql)")
    bin_dir = Path(binaries[-1]).parent
    root = tmp_path_factory.mktemp("postgres")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        for parent in list(root.parents)[:3]:  # the server user must be able to reach its folder
            parent.chmod(parent.stat().st_mode | 0o011)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run_as_postgres(str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust")
    run_as_postgres(str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-o",
                    f"-p {port} -k /tmp -c listen_addresses=127.0.0.1", "-w", "-l", str(root / "log"), "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        run_as_postgres(str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-w", "stop")


def test_index_search_and_access_on_postgres(postgres_url: str, archive_dir: Path, encoder: HFEncoder,
                                              tiny_model_dir: Path, tmp_path: Path):
    folder = tmp_path / "db"
    with Store.open(folder, create=True, database_url=postgres_url) as store:
        first = run_indexing(open_archive(archive_dir), store, encoder, batch_size=4)
        again = run_indexing(open_archive(archive_dir), store, encoder)
        assert first.indexed > 10 and again.indexed == again.linked == 0
        assert store.verify() == []
        assert store.engine.dialect.name == "postgresql"
    settings = Settings(db_dir=folder, database_url=postgres_url, model=str(tiny_model_dir), device="cpu")
    service = build_service(settings, encoder=encoder)
    try:
        hits = service.search([QueryPart(text="brain mri")], SearchOptions(k=5, filters=ImageFilter(modality=("MR",))))
        assert hits and all(h.image["modality"] == "MR" for h in hits)
        _ids, vectors = service.store.repository.get_embeddings(
            service.store.repository.filter_image_ids(ImageFilter(modality=("MR",))).tolist(), encoder.dim)
        best = sorted(vectors @ encoder.encode_texts(["brain mri"])[0], reverse=True)[:5]
        assert [h.score for h in hits] == pytest.approx(best, abs=1e-5)
        labelled = service.store.repository.filter_image_ids(ImageFilter(labels=("noise",)))
        assert len(labelled) == 1
        upload = (archive_dir / "dicom" / "CT_small.dcm").read_bytes()
        top = service.search([QueryPart(image=service.load_query_image(upload, "ct"))], SearchOptions(k=1))[0]
        assert np.isclose(top.score, 1.0, atol=1e-4)
    finally:
        service.store.close()
    access = AccessStore(postgres_url)
    info, key = access.create_key("pg", "clinician")
    assert access.authenticate(key) == info
    access.record(info.id, info.role, "search", "text", [1, 2])
    assert list(access.audit())[-1]["result_ids"] == [1, 2]
