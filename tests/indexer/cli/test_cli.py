"""`medsearch-index` as a user runs it: a real subprocess over a real zip archive."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from storage.opening import open_index


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "indexer.cli.main", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_run_zip_summary_and_exit_codes(archive_dir: Path, tiny_model_dir: Path, tmp_path: Path):
    zipped = shutil.make_archive(str(tmp_path / "archive"), "zip", archive_dir)
    db = tmp_path / "db"
    done = run_cli("run", zipped, "--db", str(db), "--model", str(tiny_model_dir), "--batch-size", "8",
                   "--device", "cpu", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "RANDOM weights" in done.stderr
    assert "indexed" in done.stdout and "failed" in done.stdout and "images/s" in done.stdout
    assert "MR_truncated.dcm" in done.stdout  # a failure is listed with its path
    with open_index(db) as (store, repository):
        assert repository.count_sources() > 20
        assert 10 < store.ntotal < repository.count_sources()  # MR_small in 8 encodings: one image
    runs = run_cli("runs", "--db", str(db))
    assert runs.returncode == 0 and "completed" in runs.stdout

    # nothing indexable -> 1; missing archive, model or db -> 2
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("hello")
    nothing = run_cli("run", str(tmp_path / "texts"), "--db", str(tmp_path / "db2"), "--model",
                      str(tiny_model_dir), "--no-progress")
    assert nothing.returncode == 1 and "nothing" in nothing.stderr
    missing = run_cli("run", str(tmp_path / "nope"), "--db", str(db), "--model", str(tiny_model_dir))
    assert missing.returncode == 2 and "nope" in missing.stderr
    bad_model = run_cli("run", zipped, "--db", str(db), "--model", str(tmp_path / "no-model"),
                        "--local-files-only")
    assert bad_model.returncode == 2 and "no-model" in bad_model.stderr


def test_help_explains(tmp_path: Path):
    done = run_cli("run", "--help")
    assert done.returncode == 0
    for word in ("ARCHIVE", "--db", "--model", "--batch-size", "--device", "manifest.csv", "Exit status"):
        assert word in done.stdout


def test_bad_options_name_the_setting(archive_dir: Path, tiny_model_dir: Path, tmp_path: Path):
    done = run_cli("run", str(archive_dir), "--db", str(tmp_path / "db"), "--window", "wide")
    assert done.returncode == 2 and "--window" in done.stderr and "CENTER/WIDTH" in done.stderr
    done = run_cli("run", str(archive_dir), "--db", str(tmp_path / "db"), "--frames", "some")
    assert done.returncode == 2 and "--frames" in done.stderr
    done = run_cli("run", str(archive_dir), "--db", str(tmp_path / "db"), "--deidentify")
    assert done.returncode == 2 and "MEDSEARCH_DEID_SECRET" in done.stderr


def test_contact_sheet(archive_dir: Path, tmp_path: Path):
    from PIL import Image

    done = run_cli("contact-sheet", str(archive_dir), str(tmp_path / "sheet.png"), "--window", "percentile")
    assert done.returncode == 0, done.stderr
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.width == 8 * 160 and sheet.height >= 3 * 160


def test_another_model_needs_a_new_generation(archive_dir: Path, tiny_model_dir: Path, tmp_path: Path):
    from core.model.random_model import build_random_siglip

    small = tmp_path / "small"
    small.mkdir()
    shutil.copy2(archive_dir / "dicom" / "CT_small.dcm", small / "ct.dcm")
    db = tmp_path / "db"
    assert run_cli("run", str(small), "--db", str(db), "--model", str(tiny_model_dir)).returncode == 0
    other = build_random_siglip(tmp_path / "other", seed=7)
    refused = run_cli("run", str(small), "--db", str(db), "--model", str(other))
    assert refused.returncode == 2 and "--new-generation" in refused.stderr
    done = run_cli("run", str(small), "--db", str(db), "--model", str(other), "--new-generation")
    assert done.returncode == 0, done.stderr
    assert (db / "CURRENT").read_text() == "generations/1" and not (db / "PENDING").exists()
    with open_index(db) as (store, _repository):
        assert store.manifest is not None and store.manifest.model_name == str(other)
    verify = run_cli("verify", "--db", str(db))
    assert verify.returncode == 0 and "consistent" in verify.stdout
    built = run_cli("build-index", "--db", str(db), "--index", "hnsw")
    assert built.returncode == 0 and "image queries: held-out recall@10" in built.stdout
    assert "text queries: held-out recall@10" in built.stdout  # the phrases, encoded by the index's model


def test_an_unchanged_rerun_does_not_load_the_model_and_a_missing_model_is_one_line(archive_dir: Path,
                                                                                  tiny_model_dir: Path,
                                                                                  tmp_path: Path):
    db = tmp_path / "db"
    assert run_cli("run", str(archive_dir), "--db", str(db), "--model", str(tiny_model_dir)).returncode == 0
    again = run_cli("run", str(archive_dir), "--db", str(db))  # no --model: the index's own
    assert again.returncode == 0 and "the model was not loaded" in again.stderr and "RANDOM" not in again.stderr
    listed = run_cli("runs", "--db", str(db))
    assert "unchanged" in listed.stdout.splitlines()[-1] and listed.stdout.splitlines()[-1].split()[7] != "0"
    missing_run = run_cli("runs", "--db", str(db), "--run", "99")
    assert missing_run.returncode == 2 and "no run 99 in this index (runs 1 to 2" in missing_run.stderr
    missing = run_cli("run", str(archive_dir), "--db", str(tmp_path / "other"), "--model", str(tmp_path / "nowhere"),
                      "--workers", "2")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert [line for line in missing.stderr.splitlines() if line.startswith("error:")] == [
        missing.stderr.strip().splitlines()[-1]]
    assert "nowhere" in missing.stderr.splitlines()[-1]
