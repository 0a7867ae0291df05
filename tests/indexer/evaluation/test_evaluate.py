"""`medsearch-index eval` on real DICOM files with the tiny model: leakage exclusion, the report and
its plots, and errors that say what is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from core.model.encoder import HFEncoder
from core.sources import open_source
from indexer.engines.runner import run_indexing
from indexer.evaluation.evaluate import evaluate
from indexer.labels import parse_labels
from storage.opening import open_index
from tests.conftest import dicom_file


def near_twins(root: Path, twin_patients: tuple[str, str]) -> Path:
    """T1, T2: one CT with a 1-level difference (patients as given, label 'twin'); U, V: other images."""
    root.mkdir()
    ct = pydicom.dcmread(dicom_file("CT_small.dcm"))
    for name, patient, delta in (("t1.dcm", twin_patients[0], 0), ("t2.dcm", twin_patients[1], 1)):
        ds = ct.copy()
        ds.PatientID = patient
        pixels = ct.pixel_array.copy()
        pixels[:4, :4] += 200 * delta  # a small patch: near-identical, yet distinct pixels
        ds.PixelData = pixels.tobytes()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.5{len(name)}{delta}"
        ds.save_as(root / name)
    for name, source, patient in (("u.dcm", "MR_small.dcm", "PU"), ("v.dcm", "SC_rgb_rle.dcm", "PV")):
        ds = pydicom.dcmread(dicom_file(source))
        ds.PatientID = patient
        ds.save_as(root / name)
    return root


LABELS = b"path,labels\nt1.dcm,twin\nt2.dcm,twin\nu.dcm,other\nv.dcm,third\nmissing.dcm,twin\n"


@pytest.mark.parametrize(("patients", "precision_at_1"), [(("P1", "P1"), 0.0), (("P1", "P2"), 0.5)])
def test_neighbours_of_the_same_patient_are_left_out(encoder: HFEncoder, tmp_path: Path, patients, precision_at_1):
    archive = near_twins(tmp_path / "archive", patients)
    with open_index(tmp_path / "db", create=True) as (store, repository):
        run_indexing(open_source(archive), store, repository, encoder)
        report = evaluate(store, repository, encoder, parse_labels(LABELS, "labels.csv"), bootstrap=50)
    assert report["images"] == 4 and report["unmatched_rows"] == 1
    # same patient: the twin is excluded, nothing relevant is left; different patients: the twin is found
    assert report["image_to_image"]["precision@1"] == pytest.approx(precision_at_1)
    assert report["labels"]["other"]["positives"] == 1 and report["labels"]["twin"]["positives"] == 2
    assert all(0 <= v["zero_shot_auc"] <= 1 for v in report["labels"].values())
    assert report["index"]["kind"] == "flat" and report["index"]["recall@4_vs_exact"] == 1.0  # exact = exact
    matrix = np.asarray(report["confusion_matrix"]["rows_true_columns_predicted"])
    assert matrix.sum() == 4


def test_labels_errors_name_the_file(encoder: HFEncoder, tmp_path: Path):
    from indexer.errors import IndexerError

    with pytest.raises(IndexerError, match="l.csv.*'labels' column"):
        parse_labels(b"path,finding\na.dcm,x\n", "l.csv")
    with pytest.raises(IndexerError, match="l.csv line 2"):
        parse_labels(b"path,labels\na.dcm,\n", "l.csv")


def test_eval_command_writes_the_report(archive_dir: Path, tiny_model_dir: Path, tmp_path: Path):
    db, out = tmp_path / "db", tmp_path / "report"
    run = [sys.executable, "-m", "indexer.cli.main"]
    assert subprocess.run([*run, "run", str(archive_dir), "--db", str(db), "--model", str(tiny_model_dir)],
                          capture_output=True, check=False, timeout=300).returncode == 0
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("CT: [a ct scan, a computed tomography image]\nMR: an mri\n")
    done = subprocess.run([*run, "eval", "--db", str(db), "--labels-from-metadata", "--prompts", str(prompts),
                           "--out", str(out), "--bootstrap", "100", "--maps", "12"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "RANDOM" in done.stderr and "image->image: mAP" in done.stdout
    report = json.loads((out / "report.json").read_text())
    maps = report["relevance_maps"]  # the maps' faithfulness on the labelled images, against random masking
    assert maps["pairs"] == 12 and maps["grid"] == [4, 4] and maps["left_out"] == 0
    assert {"deletion", "random_deletion", "insertion", "random_insertion", "beats_random"} <= set(maps)
    assert "relevance maps on 12 images" in done.stdout
    assert "Relevance maps (12 images" in (out / "report.md").read_text()
    assert report["labels"]["CT"]["prompts"] == ["a ct scan", "a computed tomography image"]
    for name in ("report.md", "roc.png", "precision_at_k.png", "confusion_matrix.png", "labels.csv"):
        assert (out / name).stat().st_size > 100
    missing = subprocess.run([*run, "eval", "--db", str(db), "--labels-from-metadata", "--out", str(out),
                              "--model", str(tmp_path / "no-model")], capture_output=True, text=True, timeout=300,
                             check=False)
    assert missing.returncode == 2 and "not available on this machine" in missing.stderr
