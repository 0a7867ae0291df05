"""`eval`'s probe sections: zero-shot against a probe on the same held-out patients (a separable set:
the probe wins by a clear, bootstrap-bounded margin over a random model's zero-shot), the learning
curve, and the CT renderings compared on real CT files decoded again (the indexed rendering gives
back the stored vectors; ct-channels gives others)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from core.model.encoder import HFEncoder
from core.settings import Settings
from core.sources import open_source
from indexer.engines.runner import run_indexing
from indexer.evaluation.evaluate import evaluate, write_report
from indexer.evaluation.probes import rerendered
from indexer.labels import parse_labels
from indexer.probes.train import training_set
from storage.opening import open_index
from tests.conftest import dicom_file
from tests.probe_corpus import build_probe_corpus


def test_probe_against_zero_shot_on_the_same_held_out_patients(encoder: HFEncoder, tmp_path: Path):
    corpus = build_probe_corpus(tmp_path / "corpus", encoder.fingerprint.to_dict(), encoder.dim)
    rows = parse_labels(corpus.labels_csv.read_bytes(), "labels.csv")
    with open_index(corpus.db, read_only=True) as (store, repository):
        report = evaluate(store, repository, encoder, rows, bootstrap=200)
    compared = report["probe_vs_zero_shot"]
    for label in ("effusion", "nodule"):
        row = compared["labels"][label]
        assert row["probe_auc"] > 0.95 and row["probe_95ci"][0] > 0.85
        assert row["zero_shot_95ci"][0] <= row["zero_shot_auc"] <= row["zero_shot_95ci"][1]
        assert row["difference_95ci"][0] > 0  # the probe is better, and the interval says so
        assert row["zero_shot_auc"] == pytest.approx(report["labels"][label]["zero_shot_auc"])  # the same images
        curve = row["learning_curve"]
        sizes = [p["per_label"] for p in curve]
        assert sizes[:4] == [1, 2, 4, 8] and sizes == sorted(set(sizes))
        assert sizes[-1] > min(row["positives"], row["negatives"]) * 0.6  # "all": what training folds hold
        assert curve[-1]["probe_auc"] > 0.95 and curve[-1]["probe_auc"] >= curve[0]["probe_auc"]
    files = write_report(report, tmp_path / "report")
    assert tmp_path / "report" / "learning_curve.png" in files
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Zero-shot against a probe, same held-out patients" in text and "| effusion |" in text


def ct_archive(root: Path, patients: int = 6) -> tuple[Path, bytes]:
    """One CT slice per patient from pydicom's CT_small (shifted, so each is distinct); labels alternate."""
    root.mkdir()
    ct = pydicom.dcmread(dicom_file("CT_small.dcm"))
    rows = ["path,labels"]
    for p in range(patients):
        ds = ct.copy()
        ds.PatientID = f"CTP{p}"
        ds.PixelData = np.roll(ct.pixel_array, 9 * p, axis=0).astype(ct.pixel_array.dtype).tobytes()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77{p}"
        ds.save_as(root / f"ct{p}.dcm")
        rows.append(f"ct{p}.dcm,{'dense' if p % 2 else 'clear'}")
    return root, ("\n".join(rows) + "\n").encode()


def test_ct_renderings_are_compared_on_the_files_decoded_again(encoder: HFEncoder, tiny_model_dir: Path,
                                                                tmp_path: Path):
    archive, labels = ct_archive(tmp_path / "archive")
    db = tmp_path / "db"
    with open_index(db, create=True) as (store, repository):
        run_indexing(open_source(archive), store, repository, encoder)
    with open_index(db, read_only=True) as (store, repository):
        data = training_set(store, repository, encoder, parse_labels(labels, "labels.csv"))
        options = Settings().render_options()
        positions, same = rerendered(repository, data, encoder, options, "auto")
        assert len(positions) == 6
        assert np.allclose(np.sum(same * data.vectors[positions], axis=1), 1.0, atol=1e-5)  # as indexed
        _, channels = rerendered(repository, data, encoder, options, "ct-channels")
        assert np.all(np.sum(channels * data.vectors[positions], axis=1) < 0.9999)  # rendered otherwise
    (tmp_path / "labels.csv").write_bytes(labels)
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "indexer.cli.main", "eval", "--db", str(db), "--labels",
                           str(tmp_path / "labels.csv"), "--out", str(out), "--bootstrap", "50", "--model",
                           str(tiny_model_dir), "--compare-window", "ct-channels"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["ct_windows"]["ct_images"] == 6 and set(report["ct_windows"]["windows"]) == {"auto", "ct-channels"}
    assert "CT rendered ct-channels" in done.stdout and "CT renderings compared" in (out / "report.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "indexer.cli.main", "eval", "--db", str(db), "--labels",
                          str(tmp_path / "labels.csv"), "--out", str(out), "--compare-window", "sideways"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and "window" in bad.stderr
