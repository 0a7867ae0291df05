"""SIGKILL a real indexing process at 20 points spread over a run, rerun, and compare the final state
with a clean run's: nothing lost, nothing twice, FAISS, rows and embeddings consistent, and the
report documents and their full-text index the same."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

from storage.opening import open_index
from tests.conftest import dicom_file

FILES = 90
KILLS = 20


def make_archive(root: Path) -> Path:
    """Distinct DICOM images, some exact duplicates and a few broken files."""
    root.mkdir()
    template = pydicom.dcmread(dicom_file("CT_small.dcm"))
    pixels = template.pixel_array
    rng = np.random.default_rng(3)
    for i in range(FILES):
        ds = template.copy()
        noise = rng.integers(0, 50, pixels.shape, dtype=np.int16)
        ds.PixelData = (pixels + noise).astype(pixels.dtype).tobytes()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{i + 1}"
        ds.PatientID = f"P{i % 7}"
        ds.save_as(root / f"img{i:03d}.dcm")
    for i in range(0, FILES, 15):
        shutil.copy2(root / f"img{i:03d}.dcm", root / f"copy{i:03d}.dcm")
    (root / "manifest.csv").write_text("path,report\n" + "".join(  # reports: their documents are written too
        f"img{i:03d}.dcm,{'No' if i % 3 else 'Small right'} pleural effusion. Marker w{i}x.\n" for i in range(FILES)))
    (root / "truncated.dcm").write_bytes((root / "img001.dcm").read_bytes()[:5000])
    (root / "notes.txt").write_text("not an image")
    return root


def index_command(archive: Path | str, db: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "indexer.cli.main", "run", str(archive), "--db", str(db), "--model", str(model),
            "--batch-size", "1", "--workers", "0", "--checkpoint-seconds", "0", "--no-progress",
            "--log-level", "ERROR"]


def sources_written(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db / 'medsearch.sqlite'}?mode=ro", uri=True, timeout=1) as con:
            return int(con.execute("SELECT count(*) FROM sources").fetchone()[0])
    except sqlite3.Error:
        return 0


def state(db: Path) -> tuple[set, dict]:
    """(sources as (path, frame, file sha, pixel sha), pixel sha -> vector) after checking consistency."""
    with open_index(db) as (store, repository):
        assert store.verify() == []
        repo = repository
        rows = repo.get_images(repo.image_ids().tolist())
        ids, vectors = repo.get_embeddings(list(rows), store.dim or 0)
        assert store.ntotal == len(rows) == len(ids)
        sources = {(s.path, s.frame_index, s.file_sha256, row.pixel_sha256)
                   for row in rows.values() for s in row.sources}
        assert len(sources) == repo.count_sources()
        by_pixels = {rows[int(i)].pixel_sha256: v for i, v in zip(ids, vectors, strict=True)}
        assert len(by_pixels) == len(rows)  # no image twice
    with sqlite3.connect(db / "medsearch.sqlite") as con:  # documents, and what the full-text index finds
        documents = {(rows[i].pixel_sha256, body, concepts) for i, body, concepts in con.execute(
            "SELECT image_id, body, concepts FROM report_documents")}
        found = {rows[i].pixel_sha256 for (i,) in con.execute(
            "SELECT rowid FROM report_fts WHERE report_fts MATCH 'concepts:f9ppleuraleffusion'")}
        postings = {(rows[i].pixel_sha256, token, tf, dl) for i, token, tf, dl in con.execute(
            "SELECT p.image_id, t.token, p.tf, p.dl FROM report_postings p JOIN report_terms t ON t.id = p.term_id")}
        counts = {token: n for token, n in con.execute("SELECT token, documents FROM report_terms WHERE documents > 0")}
    assert len(documents) == len(rows)
    sources |= {("document", body, concepts, pixels) for pixels, body, concepts in documents}
    sources |= {("asserted", pixels) for pixels in found}
    sources |= {("posting", *posting) for posting in postings} | {("count", *c) for c in counts.items()}
    return sources, by_pixels


def assert_same_state(clean_db: Path, killed_db: Path) -> None:
    """Same sources (path, frame, file and pixel hashes), same images, same vectors."""
    clean_sources, clean_vectors = state(clean_db)
    killed_sources, killed_vectors = state(killed_db)
    assert killed_sources == clean_sources
    assert clean_vectors.keys() == killed_vectors.keys()
    for pixels, vector in clean_vectors.items():
        assert np.allclose(vector, killed_vectors[pixels], atol=1e-5)


def kill_at(command: list[str], db: Path, target: int, env: dict[str, str] | None = None) -> int | None:
    """Start `command`, SIGKILL it once `db` holds `target` sources; the count then, or None if it ended."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while process.poll() is None and sources_written(db) < target:
        time.sleep(0.002)
    killed = None
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        killed = sources_written(db)
    process.wait()
    return killed


@pytest.mark.timeout(900)
def test_kill_nine_at_twenty_points_then_rerun_equals_a_clean_run(tiny_model_dir: Path, tmp_path: Path):
    archive = make_archive(tmp_path / "archive")
    clean_db, killed_db = tmp_path / "clean", tmp_path / "killed"
    clean = subprocess.run(index_command(archive, clean_db, tiny_model_dir), capture_output=True, text=True,
                           timeout=300, check=False)
    assert clean.returncode == 0, clean.stderr
    total = sources_written(clean_db)
    assert total == FILES + len(range(0, FILES, 15))
    assert len([s for s in state(clean_db)[0] if s[0] == "asserted"]) == len(
        [i for i in range(0, FILES, 3) if i % 15])  # "Small right...", less the copies found first (no report)

    kill_points = [max(1, round(total * (i + 1) / (KILLS + 1))) for i in range(KILLS)]
    killed_at = []
    for target in kill_points:
        target = max(target, sources_written(killed_db) + 1)
        killed = kill_at(index_command(archive, killed_db, tiny_model_dir), killed_db, target)
        if killed is not None:
            killed_at.append(killed)
    assert len(killed_at) >= KILLS - 2, f"only {len(killed_at)} kills landed mid-run: {killed_at}"
    assert min(killed_at) < total / 4 and max(killed_at) > total * 3 / 4  # spread over the whole run

    final = subprocess.run(index_command(archive, killed_db, tiny_model_dir), capture_output=True, text=True,
                           timeout=300, check=False)
    assert final.returncode == 0, final.stderr
    assert_same_state(clean_db, killed_db)
    with open_index(killed_db) as (_store, repository):
        runs = repository.list_runs()
    statuses = [run.status for run in runs]
    assert statuses.count("killed") == len(killed_at) and statuses[-1] == "completed"
    assert sum(run.indexed for run in runs if run.status == "killed") > 0  # a killed run shows what it committed


@pytest.mark.timeout(600)
def test_kill_nine_during_a_pacs_run_then_rerun_equals_a_clean_run(orthanc, tiny_model_dir: Path, tmp_path: Path):
    """The same guarantee when the archive is a PACS (a real Orthanc): fetched, written, killed, rerun."""
    from tests.pacs import PASSWORD, USER

    for path in sorted(make_archive(tmp_path / "files").iterdir()):
        with contextlib.suppress(requests.HTTPError):  # Orthanc refuses the truncated and the text file
            orthanc.upload(path)
    env = {**os.environ, "MEDSEARCH_DICOMWEB_USERNAME": USER, "MEDSEARCH_DICOMWEB_PASSWORD": PASSWORD,
           "MEDSEARCH_DICOMWEB_FETCH_THREADS": "1"}
    source = "dicomweb+" + orthanc.dicomweb
    clean_db, killed_db = tmp_path / "clean", tmp_path / "killed"
    clean = subprocess.run(index_command(source, clean_db, tiny_model_dir), capture_output=True, text=True,
                           timeout=300, check=False, env=env)
    assert clean.returncode == 0, clean.stderr
    total = sources_written(clean_db)
    assert total == FILES  # one instance per SOP Instance UID in a PACS: the copies were not stored twice

    killed_at = []
    for i in range(6):
        target = max(round(total * (i + 1) / 7), sources_written(killed_db) + 1)
        killed = kill_at(index_command(source, killed_db, tiny_model_dir), killed_db, target, env)
        if killed is not None:
            killed_at.append(killed)
    assert len(killed_at) >= 4, f"only {len(killed_at)} kills landed mid-run: {killed_at}"
    final = subprocess.run(index_command(source, killed_db, tiny_model_dir), capture_output=True, text=True,
                           timeout=300, check=False, env=env)
    assert final.returncode == 0, final.stderr
    assert_same_state(clean_db, killed_db)
