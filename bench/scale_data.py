"""A synthetic archive for bench/scale.py, written through the store's own write path (Store.write, one
transaction per batch: rows, sources, embeddings, report documents and their postings, then FAISS).

Patients have 1-4 studies of 1-3 series of 1-6 images; a study has one modality (CR, DX, CT, MR, US in
a hospital's proportions) and a body part that fits it, a date between 2005 and 2026, and one report
(9-14 sentences drawn from bench/report_bench.py's templates over the shipped vocabulary, analysed by
the real analyzer, whose sentence cache makes repeated sentences cheap as formulaic reports are). About
30% of images carry a site label. Vectors: bench/search_data.py's clustered mixture. Every image has a
real (empty) file under `archive/`, recorded with its size and time, so that a rerun over the folder
finds it unchanged.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report_bench import report, sentences
from bench.search_data import Mixture
from core.reports import ReportAnalyzer
from storage.opening import open_index
from storage.records import ImageRecord, Metadata, NewImage, SourceRecord

MODALITIES = {"CR": (0.35, ["CHEST", "KNEE", "HAND", "SPINE"]), "DX": (0.2, ["CHEST", "PELVIS", "FOOT"]),
              "CT": (0.25, ["CHEST", "ABDOMEN", "HEAD", "PELVIS"]), "MR": (0.15, ["HEAD", "KNEE", "SPINE"]),
              "US": (0.05, ["ABDOMEN", "NECK"])}
LABELS = ["effusion", "pneumothorax", "nodule", "fracture", "normal"]
MANUFACTURERS = ["SIEMENS", "GE MEDICAL SYSTEMS", "Philips", "Canon"]


@dataclass(frozen=True)
class Image:
    metadata: Metadata
    path: str


def images(count: int, pool: list[str], seed: int) -> Iterator[Image]:
    """`count` images of synthetic patients, studies and series, in archive order."""
    rng = random.Random(seed)
    names, weights = list(MODALITIES), [MODALITIES[m][0] for m in MODALITIES]
    made, patient = 0, 0
    while made < count:
        patient += 1
        sex, born = rng.choice("MF"), 1930 + rng.randrange(85)
        for study in range(rng.randint(1, 4)):
            modality = rng.choices(names, weights)[0]
            body_part = rng.choice(MODALITIES[modality][1])
            day = dt.date(2005, 1, 1) + dt.timedelta(days=rng.randrange(22 * 365))
            text = " ".join(pool[j] for j in report(pool, rng))
            study_uid = f"1.2.826.0.1.3680043.10.{patient}.{study}"
            for series in range(rng.randint(1, 3)):
                for instance in range(rng.randint(1, 6)):
                    if made == count:
                        return
                    made += 1
                    labels = [rng.choice(LABELS)] if rng.random() < 0.3 else []
                    yield Image(Metadata(
                        patient_id=f"P{patient:08d}", patient_sex=sex, patient_age=float(day.year - born),
                        study_uid=study_uid, series_uid=f"{study_uid}.{series}",
                        sop_uid=f"{study_uid}.{series}.{instance}",
                        accession_number=f"A{patient:08d}{study}", modality=modality, body_part=body_part,
                        study_date=day, study_description=f"{modality} {body_part}",
                        series_description=f"series {series + 1}", manufacturer=rng.choice(MANUFACTURERS),
                        instance_number=instance + 1, rows=512, columns=512, frames=1, labels=labels,
                        report_text=text), f"p{patient:08d}/s{study}/r{series}/{instance}.dcm")


def fill(folder: Path, count: int, fingerprint: dict[str, Any], analyzer: ReportAnalyzer, dim: int, seed: int = 0,
         batch: int = 2000) -> dict[str, float]:
    """Write `count` images (files under folder/archive, the index under folder/db). Returns the seconds
    and images/s of the write."""
    archive = (folder / "archive").resolve()
    mixture = Mixture.make(dim, seed)
    pool = sentences(analyzer, 4000, random.Random(seed))
    started = time.perf_counter()
    with open_index(folder / "db", create=True, reports=analyzer) as (store, repository):
        store.bind_model(fingerprint)
        run_id = repository.start_run(str(archive), fingerprint["key"])
        pending: list[NewImage] = []
        folders: set[Path] = set()
        for done, image in enumerate(images(count, pool, seed), start=1):
            file = archive / image.path
            if file.parent not in folders:
                file.parent.mkdir(parents=True, exist_ok=True)
                folders.add(file.parent)
            os.close(os.open(file, os.O_CREAT | os.O_WRONLY, 0o644))
            info = os.stat(file)
            sha = f"{done - 1:064x}"
            source = SourceRecord(str(archive), image.path, 0, sha, info.st_size, info.st_mtime,
                                  image.metadata.patient_id, image.metadata.study_uid, image.metadata.series_uid,
                                  image.metadata.sop_uid, image.metadata.accession_number)
            pending.append(NewImage(ImageRecord(sha, "dicom", image.metadata), None, [source]))
            if len(pending) == batch or done == count:
                vectors = mixture.draw(len(pending), seed + done)
                for new, vector in zip(pending, vectors, strict=True):
                    new.vector = vector
                store.write(pending, run_id=run_id)
                pending = []
                if done % 100_000 < batch or done == count:
                    store.checkpoint()
                    print(f"  {done:,} images written ({done / (time.perf_counter() - started):,.0f}/s)", flush=True)
        repository.finish_run(run_id, status="completed", indexed=count, unchanged=0, skipped=0, failed=0,
                              seconds=time.perf_counter() - started)
    seconds = time.perf_counter() - started
    return {"write_s": seconds, "write_images_per_s": count / seconds}
