"""A labelled index whose classes are separable in embedding space: synthetic vectors (a label adds its
own direction to noise) stored through the real Store under the tiny model's fingerprint, so the real
CLI and API train and use probes on it. Synthetic metadata only; no patient data."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from storage.opening import open_index
from storage.records import ImageRecord, Metadata, NewImage, SourceRecord

LABELS = ("effusion", "nodule")
ARCHIVE = "/synthetic-archive"


@dataclass
class ProbeCorpus:
    db: Path
    labels_csv: Path
    shuffled_csv: Path
    ids: list[int]
    labels: list[list[str]]
    patients: list[str]
    centres: dict[str, np.ndarray]
    dim: int

    def draw(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Fresh vectors from the same distribution (never stored): (vectors, images x labels truth)."""
        rng = np.random.default_rng(seed)
        truth = rng.random((n, len(LABELS))) < 0.4
        return unit(rng.normal(size=(n, self.dim)) + truth.astype(float) @ np.stack(
            [self.centres[label] for label in LABELS])), truth


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_labels(path: Path, rows: list[tuple[str, list[str]]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels"])
        writer.writerows([(name, ";".join(labels) or "normal") for name, labels in rows])
    return path


def build_probe_corpus(folder: Path, fingerprint: dict[str, object], dim: int, patients: int = 48,
                       per_patient: int = 2, seed: int = 0, strength: float = 5.0) -> ProbeCorpus:
    rng = np.random.default_rng(seed)
    centres = {label: strength * unit(rng.normal(size=(1, dim)))[0] for label in LABELS}
    new, names, labels, owners = [], [], [], []
    for p in range(patients):
        for i in range(per_patient):
            n = len(new)
            truth = [label for label in LABELS if rng.random() < 0.4]
            vector = unit(rng.normal(size=(1, dim)) + sum((centres[label] for label in truth), np.zeros(dim)))[0]
            patient = f"SYN-{p:03d}"
            meta = Metadata(patient_id=patient, study_uid=f"1.2.826.0.1.3680043.8.498.9{p}", modality="CR" if p % 2
                            else "DX", body_part="CHEST", study_date=date(2020, 1, 1) + timedelta(days=n),
                            labels=truth, report_text=f"Synthetic report {n}: {', '.join(truth) or 'no finding'}.")
            name = f"{patient}/image{i}.dcm"
            new.append(NewImage(ImageRecord(f"{n:064x}", "dicom", meta), vector, [SourceRecord(
                ARCHIVE, name, 0, f"{n:064x}", 100, 1.0, patient_id=patient, study_uid=meta.study_uid)]))
            names.append(name)
            labels.append(truth)
            owners.append(patient)
    db = folder / "db"
    with open_index(db, create=True) as (store, _):
        store.bind_model(fingerprint)
        ids = store.write(new) or []
    folder.mkdir(parents=True, exist_ok=True)
    labels_csv = write_labels(folder / "labels.csv", list(zip(names, labels, strict=True)))
    shuffled = [labels[i] for i in rng.permutation(len(labels))]
    shuffled_csv = write_labels(folder / "shuffled.csv", list(zip(names, shuffled, strict=True)))
    return ProbeCorpus(db, labels_csv, shuffled_csv, ids, labels, owners, centres, dim)
