"""Probes trained by the real `medsearch-index train-probe` on a labelled index: separable classes are
learnt (checked on fresh vectors never stored) and shuffled labels are not; folds grouped by patient
give the honest figure where per-image folds would leak; calibration is checked on held-out folds;
the stored probe is tied to its model; list, show, remove, and errors that name the problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from core.model.encoder import HFEncoder
from core.model.random_model import build_random_siglip
from indexer.cli.main import main
from indexer.metrics import roc_auc
from indexer.probes.fit import group_keys, train_label
from storage.opening import open_index
from storage.records import ImageRecord, Metadata, NewImage, SourceRecord
from storage.sql.probes import ProbeModelError
from tests.probe_corpus import LABELS, ProbeCorpus, build_probe_corpus, unit, write_labels


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, encoder: HFEncoder) -> ProbeCorpus:
    return build_probe_corpus(tmp_path_factory.mktemp("probes"), encoder.fingerprint.to_dict(), encoder.dim)


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def train(corpus: ProbeCorpus, model: Path, name: str, labels: Path, *extra: str) -> tuple[int, str]:
    return cli("train-probe", "--db", str(corpus.db), "--labels", str(labels), "--name", name, "--model",
               str(model), "--bootstrap", "100", *extra)


def test_separable_labels_are_learnt_and_shuffled_ones_are_not(corpus, tiny_model_dir):
    code, out = train(corpus, tiny_model_dir, "site-chest", corpus.labels_csv)
    assert code == 0, out
    assert "RANDOM weights" in out and "stored as probe 'site-chest'" in out
    with open_index(corpus.db, read_only=True) as (_, repository):
        probe = repository.get_probe("site-chest")
    assert probe is not None and probe.labels == sorted([*LABELS, "normal"])
    for label in LABELS:
        m = probe.metrics["labels"][label]
        assert m["auc"] > 0.97 and m["accuracy"] > 0.9, (label, m)
        assert m["ece"] < 0.1 and m["ece"] < m["ece_uncalibrated"], m  # calibrated on held-out folds
    vectors, truth = corpus.draw(400, seed=7)  # never stored, never seen
    probabilities = probe.probabilities(vectors)
    for j, label in enumerate(LABELS):
        column = probabilities[:, probe.labels.index(label)]
        assert roc_auc(column, truth[:, j]) > 0.97
        assert np.mean((column >= 0.5) == truth[:, j]) > 0.9
        assert abs(column.mean() - truth[:, j].mean()) < 0.08  # calibrated: mean probability ~ prevalence

    code, out = train(corpus, tiny_model_dir, "shuffled", corpus.shuffled_csv)
    assert code == 0, out
    with open_index(corpus.db, read_only=True) as (_, repository):
        shuffled = repository.get_probe("shuffled")
    assert shuffled is not None
    for label in LABELS:
        assert 0.3 < shuffled.metrics["labels"][label]["auc"] < 0.7, shuffled.metrics["labels"][label]
        column = shuffled.probabilities(vectors)[:, shuffled.labels.index(label)]
        assert 0.3 < roc_auc(column, truth[:, LABELS.index(label)]) < 0.7


def test_folds_grouped_by_patient_where_per_image_folds_would_leak(tmp_path, encoder, tiny_model_dir):
    """Each patient's images are near-duplicates and each patient's label is random: nothing about the
    label generalises to a new patient. Per-image folds put a patient's twin in training (AUC ~1);
    grouped folds, which train-probe uses, give chance."""
    rng = np.random.default_rng(3)
    patients, per = 40, 5
    base = rng.normal(size=(patients, encoder.dim))
    vectors = np.repeat(base, per, axis=0) + 0.05 * rng.normal(size=(patients * per, encoder.dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    y = np.repeat(rng.random(patients) < 0.5, per)
    ids = np.arange(len(y))
    by_patient = group_keys([f"P{i // per}" for i in ids], ids)
    by_image = group_keys([None] * len(ids), ids)
    grouped = train_label(vectors, y, by_patient, None, 0, "leaky", bootstrap=0).metrics["auc"]
    leaked = train_label(vectors, y, by_image, None, 0, "leaky", bootstrap=0).metrics["auc"]
    assert leaked > 0.95 and grouped < 0.75, (leaked, grouped)

    # the same set through the CLI: its figure is the grouped one
    db = tmp_path / "db"
    with open_index(db, create=True) as (store, _):
        store.bind_model(encoder.fingerprint.to_dict())
        store.write([NewImage(ImageRecord(f"{i:064x}", "png", Metadata(patient_id=f"P{i // per}")), unit(
            vectors[i:i + 1])[0], [SourceRecord("/a", f"{i}.png", 0, f"{i:064x}", 1, 1.0, patient_id=f"P{i // per}")])
            for i in ids])
    labels = write_labels(tmp_path / "labels.csv", [(f"{i}.png", ["leaky"] if y[i] else ["other"]) for i in ids])
    code, out = cli("train-probe", "--db", str(db), "--labels", str(labels), "--name", "leaky", "--model",
                    str(tiny_model_dir), "--bootstrap", "0", "--no-prior")
    assert code == 0, out
    with open_index(db, read_only=True) as (_, repository):
        probe = repository.get_probe("leaky")
    assert probe is not None and probe.metrics["labels"]["leaky"]["auc"] < 0.75


def test_list_show_replace_remove_and_model_binding(corpus, tiny_model_dir):
    code, out = train(corpus, tiny_model_dir, "managed", corpus.labels_csv, "--bootstrap", "0")
    assert code == 0, out
    code, out = train(corpus, tiny_model_dir, "managed", corpus.labels_csv)
    assert code == 2 and "exists already" in out and "--replace" in out
    assert train(corpus, tiny_model_dir, "managed", corpus.labels_csv, "--replace", "--bootstrap", "0")[0] == 0
    code, out = cli("probes", "list", "--db", str(corpus.db))
    assert code == 0 and "managed" in out and "effusion, nodule, normal" in out
    code, out = cli("probes", "show", "managed", "--db", str(corpus.db), "--json")
    shown = json.loads(out)
    assert shown["labels"] == ["effusion", "nodule", "normal"] and shown["details"]["patients"] == 48
    assert len(shown["training_fingerprint"]) == 64 and "weights" not in shown
    with open_index(corpus.db, read_only=True) as (store, repository):
        probe = repository.get_probe("managed")
        assert probe is not None and store.manifest is not None
        probe.require_model(store.manifest.fingerprint_key)
        with pytest.raises(ProbeModelError, match="another model"):
            probe.require_model("0" * 64)
    assert cli("probes", "remove", "managed", "--db", str(corpus.db)) == (0, "removed probe 'managed'\n")
    code, out = cli("probes", "remove", "managed", "--db", str(corpus.db))
    assert code == 2 and "no probe named 'managed'" in out


def test_errors_name_the_problem(corpus, tmp_path, tiny_model_dir):
    few = write_labels(tmp_path / "few.csv", [(f"SYN-00{p}/image0.dcm", ["rare"] if p == 0 else ["common"])
                                              for p in range(6)])
    code, out = train(corpus, tiny_model_dir, "few", few)
    assert code == 2 and "label 'rare'" in out and "label 'common'" in out and "at least 2 patients" in out, out
    no_column = tmp_path / "no-column.csv"
    no_column.write_text("file,labels\na.dcm,x\n")
    code, out = train(corpus, tiny_model_dir, "columns", no_column)
    assert code == 2 and out.startswith("error: ") and "no-column.csv" in out and "'path' or 'sop_uid'" in out
    code, out = train(corpus, tiny_model_dir, "bad name!", corpus.labels_csv)
    assert code == 2 and "--name" in out
    other = build_random_siglip(tmp_path / "other-model", shape="tiny", seed=5)
    code, out = train(corpus, other, "other", corpus.labels_csv)
    assert code == 2 and "not the one this index was built with" in out
