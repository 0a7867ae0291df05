"""Faults give one clear line: a disk that fills up during a run (a real, small tmpfs), the commands a
person then reaches for, a FAISS file copied from another database, and CSV cells that would run as
spreadsheet formulas."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.csvsafe import csv_text, safe_cell
from indexer.sample import pydicom_test_files
from storage.access import AccessStore
from storage.opening import open_index
from tests.indexer.cli.test_cli import run_cli
from tests.storage.test_store import fingerprint, records, unit_vectors


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 400 KiB filesystem of its own (tmpfs), which a run fills up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_what_was_committed(small_disk: Path, tiny_model_dir: Path,
                                                                             tmp_path: Path):
    archive = tmp_path / "archive"
    archive.mkdir()
    for path in sorted(pydicom_test_files().glob("*.dcm"))[:60]:
        shutil.copy2(path, archive / path.name)
    db = small_disk / "db"
    full = run_cli("run", str(archive), "--db", str(db), "--model", str(tiny_model_dir), "--workers", "0",
                   "--no-progress", "--log-level", "ERROR")
    assert full.returncode == 2
    assert "disk" in one_error_line(full.stderr) and "full" in one_error_line(full.stderr)
    runs = run_cli("runs", "--db", str(db))  # read-only commands work on the full disk
    assert runs.returncode == 0 and "stopped" in runs.stdout, runs.stderr
    verify = run_cli("verify", "--db", str(db))
    assert verify.returncode == 0 and "consistent" in verify.stdout, verify.stdout + verify.stderr
    committed = int(verify.stdout.split(" images")[0].split()[-1])
    assert committed > 0
    keys = subprocess.run([sys.executable, "-m", "search_api.cli", "keys", "create", "--db", str(db), "--role",
                           "admin", "--name", "x"], capture_output=True, text=True, timeout=120, check=False)
    assert keys.returncode == 2 and "full" in one_error_line(keys.stderr)

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    done = run_cli("run", str(archive), "--db", str(db), "--model", str(tiny_model_dir), "--workers", "0",
                   "--no-progress", "--log-level", "ERROR")
    assert done.returncode == 0, done.stderr
    verify = run_cli("verify", "--db", str(db))
    assert verify.returncode == 0 and int(verify.stdout.split(" images")[0].split()[-1]) > committed


def test_a_faiss_file_from_another_database_is_not_served(tmp_path: Path):
    for name, seed in (("a", 1), ("b", 2)):
        with open_index(tmp_path / name, create=True) as (store, _):
            store.bind_model(fingerprint())
            store.write(records(5, vectors=unit_vectors(5, seed)))  # the same ids 1..5 in both
    shutil.copy2(tmp_path / "a" / "index.faiss", tmp_path / "b" / "index.faiss")
    with open_index(tmp_path / "b", read_only=True) as (store, repository):
        ids, vectors = repository.get_embeddings(repository.embedding_ids().tolist(), 8)
        for image_id, vector in zip(ids, vectors, strict=True):  # b's own vectors, not a's
            assert np.allclose(store._index.reconstruct(int(image_id)), vector)
        assert store.verify() == []


def test_csv_exports_neutralise_formula_cells(tmp_path: Path):
    assert [safe_cell(v) for v in ("=1+1", "+SUM(A1)", "-2+3", "@cmd", "\tx", "-3.5", "12", "plain", 7)] == [
        "'=1+1", "'+SUM(A1)", "'-2+3", "'@cmd", "'\tx", "-3.5", "12", "plain", 7]
    rows = list(csv.reader(io.StringIO(csv_text(["path", "labels"], [["=HYPERLINK(\"x\")", "a;b"]]))))
    assert rows[1][0] == "'=HYPERLINK(\"x\")"
    store = AccessStore.open(tmp_path)
    store.record("=1+1", "-", "authenticate", None, [], 401, "@evil")
    exported = subprocess.run([sys.executable, "-m", "search_api.cli", "audit", "--db", str(tmp_path), "--format",
                               "csv"], capture_output=True, text=True, timeout=120, check=False)
    assert exported.returncode == 0
    record = list(csv.DictReader(io.StringIO(exported.stdout)))[-1]
    assert record["key_id"] == "'=1+1" and record["client"] == "'@evil"
