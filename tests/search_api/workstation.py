"""A corpus for the viewer tests: real CT files (pydicom's CT_small, pydicom-data's 512x512 CT and its
enhanced two-frame CT), a real ten-frame MR, and a generated patient study with two series whose files
are written in reverse instance order, more generated MR cases across patients, sexes and years (for
facets and paging), and the same series UIDs under a second patient (never shown in the first's study)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from indexer.sample import pydicom_data_files, pydicom_test_files

REAL = {"ct_small": ("pydicom", "CT_small.dcm"), "ct_512": ("pydicom-data", "693_UNCI.dcm"),
        "ct_enhanced": ("pydicom-data", "eCT_Supplemental.dcm"), "mr_frames": ("pydicom-data", "emri_small.dcm")}
STUDY = generate_uid(entropy_srcs=["workstation study"])
SERIES = {"axial": (generate_uid(entropy_srcs=["axial"]), "AXIAL 5mm", 6),
          "coronal": (generate_uid(entropy_srcs=["coronal"]), "CORONAL MPR", 4)}


@dataclass(frozen=True)
class Corpus:
    root: Path
    files: dict[str, Path]  # name -> path inside root (real files by their REAL key, slices by series:N)
    mr_cases: list[tuple[str, str, int]]  # (patient id, sex, year) of each generated MR image


def real_file(name: str) -> Path | None:
    where, file = REAL[name]
    folder = pydicom_test_files() if where == "pydicom" else pydicom_data_files()
    return folder / file if folder is not None and (folder / file).is_file() else None


def _slice(base: pydicom.Dataset, series: str, number: int, patient: str) -> pydicom.Dataset:
    ds = base.copy()
    uid, description, _ = SERIES[series]
    pixels = np.roll(base.pixel_array, number * 7, axis=1).astype(np.int16) + np.int16(number * 20)
    ds.PixelData = pixels.tobytes()
    ds.PatientID, ds.PatientName, ds.PatientSex = patient, f"Workstation^{patient}", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesDescription = STUDY, uid, description
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[patient, series, str(number)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber, ds.StudyDescription, ds.BodyPartExamined = number, "CT CHEST WORKSTATION", "CHEST"
    ds.StudyDate = "20210304"
    return ds


def build_corpus(root: Path) -> Corpus:
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name in REAL:
        source = real_file(name)
        if source is not None:
            target = root / "real" / source.name
            target.parent.mkdir(exist_ok=True)
            shutil.copy2(source, target)
            files[name] = target
    base = pydicom.dcmread(pydicom_test_files() / "CT_small.dcm")
    for series, (_, _, count) in SERIES.items():
        for number in range(count, 0, -1):  # written (and listed) in reverse instance order
            path = root / "study" / f"{series}-{count - number:02d}.dcm"
            path.parent.mkdir(exist_ok=True)
            _slice(base, series, number, "WS-PATIENT-1").save_as(path, enforce_file_format=True)
            files[f"{series}:{number}"] = path
    # the same series UIDs under another patient (a copy mislabelled upstream): never part of WS-PATIENT-1's study
    other = root / "other" / "axial-copy.dcm"
    other.parent.mkdir()
    _slice(base, "axial", 2, "WS-PATIENT-2").save_as(other, enforce_file_format=True)
    files["other"] = other
    mr = pydicom.dcmread(pydicom_test_files() / "MR_small.dcm")
    cases = []
    for n in range(12):
        patient, sex, year = f"MR-{n % 4}", "FM"[n % 2], 2019 + n % 3
        ds = mr.copy()
        ds.PixelData = (np.roll(mr.pixel_array, n * 3, axis=0) + n).astype(mr.pixel_array.dtype).tobytes()
        ds.PatientID, ds.PatientSex, ds.StudyDate = patient, sex, date(year, 1 + n % 12, 5).strftime("%Y%m%d")
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["mr study", patient, str(year)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["mr series", patient, str(year)])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["mr", str(n)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.BodyPartExamined, ds.InstanceNumber = "BRAIN", n + 1
        path = root / "mr" / f"mr-{n:02d}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files[f"mr:{n}"] = path
        cases.append((patient, sex, year))
    return Corpus(root, files, cases)
