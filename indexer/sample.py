"""Build the sample archive used by `make demo` from real DICOM files that ship inside pip packages.

Contents (nothing here is committed; everything is generated from installed packages):
- dicom/pydicom/...       every top-level file of pydicom's test_files (MIT): MR, CT, US, RGB, NM,
                          compressed transfer syntaxes, plus reports, RT objects and deliberately
                          broken files, which the indexer skips or reports with a reason;
- dicom/pydicom-data/...  the real full-size images of the pydicom-data package (MIT), if installed;
- dicom/no-suffix/CT_small  a DICOM file without the .dcm suffix (recognised by content);
- images/*.png, *.jpg     a few DICOMs rendered to 8-bit PNG, 16-bit PNG and JPEG, with
- manifest.csv            giving those images a patient_id, labels, a report and an extra column, and
                          some of the DICOM studies a radiology report (REPORTS: written for this sample,
                          fictional, in the style of real chest radiograph, CT and MR reports).
"""

from __future__ import annotations

import csv
import logging
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import ImageError
from core.imaging.images import load_image_file

logger = logging.getLogger(__name__)

RENDERED = [
    # (source file in pydicom test_files, output name, patient_id, labels, report)
    ("CT_small.dcm", "images/ct_small.png", "SAMPLE-PNG-1", "ct;head",
     "Axial CT slice rendered to PNG for the sample archive."),
    ("MR_small.dcm", "images/mr_small_16bit.png", "SAMPLE-PNG-2", "mri;brain",
     "MR slice stored as a 16-bit greyscale PNG."),
    ("US1_UNCR.dcm", "images/us_colour.jpg", "SAMPLE-JPG-1", "ultrasound",
     "Colour ultrasound frame saved as JPEG."),
    ("SC_rgb.dcm", "images/rgb_bars.png", "SAMPLE-PNG-3", "secondary capture;colour test",
     "RGB secondary-capture test pattern."),
]


# (file name prefix, folder, report): every file of the folder whose name starts with the prefix gets it, and
# so does its copy in dicom/no-suffix (the same pixels: whichever the indexer meets first gives the image its
# metadata, so both must carry the report)
REPORTS = [
    ("RG1_", "pydicom-data", "PA chest radiograph. Small right pleural effusion with blunting of the right "
     "costophrenic angle. No pneumothorax. Heart size is normal. Findings discussed with Dr. Rivera."),
    ("RG3_", "pydicom-data", "Radiograph of the left ankle. Well-defined lucent lesion in the distal tibial "
     "metaphysis with a sclerotic margin, compatible with non-ossifying fibroma. No fracture. No joint effusion."),
    ("MR2_", "pydicom-data", "MR of the right shoulder. Full-thickness tear of the supraspinatus tendon. Small "
     "glenohumeral joint effusion. No fracture or dislocation."),
    ("693_", "pydicom-data", "Non-contrast CT of the head. No intracranial hemorrhage. No midline shift or mass "
     "effect. Ventricles are normal in size."),
    ("explicit_VR-UN", "pydicom-data", "CT abdomen with contrast. Possible hypodense lesion in the pancreatic "
     "head; recommend MR for further evaluation. No ascites. No lymphadenopathy."),
    ("MR-SIEMENS", "pydicom-data", "MR of the liver. Hepatic steatosis. No focal liver lesion. No ascites."),
    ("emri_small", "pydicom-data", "MR brain. History of prior left frontal infarct. No acute infarct. No "
     "hydrocephalus."),
    ("CT_small", "pydicom", "CT chest. No pleural effusion. No pneumothorax. Questionable small nodule in the "
     "left lower lobe, likely a granuloma."),
    ("MR_small", "pydicom", "MR brain. Chronic small vessel ischemic disease. No mass effect. No acute infarct."),
]


def pydicom_test_files() -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")  # one named file: never triggers a download
    if path is None:
        raise FileNotFoundError("pydicom's test files are not installed")
    return Path(str(path)).parent


def decodable_test_images(count: int) -> list[np.ndarray]:
    """The first `count` of pydicom's own test files that decode (as RGB pixels, in name order): real
    images for checks of the model's maps (tests, bench/explain_bench.py); the set holds broken ones."""
    from core.imaging.images import load_image_file

    images = []
    for path in sorted(pydicom_test_files().glob("*.dcm")):
        try:
            images.append(load_image_file(path).pixels)
        except ImageError:
            continue
        if len(images) == count:
            break
    return images


def pydicom_data_files() -> Path | None:
    try:
        import data_store  # the pydicom-data package
    except ImportError:
        return None
    folder = Path(data_store.__file__).parent / "data"
    return folder if folder.is_dir() else None


def _find(name: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    return None


def build_sample_folder(out: Path) -> dict[str, int]:
    """Write the sample archive's files under `out`. Returns counts per part."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {"pydicom": 0, "pydicom-data": 0, "rendered": 0}
    test_files = pydicom_test_files()
    (out / "dicom" / "pydicom").mkdir(parents=True, exist_ok=True)
    for src in sorted(p for p in test_files.iterdir() if p.is_file()):
        shutil.copy2(src, out / "dicom" / "pydicom" / src.name)
        counts["pydicom"] += 1
    data_folder = pydicom_data_files()
    if data_folder is None:
        logger.warning("pydicom-data is not installed: the sample archive has pydicom's files only "
                       "(pip install pydicom-data for the full-size images)")
    else:
        target = out / "dicom" / "pydicom-data"
        target.mkdir(parents=True, exist_ok=True)
        for src in sorted(data_folder.glob("*.dcm")):
            shutil.copy2(src, target / src.name)
            counts["pydicom-data"] += 1
    (out / "dicom" / "no-suffix").mkdir(parents=True, exist_ok=True)
    shutil.copy2(test_files / "CT_small.dcm", out / "dicom" / "no-suffix" / "CT_small")

    folders = [test_files] + ([data_folder] if data_folder else [])
    rows = []
    for name, target_name, patient, labels, report in RENDERED:
        original = _find(name, folders)
        if original is None:
            continue
        try:
            pixels = load_image_file(original).pixels
        except ImageError as exc:
            logger.warning("sample image not rendered: %s", exc)
            continue
        image_path = out / target_name
        image_path.parent.mkdir(parents=True, exist_ok=True)
        if image_path.name.endswith("_16bit.png"):
            grey = pixels[:, :, 0].astype(np.uint16) * 257  # full 16-bit range
            Image.fromarray(grey).save(image_path)
        elif image_path.suffix == ".jpg":
            Image.fromarray(pixels).save(image_path, quality=90)
        else:
            Image.fromarray(pixels).save(image_path)
        rows.append({"path": target_name, "patient_id": patient, "labels": labels, "report": report,
                     "source_file": name})
        counts["rendered"] += 1
    for prefix, folder, report in REPORTS:
        for path in sorted([*(out / "dicom" / folder).glob(f"{prefix}*"), *(out / "dicom" / "no-suffix").glob(
                f"{prefix}*")]):
            rows.append({"path": path.relative_to(out).as_posix(), "report": report})
    with (out / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "patient_id", "labels", "report", "source_file"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "README.txt").write_text(
        "medsearch sample archive, generated by `medsearch-index sample-archive`.\n"
        "DICOM files: pydicom test files and pydicom-data (both MIT licensed), unchanged.\n"
        "images/: some of them rendered to PNG/JPEG; manifest.csv gives their metadata.\n"
    )
    return counts


def build_sample_archive(out: str | Path) -> tuple[Path, dict[str, int]]:
    """Build the sample archive at `out`: a folder, or a .zip / .tar.gz file by its suffix."""
    out = Path(out)
    name = out.name.lower()
    if not name.endswith((".zip", ".tar.gz", ".tgz", ".tar")):
        if out.exists():
            shutil.rmtree(out)
        return out, build_sample_folder(out)
    staging = out.with_name(out.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    counts = build_sample_folder(staging)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    if name.endswith(".zip"):
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, path.relative_to(staging).as_posix())
    else:
        mode = "w" if name.endswith(".tar") else "w:gz"
        with tarfile.open(tmp, mode) as tar:  # type: ignore[call-overload]
            for path in files:
                tar.add(path, arcname=path.relative_to(staging).as_posix())
    tmp.replace(out)
    shutil.rmtree(staging)
    return out, counts
