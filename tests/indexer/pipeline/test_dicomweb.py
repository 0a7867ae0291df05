"""Indexing from a real PACS: Orthanc with its DICOMweb plugin on loopback, real DICOM files from
pydicom-data uploaded to it, a recording / fault-injecting proxy in front of it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import asdict
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from core.errors import ArchiveError
from core.model.encoder import HFEncoder
from core.reports import report_analyzer
from core.sources import open_source
from core.sources.dicomweb import DicomWebArchive
from core.sources.dicomweb_locations import DicomWebConfig, StudyQuery, check_date_range, split_location
from indexer.engines.runner import run_indexing
from indexer.sample import pydicom_data_files
from storage.opening import open_index
from tests.conftest import dicom_file
from tests.pacs import PASSWORD, USER, Faults, Orthanc, Proxy, self_signed_certificate

FIRST = ["MR2_UNCI.dcm", "RG1_UNCI.dcm", "US1_UNCI.dcm", "emri_small.dcm", "OBXXXX1A.dcm", "SC_rgb.dcm",
         "color-pl.dcm", "liver.dcm", "OT-PAL-8-face.dcm"]  # the last: no file meta header
LATER = ["RG3_UNCI.dcm", "693_UNCI.dcm", "JPEG-LL.dcm", "gdcm-US-ALOKA-16.dcm", "vlut_04.dcm", "mlut_18.dcm",
         "MR-SIEMENS-DICOM-WithOverlays.dcm"]
FAST = DicomWebConfig(retries=0, timeout_s=10, backoff_s=0.01, fetch_threads=4)


def data_file(name: str) -> Path:
    folder = pydicom_data_files()
    if folder is None or not (folder / name).exists():
        pytest.skip(f"{name} is not in pydicom-data (make install installs it)")
    return folder / name


def synthetic_study(study_date: date, instances: int = 2, seed: int = 0, modality: str = "CT") -> list[bytes]:
    """A small generated study (noise on CT_small's header), dated `study_date`."""
    template = pydicom.dcmread(dicom_file("CT_small.dcm"))
    rng = np.random.default_rng(seed)
    study, series = generate_uid(entropy_srcs=[f"study{seed}"]), generate_uid(entropy_srcs=[f"series{seed}"])
    out = []
    for i in range(instances):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"sop{seed}-{i}"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = study_date.strftime("%Y%m%d")
        ds.Modality = modality
        ds.PatientID = f"SYN{seed}"
        ds.PixelData = rng.integers(0, 2000, (ds.Rows, ds.Columns), dtype=np.int16).tobytes()
        buffer = pydicom.filebase.DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def upload(server: Orthanc, names: list[str]) -> list[str]:
    """Upload pydicom-data files; returns the names Orthanc stored (not already held under their UID)."""
    return [name for name in names if server.upload(data_file(name))["Status"] == "Success"]


def sources(repository) -> dict[str, dict]:
    """path -> the image's metadata and pixel hash, with the source of that path under "source"."""
    images = repository.get_images(repository.image_ids().tolist())
    return {s.path: {**asdict(image.metadata), "pixel_sha256": image.pixel_sha256, "source": asdict(s)}
            for image in images.values() for s in image.sources}


def pacs_paths(server: Orthanc) -> set[str]:
    return {f"studies/{a}/series/{b}/instances/{c}" for a, b, c in server.instances()}


def test_pacs_run_then_only_new_studies_are_fetched(orthanc: Orthanc, proxy: Proxy, encoder: HFEncoder,
                                                    tmp_path: Path):
    stored = upload(orthanc, FIRST)
    archive = DicomWebArchive("dicomweb+" + proxy.dicomweb, FAST)
    with open_index(tmp_path / "db", create=True, reports=report_analyzer()) as (store, repository):
        first = run_indexing(archive, store, repository, encoder, batch_size=4)
        held = pacs_paths(orthanc)
        assert first.failed == 0 and first.indexed + first.linked + first.skipped == len(held) == len(stored)
        assert first.indexed >= len(held) - 1  # liver.dcm is a segmentation: skipped, as from a folder
        assert set(proxy.fetched()) == held and len(proxy.fetched()) == len(held)
        pacs = sources(repository)

    # the same files indexed from a folder: same pixels and the same metadata per SOP Instance UID
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in stored:
        (folder / name).write_bytes(data_file(name).read_bytes())
    with open_index(tmp_path / "folder-db", create=True, reports=report_analyzer()) as (store, repository):
        run_indexing(open_source(folder), store, repository, encoder)
        local = {row["source"]["sop_uid"]: row for row in sources(repository).values()}
    assert len(local) == len(pacs)
    for path, row in pacs.items():
        twin = local[row["source"]["sop_uid"]]
        assert path == f"studies/{row['source']['study_uid']}/series/{row['source']['series_uid']}/instances/" \
                       f"{row['source']['sop_uid']}"
        for name in ("pixel_sha256", "modality", "patient_id", "study_uid", "study_date", "rows", "columns"):
            assert row[name] == twin[name], name
        assert row["source"]["file_sha256"] == twin["source"]["file_sha256"]  # the bytes as stored, untouched

    # new studies and one more instance in an existing study: only they are fetched
    before = pacs_paths(orthanc)
    upload(orthanc, LATER)
    existing_study = sorted(pacs)[0].split("/")[1]
    extra = next(pydicom.dcmread(pydicom.filebase.DicomBytesIO(b)) for b in synthetic_study(date(2020, 1, 1)))
    extra.StudyInstanceUID = existing_study
    extra.PatientID = pacs[sorted(pacs)[0]]["patient_id"]
    buffer = pydicom.filebase.DicomBytesIO()
    extra.save_as(buffer)
    orthanc.upload(buffer.getvalue())
    new = pacs_paths(orthanc) - before
    assert len(new) >= len(LATER) // 2
    proxy.requests.clear()
    with open_index(tmp_path / "db", reports=report_analyzer()) as (store, repository):
        second = run_indexing(DicomWebArchive("dicomweb+" + proxy.dicomweb, FAST), store, repository, encoder,
                              batch_size=4)
        assert set(proxy.fetched()) == new and len(proxy.fetched()) == len(new)
        assert second.unchanged == len(before)
        assert second.indexed + second.linked + second.skipped + second.failed == len(new)
        # JPEG-LL.dcm needs a GPL decoder: it fails with that reason, from a PACS as from a folder
        assert all("GPL" in issue.reason for issue in second.issues if issue.kind == "failed")
        assert set(repository.archive_state(archive.key)) == pacs_paths(orthanc)  # each known once
        # the unchanged studies were not even listed: one study query, instance queries for changed ones
        listed_studies = {p.split("/")[3] for p in proxy.listed() if p.split("?")[0].endswith("/instances")}
        assert listed_studies == {p.split("/")[1] for p in new}

        # nothing new: one QIDO-RS query, nothing fetched, nothing written
        proxy.requests.clear()
        count = repository.count_sources()
        third = run_indexing(DicomWebArchive("dicomweb+" + proxy.dicomweb, FAST), store, repository, encoder)
        assert proxy.fetched() == [] and all(p.startswith("/dicom-web/studies?") for p in proxy.requests)
        assert third.indexed == 0 and repository.count_sources() == count
        assert store.verify() == []


def test_passing_failures_are_retried_with_backoff_or_fetched_next_run(orthanc: Orthanc, proxy: Proxy,
                                                                       encoder: HFEncoder, tmp_path: Path):
    for seed in range(3):
        for data in synthetic_study(date(2021, 5, 1), instances=2, seed=seed):
            orthanc.upload(data)
    paths = sorted(pacs_paths(orthanc))
    flaky, broken, slow = paths[0].rsplit("/", 1)[1], paths[1].rsplit("/", 1)[1], paths[2].rsplit("/", 1)[1]
    proxy.faults = Faults(fail_status={flaky: 503, broken: 502}, fail_times={flaky: 2, broken: 99},
                          delay={slow: 3.0})
    config = DicomWebConfig(retries=2, backoff_s=0.01, timeout_s=1.0, fetch_threads=2)
    with open_index(tmp_path / "db", create=True, reports=report_analyzer()) as (store, repository):
        result = run_indexing(DicomWebArchive("dicomweb+" + proxy.dicomweb, config), store, repository, encoder)
        reasons = {issue.path.rsplit("/", 1)[1]: issue.reason for issue in result.issues}
        assert flaky not in reasons  # two 503s, then fetched on the third attempt
        assert "HTTP 502" in reasons[broken] and "3 attempts" in reasons[broken]
        assert "timed out" in reasons[slow] and "fetched again next run" in reasons[slow]
        assert result.failed == 2 and result.indexed == len(paths) - 2
        assert sum(1 for p in proxy.fetched() if p.endswith(flaky)) == 3

        proxy.faults = Faults()
        proxy.requests.clear()
        again = run_indexing(DicomWebArchive("dicomweb+" + proxy.dicomweb, config), store, repository, encoder)
        assert sorted(p.rsplit("/", 1)[1] for p in proxy.fetched()) == sorted([broken, slow])
        assert again.failed == 0 and again.indexed == 2 and repository.count_sources() == len(paths)


def test_a_study_deleted_mid_run_and_a_corrupt_instance(orthanc: Orthanc, proxy: Proxy, encoder: HFEncoder,
                                                        tmp_path: Path):
    for seed in range(3):
        for data in synthetic_study(date(2022, 2, 2), instances=3, seed=seed):
            orthanc.upload(data)
    # a corrupt instance: the header promises far more pixels than it carries
    bad = pydicom.dcmread(pydicom.filebase.DicomBytesIO(synthetic_study(date(2022, 2, 2), 1, seed=9)[0]))
    bad.Rows = 4096
    buffer = pydicom.filebase.DicomBytesIO()
    bad.save_as(buffer)
    orthanc.upload(buffer.getvalue())
    doomed = sorted(pacs_paths(orthanc))[0].split("/")[1]

    deleted = threading.Lock()

    def delete_doomed(path: str) -> None:  # before the first fetch of the study is forwarded
        if doomed in path and "/instances/" in path and deleted.acquire(blocking=False):
            orthanc.delete_study(doomed)

    proxy.faults = Faults(hook=delete_doomed)
    one_at_a_time = DicomWebConfig(retries=0, fetch_threads=1)
    with open_index(tmp_path / "db", create=True, reports=report_analyzer()) as (store, repository):
        result = run_indexing(DicomWebArchive("dicomweb+" + proxy.dicomweb, one_at_a_time), store, repository, encoder)
        assert sum(1 for p in proxy.fetched() if doomed in p) == 1  # the rest of the study is not asked for
        reasons = {issue.path: issue.reason for issue in result.issues}
        gone = [r for p, r in reasons.items() if doomed in p]
        assert len(gone) == 3 and all("removed from the PACS" in r or "no longer has" in r for r in gone)
        corrupt = [r for p, r in reasons.items() if bad.SOPInstanceUID in p]
        assert len(corrupt) == 1 and "pixel" in corrupt[0].lower()
        assert result.indexed == 6 and result.failed == 4  # the run went on for everything else
        deleted_instance = next(p for p in reasons if doomed in p)
        with pytest.raises(OSError, match="no longer has"):  # as the API's preview meets it
            DicomWebArchive("dicomweb+" + orthanc.dicomweb, DicomWebConfig(username=USER, password=PASSWORD)
                            ).read(deleted_instance)

        proxy.faults = Faults()
        proxy.requests.clear()
        again = run_indexing(DicomWebArchive("dicomweb+" + proxy.dicomweb, FAST), store, repository, encoder)
        assert proxy.fetched() == []  # the corrupt instance is not fetched again; the deleted study is gone
        assert again.unchanged == 7


def test_bearer_token_and_refused_credentials(orthanc: Orthanc, proxy: Proxy, encoder: HFEncoder, tmp_path: Path):
    orthanc.upload(synthetic_study(date(2023, 3, 3), 1)[0])
    proxy.faults = Faults(bearer="s3cret-token")
    with pytest.raises(ArchiveError, match="HTTP 401.*MEDSEARCH_DICOMWEB_TOKEN"):
        DicomWebArchive("dicomweb+" + proxy.dicomweb, FAST).check()
    archive = DicomWebArchive("dicomweb+" + proxy.dicomweb, DicomWebConfig(token="s3cret-token", retries=0))
    with open_index(tmp_path / "db", create=True, reports=report_analyzer()) as (store, repository):
        assert run_indexing(archive, store, repository, encoder).indexed == 1
    # basic auth straight to Orthanc, and a wrong password
    DicomWebArchive("dicomweb+" + orthanc.dicomweb, DicomWebConfig(username=USER, password=PASSWORD)).check()
    with pytest.raises(ArchiveError, match="refused the credentials"):
        DicomWebArchive("dicomweb+" + orthanc.dicomweb, DicomWebConfig(username=USER, password="wrong")).check()


def test_query_filters_select_studies(orthanc: Orthanc, proxy: Proxy):
    for seed, (day, modality) in enumerate([(date(2019, 1, 5), "CT"), (date(2019, 6, 5), "MR"),
                                            (date(2024, 1, 5), "CT")]):
        orthanc.upload(synthetic_study(day, 1, seed=seed, modality=modality)[0])

    def studies(query: StudyQuery) -> int:
        return len({e.path.split("/")[1] for e in DicomWebArchive("dicomweb+" + proxy.dicomweb, FAST,
                                                                  query).entries()})

    assert studies(StudyQuery()) == 3
    assert studies(StudyQuery(study_date=check_date_range("2019-01-01..2019-12-31"))) == 2
    assert studies(StudyQuery(modalities=("CT",))) == 2
    assert studies(StudyQuery(modalities=("CT", "MR"))) == 3
    assert studies(StudyQuery(study_date="20200101-", modalities=("MR",))) == 0
    assert studies(StudyQuery(attributes=(("PatientID", "SYN1"),))) == 1


def test_locations_are_checked():
    assert split_location("dicomweb+https://pacs.example.org/dicom-web/") == (
        "dicomweb+https://pacs.example.org/dicom-web", "https://pacs.example.org/dicom-web")
    for bad, says in [("dicomweb+ftp://x/y", "not a DICOMweb location"),
                      ("dicomweb+http://user:pw@pacs/dicom-web", "credentials do not belong in the URL"),
                      ("dicomweb+http://pacs/dicom-web?StudyDate=2020", "without a query")]:
        with pytest.raises(ArchiveError, match=says):
            split_location(bad)
    with pytest.raises(ArchiveError, match="cannot reach the PACS.*connection refused"):
        DicomWebArchive(f"dicomweb+http://127.0.0.1:{_closed_port()}/dicom-web", FAST).check()


def _closed_port() -> int:
    from tests.pacs import free_port

    return free_port()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "indexer.cli.main", "run", *args, "--no-progress", "--workers", "0"],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **(env or {})})


def test_nightly_cli_runs_with_since_last(orthanc: Orthanc, tiny_model_dir: Path, tmp_path: Path):
    """As cron runs it: credentials from the environment, --since last, exit codes."""
    env = {"MEDSEARCH_DICOMWEB_USERNAME": USER, "MEDSEARCH_DICOMWEB_PASSWORD": PASSWORD,
           "MEDSEARCH_DICOMWEB_RETRIES": "0", "MEDSEARCH_DB_DIR": str(tmp_path / "db"),
           "MEDSEARCH_MODEL": str(tiny_model_dir)}
    today = date.today()
    orthanc.upload(synthetic_study(today - timedelta(days=400), 2, seed=1)[0])
    first = cli("--dicomweb", orthanc.dicomweb, "--since", "last", env=env)
    assert first.returncode == 0, first.stderr
    assert "no complete run from this PACS yet" in first.stderr and "1 instances fetched" in first.stdout

    for data in synthetic_study(today, 2, seed=2):  # tonight's study
        orthanc.upload(data)
    orthanc.upload(synthetic_study(today - timedelta(days=30), 1, seed=3)[0])  # a late arrival, dated earlier
    nightly = cli("dicomweb+" + orthanc.dicomweb, "--since", "last", env=env)
    assert nightly.returncode == 0, nightly.stderr
    assert f"studies dated from {(today - timedelta(days=1)).isoformat()}" in nightly.stderr
    assert "1 studies matched" in nightly.stdout and "2 instances fetched" in nightly.stdout

    full = cli("dicomweb+" + orthanc.dicomweb, env=env)  # a weekly full listing catches the late arrival
    assert full.returncode == 0, full.stderr
    assert "3 studies matched" in full.stdout and "1 new or changed" in full.stdout
    assert "1 instances fetched" in full.stdout

    quiet = cli("dicomweb+" + orthanc.dicomweb, "--since", "last", env=env)
    assert quiet.returncode == 0 and "0 instances fetched" in quiet.stdout
    assert "the model was not loaded" in quiet.stderr and "RANDOM" not in quiet.stderr

    wrong = cli("dicomweb+" + orthanc.dicomweb, env={**env, "MEDSEARCH_DICOMWEB_PASSWORD": "nope"})
    assert wrong.returncode == 2 and "MEDSEARCH_DICOMWEB_USERNAME" in wrong.stderr
    assert "nope" not in wrong.stderr + wrong.stdout
    prune = cli("dicomweb+" + orthanc.dicomweb, "--since", "last", "--prune", env=env)
    assert prune.returncode == 2 and "--prune" in prune.stderr
    folder_with_since = cli(str(tmp_path), "--since", "last", env=env)
    assert folder_with_since.returncode == 2 and "DICOMweb source" in folder_with_since.stderr
    with open_index(tmp_path / "db", reports=report_analyzer()) as (store, repository):
        assert repository.count_sources() == 4 and store.verify() == []


def test_tls_is_verified_unless_told_otherwise(orthanc: Orthanc, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    orthanc.upload(synthetic_study(date(2023, 3, 3), 1)[0])
    cert, key = self_signed_certificate(tmp_path)
    gateway = Proxy(orthanc, tls=(cert, key))
    try:
        location = "dicomweb+" + gateway.dicomweb
        assert location.startswith("dicomweb+https://")
        with pytest.raises(ArchiveError, match="TLS certificate could not be verified.*MEDSEARCH_DICOMWEB_CA_BUNDLE"):
            DicomWebArchive(location, FAST).check()
        assert len(DicomWebArchive(location, DicomWebConfig(ca_bundle=str(cert))).entries()) == 1
        with caplog.at_level("WARNING"):
            assert len(DicomWebArchive(location, DicomWebConfig(verify_tls=False)).entries()) == 1
        assert "TLS certificate verification is OFF" in caplog.text
    finally:
        gateway.stop()


def test_a_pacs_that_stops_answering_stops_the_run_and_the_rerun_finishes(orthanc: Orthanc, proxy: Proxy,
                                                                          encoder: HFEncoder, tmp_path: Path):
    for seed in range(3):
        for data in synthetic_study(date(2022, 7, 7), instances=10, seed=seed):
            orthanc.upload(data)
    fetches = []

    def fail_after_five(path: str) -> None:
        if "/instances/" not in path:  # listings pass
            return
        fetches.append(path)
        if len(fetches) == 5:
            orthanc.stop()  # the PACS goes down mid-run; the proxy answers 502 from now on

    proxy.faults = Faults(hook=fail_after_five)
    config = DicomWebConfig(retries=1, backoff_s=0.01, fetch_threads=1)
    with open_index(tmp_path / "db", create=True, reports=report_analyzer()) as (store, repository):
        with pytest.raises(ArchiveError, match="stopped answering.*rerun to continue"):
            run_indexing(DicomWebArchive("dicomweb+" + proxy.dicomweb, config), store, repository, encoder,
                         batch_size=2)
        assert repository.list_runs()[-1].status == "failed"
        kept = repository.count_sources()
        assert 1 <= kept <= 5

        proxy.orthanc = Orthanc(orthanc.folder)  # back, same storage
        proxy.faults = Faults()
        proxy.requests.clear()
        try:
            again = run_indexing(DicomWebArchive("dicomweb+" + proxy.dicomweb, config), store, repository, encoder)
        finally:
            proxy.orthanc.stop()
        assert again.failed == 0 and len(proxy.fetched()) == 30 - kept
        assert repository.count_sources() == 30 and store.verify() == []


def test_query_options_are_checked():
    from indexer.errors import IndexerError
    from indexer.pipeline.pacs import build_query

    query = build_query("2024-01-01..2024-06-30", ("ct, mr",), ("StudyDescription=*CHEST*", "00080080=NORTH"))
    assert query.study_date == "20240101-20240630" and query.modalities == ("CT", "MR")
    assert query.attributes == (("StudyDescription", "*CHEST*"), ("00080080", "NORTH")) and not query.complete
    for bad, says in [(("x", (), ()), "--study-date"), ((None, (), ("NoSuchKey=1",)), "not a DICOM keyword"),
                      ((None, (), ("StudyDescription",)), "KEY=VALUE")]:
        with pytest.raises(IndexerError, match=says):
            build_query(*bad)


def test_instances_over_the_size_limit_are_refused_before_their_body_is_read(orthanc: Orthanc, proxy: Proxy):
    """MEDSEARCH_MAX_FILE_BYTES bounds a PACS download as it bounds a file: refused from the declared
    length, and fetched again by a run with a higher limit (nothing is settled)."""
    for data in synthetic_study(date(2024, 5, 5), 2, seed=41):
        orthanc.upload(data)
    small = DicomWebArchive("dicomweb+" + proxy.dicomweb, FAST, max_member_bytes=4096)
    entries = small.entries()
    assert len(entries) == 2
    for entry in entries:
        refused, error = small.fetch(entry)
        assert isinstance(error, OSError) and "MEDSEARCH_MAX_FILE_BYTES" in str(error), error
        assert refused.mtime is None  # not settled: a later run with a larger limit fetches it
        with pytest.raises(OSError, match="exceed the limit of 4096"):
            small.read(entry.path)
    assert small.stats.bytes_fetched == 0 and small.stats.instances_fetched == 0
    large = DicomWebArchive("dicomweb+" + proxy.dicomweb, FAST)
    assert all(isinstance(large.fetch(entry)[1], bytes) for entry in entries)


def test_a_chunked_answer_is_cut_off_at_the_limit():
    """A server that declares no length and sends without end: reading stops past the limit."""
    import http.server

    sent = []

    class Endless(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\0" * 65536
            try:
                for _ in range(4096):  # 256 MiB if nobody stopped reading
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent.append(len(chunk))
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        archive = DicomWebArchive(f"dicomweb+http://127.0.0.1:{server.server_address[1]}/dicom-web", FAST,
                                  max_member_bytes=1 << 20)
        with pytest.raises(OSError, match=r"or more exceed the limit of 1048576 \(setting MEDSEARCH_MAX_FILE_BYTES"):
            archive.read("studies/1.2/series/3.4/instances/5.6")
    finally:
        server.shutdown()
        server.server_close()
    assert sum(sent) < 64 << 20  # the reader hung up long before the server's 256 MiB
