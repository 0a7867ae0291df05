"""Radiology reports written by hand for the tests, in the style of real chest radiograph, CT and MR
reports (fictional: no patient's), each sentence with the vocabulary findings it mentions and the
assertion a radiologist reads in it. `build_report_archive` writes them as an archive: one generated
DICOM image per report (its own patient and study) with the report in the manifest.

Assertions: present, negated, uncertain, historical, family, hypothetical (core.reports.ASSERTIONS).
Some sentences are hard on purpose (pseudo-negation "no increase in", "cannot exclude", negation after
the finding, "likely"): the accuracy test states what share must be right per assertion.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

Finding = tuple[str, str]  # (vocabulary term, assertion)


@dataclass(frozen=True)
class Report:
    name: str
    modality: str
    body_part: str
    description: str
    sentences: tuple[tuple[str, tuple[Finding, ...]], ...]

    @property
    def text(self) -> str:
        return " ".join(sentence for sentence, _ in self.sentences)


def r(name: str, modality: str, body_part: str, description: str, *sentences: tuple[str, tuple[Finding, ...]]
      ) -> Report:
    return Report(name, modality, body_part, description, sentences)


P, N, U, H, F, Y = "present", "negated", "uncertain", "historical", "family", "hypothetical"
REPORTS = [
    r("cxr-effusion-right", "CR", "CHEST", "CHEST PA AND LATERAL",
      ("PA and lateral views of the chest.", ()),
      ("There is a small right pleural effusion with blunting of the costophrenic angle.", (("pleural effusion", P),)),
      ("No pneumothorax.", (("pneumothorax", N),)),
      ("Heart size is normal.", ()),
      ("IMPRESSION: Small right pleural effusion.", (("pleural effusion", P),))),
    r("cxr-effusion-large", "CR", "CHEST", "CHEST PORTABLE",
      ("Portable AP chest radiograph.", ()),
      ("Large left pleural effusion with adjacent atelectasis.", (("pleural effusion", P), ("atelectasis", P))),
      ("Moderate cardiomegaly.", (("cardiomegaly", P),)),
      ("There is no pneumothorax.", (("pneumothorax", N),))),
    r("cxr-normal", "CR", "CHEST", "CHEST PA",
      ("The lungs are clear.", ()),
      ("No pleural effusion or pneumothorax.", (("pleural effusion", N), ("pneumothorax", N))),
      ("No focal consolidation.", (("consolidation", N),)),
      ("The cardiomediastinal silhouette is within normal limits.", ()),
      ("IMPRESSION: No acute cardiopulmonary process.", ())),
    r("cxr-negative-list", "CR", "CHEST", "CHEST PA AND LATERAL",
      ("There is no focal consolidation, pleural effusion, or pneumothorax.",
       (("consolidation", N), ("pleural effusion", N), ("pneumothorax", N))),
      ("No evidence of pulmonary edema.", (("pulmonary edema", N),)),
      ("Sternotomy wires are intact.", (("sternotomy wires", P),)),
      ("Degenerative changes of the thoracic spine.", (("degenerative changes", P),))),
    r("cxr-possible-pneumonia", "CR", "CHEST", "CHEST PA",
      ("Patchy opacity in the right lower lobe, which may represent pneumonia.", (("opacity", P), ("pneumonia", U))),
      ("Possible small left pleural effusion.", (("pleural effusion", U),)),
      ("No pneumothorax is seen.", (("pneumothorax", N),)),
      ("Recommend follow-up radiograph to evaluate for resolution.", ())),
    r("cxr-stable-effusion", "CR", "CHEST", "CHEST PORTABLE",
      ("No increase in the small right pleural effusion.", (("pleural effusion", P),)),
      ("Endotracheal tube terminates above the carina.", (("endotracheal tube", P),)),
      ("Nasogastric tube courses below the diaphragm.", (("nasogastric tube", P),)),
      ("Pneumothorax is not seen.", (("pneumothorax", N),))),
    r("cxr-history", "CR", "CHEST", "CHEST PA AND LATERAL",
      ("Prior left pneumothorax has resolved.", (("pneumothorax", N),)),
      ("Healed left rib fractures.", (("rib fracture", H),)),
      ("Status post median sternotomy.", (("sternotomy wires", H),)),
      ("Calcified granuloma in the right upper lobe.", (("granuloma", P),)),
      ("History of right lower lobe pneumonia.", (("pneumonia", H),)),
      ("No pleural effusion.", (("pleural effusion", N),))),
    r("cxr-uncertain", "CR", "CHEST", "CHEST PA",
      ("Cannot exclude a small left apical pneumothorax.", (("pneumothorax", U),)),
      ("Questionable nodule in the left upper lobe.", (("nodule", U),)),
      ("Mild pulmonary vascular congestion.", (("vascular congestion", P),)),
      ("Findings are suspicious for early pulmonary edema.", (("pulmonary edema", U),)),
      ("Equivocal subtle fracture of the left fifth rib.", (("fracture", U),)),
      ("Recommend CT to assess for pulmonary embolism.", (("pulmonary embolism", Y),))),
    r("cxr-followup", "CR", "CHEST", "CHEST PA AND LATERAL",
      ("INDICATION: Shortness of breath. Rule out pneumothorax.", (("pneumothorax", Y),)),
      ("The previously seen right pleural effusion is no longer present.", (("pleural effusion", N),)),
      ("Interval development of a moderate left pleural effusion.", (("pleural effusion", P),)),
      ("Left basilar opacity could reflect atelectasis or pneumonia.",
       (("opacity", P), ("atelectasis", U), ("pneumonia", U))),
      ("No definite consolidation to suggest pneumonia.", (("consolidation", N), ("pneumonia", N))),
      ("The right upper lobe nodule is not significantly changed from the prior study.", (("nodule", P),))),
    r("xr-ankle", "CR", "ANKLE", "ANKLE 3 VIEWS",
      ("Negative for acute fracture.", (("fracture", N),)),
      ("There is no evidence of a displaced fracture; however, a small joint effusion is present.",
       (("fracture", N), ("joint effusion", P))),
      ("Ankle effusion is unlikely.", (("effusion", N),)),
      ("Soft tissue swelling over the lateral malleolus.", ())),
    r("ct-chest-embolism", "CT", "CHEST", "CT PULMONARY ANGIOGRAM",
      ("Filling defects in the right lower lobe segmental arteries consistent with pulmonary embolism.",
       (("pulmonary embolism", P),)),
      ("Small right pleural effusion.", (("pleural effusion", P),)),
      ("No pericardial effusion.", (("pericardial effusion", N),)),
      ("No mediastinal lymphadenopathy.", (("lymphadenopathy", N),)),
      ("Evaluate for deep venous thrombosis if clinically indicated.", ()),
      ("Probable small hiatal hernia.", (("hiatal hernia", U),))),
    r("ct-chest-nodule", "CT", "CHEST", "CT CHEST WITHOUT CONTRAST",
      ("A 6 mm solid nodule in the right middle lobe.", (("nodule", P),)),
      ("Centrilobular emphysema in both upper lobes.", (("emphysema", P),)),
      ("There is no pleural effusion.", (("pleural effusion", N),)),
      ("Previously described left lower lobe consolidation has resolved.", (("consolidation", N),)),
      ("Family history of lung cancer.", (("tumor", F),)),
      ("Known history of pulmonary embolism.", (("pulmonary embolism", H),))),
    r("ct-abdomen", "CT", "ABDOMEN", "CT ABDOMEN PELVIS WITH CONTRAST",
      ("Acute appendicitis with periappendiceal fat stranding.", (("appendicitis", P),)),
      ("No abscess.", (("abscess", N),)),
      ("No free air.", (("pneumoperitoneum", N),)),
      ("Small amount of free fluid in the pelvis.", (("ascites", P),)),
      ("Cholelithiasis without cholecystitis.", (("cholelithiasis", P), ("cholecystitis", N))),
      ("Hepatic steatosis.", (("hepatic steatosis", P),))),
    r("ct-abdomen-stone", "CT", "ABDOMEN", "CT ABDOMEN RENAL STONE PROTOCOL",
      ("A 4 mm obstructing stone in the left ureter with mild hydronephrosis.", (("hydronephrosis", P),)),
      ("No nephrolithiasis in the right kidney.", (("nephrolithiasis", N),)),
      ("Possible small bowel obstruction cannot be excluded.", (("bowel obstruction", U),)),
      ("History of appendectomy.", ()),
      ("Mother with a history of breast cancer.", (("tumor", F),))),
    r("ct-head-bleed", "CT", "HEAD", "CT HEAD WITHOUT CONTRAST",
      ("Acute subdural hematoma along the right convexity measuring 8 mm.", (("subdural hematoma", P),)),
      ("There is 4 mm of leftward midline shift.", (("midline shift", P),)),
      ("No hydrocephalus.", (("hydrocephalus", N),)),
      ("No skull fracture.", (("fracture", N),))),
    r("ct-head-normal", "CT", "HEAD", "CT HEAD WITHOUT CONTRAST",
      ("No intracranial hemorrhage, mass effect, or midline shift.",
       (("intracranial hemorrhage", N), ("mass effect", N), ("midline shift", N))),
      ("Chronic small vessel ischemic disease.", (("white matter disease", P),)),
      ("Old left frontal infarct.", (("infarct", H),)),
      ("If symptoms persist, MRI could be considered to exclude an acute infarct.", (("infarct", Y),))),
    r("mr-brain", "MR", "HEAD", "MR BRAIN WITH AND WITHOUT CONTRAST",
      ("Restricted diffusion in the left middle cerebral artery territory compatible with acute infarct.",
       (("infarct", P),)),
      ("Previous subdural hematoma has been evacuated.", (("subdural hematoma", H),)),
      ("No intracranial hemorrhage.", (("intracranial hemorrhage", N),)),
      ("No enhancing mass.", (("mass", N),)),
      ("Mild white matter hyperintensities.", (("white matter disease", P),))),
    r("mr-knee", "MR", "KNEE", "MR KNEE WITHOUT CONTRAST",
      ("Complex tear of the posterior horn of the medial meniscus.", (("tear", P),)),
      ("Small joint effusion.", (("joint effusion", P),)),
      ("The anterior cruciate ligament is intact without tear.", (("tear", N),)),
      ("Bone marrow edema in the lateral femoral condyle.", (("bone marrow edema", P),)),
      ("Remote healed fracture of the fibula.", (("fracture", H),)),
      ("No fracture.", (("fracture", N),))),
    r("mr-shoulder", "MR", "SHOULDER", "MR SHOULDER WITHOUT CONTRAST",
      ("Full-thickness tear of the supraspinatus tendon.", (("tear", P),)),
      ("No dislocation.", (("dislocation", N),)),
      ("Degenerative changes of the acromioclavicular joint.", (("degenerative changes", P),)),
      ("Prior rotator cuff repair on this side.", ())),
    r("mr-spine", "MR", "SPINE", "MR LUMBAR SPINE",
      ("Disc herniation at L4-L5 with mild spinal canal stenosis.", (("disc herniation", P), ("spinal stenosis", P))),
      ("No compression fracture.", (("compression fracture", N),)),
      ("Possible synovial cyst at L5-S1.", (("cyst", U),)),
      ("History of L5-S1 fusion with orthopedic hardware in place.", (("orthopedic hardware", P),))),
]


def annotated_sentences() -> list[tuple[str, str, str]]:
    """(sentence, term, expected assertion) for every annotated mention."""
    return [(sentence, term, assertion) for report in REPORTS for sentence, found in report.sentences
            for term, assertion in found]


def _image(path: Path, report: Report, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4000, (48, 40)).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[report.name, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName, ds.PatientSex = f"RPT-{seed:02d}", "Report^Corpus", "FM"[seed % 2]
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[report.name, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[report.name, "series"])
    ds.Modality, ds.BodyPartExamined, ds.StudyDescription = report.modality, report.body_part, report.description
    ds.StudyDate = f"20{20 + seed % 5}0{1 + seed % 9}15"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def build_report_archive(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Write every report as one DICOM image with the report in manifest.csv (plus `extra`: path ->
    report, for images of the same kind added by a test). Returns path -> report name."""
    names: dict[str, str] = {}
    rows = []
    for seed, report in enumerate(REPORTS, start=1):
        path = f"{report.modality.lower()}/{report.name}.dcm"
        _image(root / path, report, seed)
        names[path] = report.name
        rows.append((path, report.text))
    for seed, (path, text) in enumerate((extra or {}).items(), start=100):
        _image(root / path, Report(path, "CR", "CHEST", "CHEST PA", ((text, ()),)), seed)
        names[path] = path
        rows.append((path, text))
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "report"])
        writer.writerows(rows)
    return names
