"""Body region from DICOM text when BodyPartExamined is empty, and the CT window preset it implies."""

from __future__ import annotations

import re

# (region, words that name it in descriptions), most specific first
REGIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("HEAD", ("HEAD", "BRAIN", "SKULL", "CRANI", "NEURO", "CEREB", "KOPF", "SCHAEDEL")),
    ("NECK", ("NECK", "CERVICAL", "THYROID", "HALS")),
    ("SHOULDER", ("SHOULDER", "SCHULTER")),
    ("BREAST", ("BREAST", "MAMMO")),
    ("HEART", ("HEART", "CARDIAC", "CORONARY", "ECHO")),
    ("CHEST", ("CHEST", "THORAX", "THORAC", "LUNG", "PULMO", "TORAX", "THX")),
    ("ABDOMEN", ("ABDOM", "LIVER", "PANCREA", "KIDNEY", "RENAL", "ABD", "HEPAT", "SPLEEN", "BAUCH")),
    ("PELVIS", ("PELVIS", "PELVIC", "BECKEN", "PROSTAT", "BLADDER", "UTER")),
    ("SPINE", ("SPINE", "LSPINE", "CSPINE", "TSPINE", "VERTEB", "LUMBAR", "SACRUM", "WIRBEL")),
    ("HIP", ("HIP", "FEMUR")),
    ("KNEE", ("KNEE", "KNIE", "PATELL")),
    ("HAND", ("HAND", "WRIST", "FINGER", "CARPAL")),
    ("FOOT", ("FOOT", "ANKLE", "FUSS", "CALCAN")),
    ("EXTREMITY", ("EXTREMITY", "EXTREM", "ARM", "LEG", "HUMERUS", "TIBIA", "ELBOW", "FOREARM")),
)

CT_PRESET_BY_REGION = {
    "HEAD": "brain", "CHEST": "lung", "ABDOMEN": "abdomen", "PELVIS": "abdomen", "SPINE": "bone",
    "HIP": "bone", "KNEE": "bone", "HAND": "bone", "FOOT": "bone", "EXTREMITY": "bone", "SHOULDER": "bone",
}
# words in a description that name the window directly win over the region
PRESET_WORDS = (("MEDIAST", "mediastinum"), ("LUNG", "lung"), ("BONE", "bone"), ("BRAIN", "brain"))


def region_from_text(*texts: str | None) -> str | None:
    """The first region named in `texts` (descriptions, protocol names), or None."""
    for text in texts:
        if not text:
            continue
        words = re.split(r"[^A-Z]+", text.upper())
        for region, keys in REGIONS:
            if any(word.startswith(key) for word in words if word for key in keys):
                return region
    return None


def ct_preset(region: str | None, *texts: str | None) -> str | None:
    """Which CT window preset suits an image of `region` described by `texts`; None if unknown."""
    joined = " ".join(t.upper() for t in texts if t)
    for word, preset in PRESET_WORDS:
        if word in joined:
            return preset
    return CT_PRESET_BY_REGION.get(region or "")
